//! Issue 12 (operator hardening) against the real control plane, with the real operator
//! binary: nothing the API server accepts may wedge the controller. The stuck states
//! run for both kinds (`stuck`, over `kinds::Kind`).

use std::time::Duration;

use janus_crds::crd_yaml::{eval_crd, integer_fields, training_crd};
use janus_crds::{JanusEvalJob, JanusTrainingJob};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use kube::{Client, Resource};
use serde_json::{json, Value};

use super::support::*;

mod kinds;
mod stuck;

const T: Duration = Duration::from_secs(60);

/// The `Running` condition of `job` once its reason is `reason`.
async fn wait_running_reason(c: &Client, ns: &str, job: &str, reason: &str) -> Condition {
    wait_for(&format!("the {reason} condition"), T, || async {
        let j = get_job(c, ns, job).await?;
        let cond = condition(&j, "Running")?.clone();
        (cond.reason == reason).then_some(cond)
    })
    .await
}

/// The Warning Events of `ns` with `reason`.
async fn warnings(c: &Client, ns: &str, reason: &str) -> Vec<Event> {
    Api::<Event>::namespaced(c.clone(), ns)
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason) && e.type_.as_deref() == Some("Warning"))
        .collect()
}

/// Once there is one, the Warning Events of `ns` with `reason`.
async fn wait_warnings(c: &Client, ns: &str, reason: &str) -> Vec<Event> {
    wait_for(&format!("the {reason} event"), T, || async {
        let w = warnings(c, ns, reason).await;
        (!w.is_empty()).then_some(w)
    })
    .await
}

/// Held while a test relaxes the shared CRD's schema, and while one checks its bounds.
static CRD_SCHEMA: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Objects a path's array items or objects need besides the field under test (their
/// schema's `required` fields).
fn skeleton(path: &str) -> Option<Value> {
    if path.ends_with("nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution[]") {
        return Some(json!({"preference": {}}));
    }
    if path.ends_with("preferredDuringSchedulingIgnoredDuringExecution[]") {
        return Some(json!({"podAffinityTerm": {"topologyKey": "kubernetes.io/hostname"}}));
    }
    if path.ends_with("requiredDuringSchedulingIgnoredDuringExecution[]") {
        return Some(json!({"topologyKey": "kubernetes.io/hostname"}));
    }
    if path == "spec.scheduling.podGroup" {
        return Some(json!({"provider": "Volcano"}));
    }
    if path == "spec.runPolicy.failurePolicy.rules[]" {
        return Some(json!({"action": "RestartJob"}));
    }
    if path == "spec.runPolicy.failurePolicy.rules.onExitCodes" {
        // NotIn: `In` may not list 0, the minimum.
        return Some(json!({"operator": "NotIn"}));
    }
    None
}

/// Set `path` (`a.b[].c`: `[]` is the array's first item) of `obj` to `value`.
fn set_path(obj: &mut Value, path: &str, value: Value) {
    let mut cur = obj;
    let mut done = String::new();
    let parts: Vec<&str> = path.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let (key, array) = match part.strip_suffix("[]") {
            Some(k) => (k, true),
            None => (*part, false),
        };
        done = if done.is_empty() {
            key.to_string()
        } else {
            format!("{done}.{key}")
        };
        let last = i + 1 == parts.len();
        let map = cur.as_object_mut().expect("an object on the path");
        if last {
            // `a.b[]`: a list of that one value.
            map.insert(key.to_string(), if array { json!([value]) } else { value });
            return;
        }
        if array {
            let item = skeleton(&format!("{done}[]")).unwrap_or_else(|| json!({}));
            let list = map.entry(key).or_insert_with(|| json!([]));
            if list.as_array().is_none_or(|l| l.is_empty()) {
                *list = json!([item]);
            }
            cur = &mut list.as_array_mut().unwrap()[0];
        } else {
            let sk = skeleton(&done).unwrap_or_else(|| json!({}));
            let next = map.entry(key).or_insert(sk);
            if next.is_null() {
                *next = json!({});
            }
            cur = next;
        }
    }
}

/// `(path, minimum, maximum)` of every integer under `spec` of `crd`.
fn spec_integers(crd: &CustomResourceDefinition) -> Vec<(String, i64, i64)> {
    let v = serde_json::to_value(crd).unwrap();
    integer_fields(&v["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
        .into_iter()
        .filter(|f| f.path.starts_with("spec."))
        .map(|f| (f.path, f.minimum.unwrap() as i64, f.maximum.unwrap() as i64))
        .collect()
}

async fn dry_run(api: &Api<DynamicObject>, obj: &Value) -> Result<(), String> {
    let o: DynamicObject = serde_json::from_value(obj.clone()).unwrap();
    let pp = PostParams {
        dry_run: true,
        ..Default::default()
    };
    match api.create(&pp, &o).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) => Err(format!("{} {}", s.code, s.message)),
        Err(e) => Err(e.to_string()),
    }
}

/// For every integer of the spec: its minimum and maximum are accepted, one below and
/// one above are refused naming the field; a job with every integer at its minimum and
/// one with every integer at its maximum are decoded and handled by the operator.
async fn boundary_values_of_every_integer<K: Resource<DynamicType = ()>>(
    c: &Client,
    ns: &str,
    crd: &CustomResourceDefinition,
    base: Value,
) -> (Value, Value) {
    let api: Api<DynamicObject> =
        Api::namespaced_with(c.clone(), ns, &ApiResource::erase::<K>(&()));
    let fields = spec_integers(crd);
    assert!(fields.len() >= 10, "{fields:?}");
    let _schema = CRD_SCHEMA.lock().await;
    let (mut all_min, mut all_max) = (base.clone(), base.clone());
    let mut failures = vec![];
    for (path, min, max) in &fields {
        for (v, ok) in [
            (*min, true),
            (*max, true),
            (min - 1, false),
            (max + 1, false),
        ] {
            let mut obj = base.clone();
            set_path(&mut obj, path, json!(v));
            match (dry_run(&api, &obj).await, ok) {
                (Ok(()), true) => {}
                (Err(e), false)
                    if e.starts_with("422")
                        && e.contains(path.trim_end_matches("[]").split("[]").next().unwrap()) => {}
                (r, _) => failures.push(format!("{path} = {v}: {r:?}")),
            }
        }
        set_path(&mut all_min, path, json!(min));
        set_path(&mut all_max, path, json!(max));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    (all_min, all_max)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_integer_at_its_bounds_is_decoded_and_beyond_them_refused() {
    let c = client().await;
    let ns = namespace(&c, "bounds").await;
    let _op = Operator::start(&ns, "a", &["--no-leader-election"]);

    // Suspended: a job with 4096 replicas must not make 4096 pods.
    let mut spec = serde_json::to_value(job_spec(1)).unwrap();
    spec["runPolicy"] = json!({"suspend": true});
    // rdma.count is checked inside an rdma block, which needs its resource.
    spec["workers"]["rdma"] = json!({"resourceName": "rdma/hca"});
    let base = json!({"apiVersion": "janus.dev/v1alpha1", "kind": "JanusTrainingJob",
                      "metadata": {"name": "t", "namespace": ns}, "spec": spec});
    let (min, max) =
        boundary_values_of_every_integer::<JanusTrainingJob>(&c, &ns, &training_crd(), base).await;
    let jobs: Api<DynamicObject> =
        Api::namespaced_with(c.clone(), &ns, &ApiResource::erase::<JanusTrainingJob>(&()));
    for (name, mut obj) in [("t-min", min), ("t-max", max)] {
        obj["metadata"]["name"] = json!(name);
        // A PodGroup needs its scheduler's CRD, which this cluster lacks; its integers
        // decode like every other (the dry runs above checked their bounds).
        obj["spec"].as_object_mut().unwrap().remove("scheduling");
        jobs.create(
            &PostParams::default(),
            &serde_json::from_value(obj).unwrap(),
        )
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        wait_phase(&c, &ns, name, "Suspended", T).await;
    }

    let mut spec = json!({
        "model": {"url": "s3://models/janus-7b-orpo", "promptFormat": "chatml"},
        "benchmark": {"url": "s3://data/multifaceted-bench/test.jsonl"},
        "judge": {"endpoint": "http://judge.example:8000/v1", "model": "judge-model"},
        "output": {"url": "s3://eval-results"},
        "worker": {"image": "ghcr.io/janus/trainer:test"},
        "runPolicy": {"suspend": true}
    });
    spec["worker"]["replicas"] = json!(1);
    let base = json!({"apiVersion": "janus.dev/v1alpha1", "kind": "JanusEvalJob",
                      "metadata": {"name": "e", "namespace": ns}, "spec": spec});
    let (min, max) =
        boundary_values_of_every_integer::<JanusEvalJob>(&c, &ns, &eval_crd(), base).await;
    let evals: Api<DynamicObject> =
        Api::namespaced_with(c.clone(), &ns, &ApiResource::erase::<JanusEvalJob>(&()));
    let typed: Api<JanusEvalJob> = Api::namespaced(c.clone(), &ns);
    for (name, mut obj) in [("e-min", min), ("e-max", max)] {
        obj["metadata"]["name"] = json!(name);
        evals
            .create(
                &PostParams::default(),
                &serde_json::from_value(obj).unwrap(),
            )
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        wait_for(&format!("{name} Suspended"), T, || async {
            let j = typed.get(name).await.expect("decodes");
            (j.status.and_then(|s| s.phase).map(|p| p.as_str()) == Some("Suspended")).then_some(())
        })
        .await;
    }
}

/// An object stored before the schema had its bounds (here: written while the CRD
/// lacked the maximum of `runPolicy.backoffLimit`) is skipped and reported; the other
/// jobs are reconciled, and the operator is ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_job_is_skipped_and_reported_and_others_still_reconcile() {
    let c = client().await;
    let ns = namespace(&c, "undecodable").await;
    let crds: Api<CustomResourceDefinition> = Api::all(c.clone());
    let name = "janustrainingjobs.janus.dev";
    let max = "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/runPolicy/properties/backoffLimit/maximum";
    let relax = json!([{"op": "remove", "path": max}]);
    let schema = CRD_SCHEMA.lock().await;
    crds.patch(
        name,
        &PatchParams::default(),
        &Patch::<Value>::Json(serde_json::from_value(relax).unwrap()),
    )
    .await
    .unwrap();
    let mut spec = serde_json::to_value(job_spec(1)).unwrap();
    spec["runPolicy"] = json!({"backoffLimit": 3_000_000_000u64});
    let bad: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "janus.dev/v1alpha1", "kind": "JanusTrainingJob",
        "metadata": {"name": "bad", "namespace": ns}, "spec": spec}))
    .unwrap();
    let jobs: Api<DynamicObject> =
        Api::namespaced_with(c.clone(), &ns, &ApiResource::erase::<JanusTrainingJob>(&()));
    // The relaxed schema takes a moment to be served.
    let created = wait_for("the relaxed schema to accept the job", T, || async {
        jobs.create(&PostParams::default(), &bad).await.ok()
    })
    .await;
    // Restore the committed CRD (its maximum) for every other test.
    let restore = json!([{"op": "add", "path": max, "value": 10000}]);
    crds.patch(
        name,
        &PatchParams::default(),
        &Patch::<Value>::Json(serde_json::from_value(restore).unwrap()),
    )
    .await
    .unwrap();
    // The committed bound is served again before anyone else checks it.
    let mut probe = serde_json::to_value(&bad).unwrap();
    probe["metadata"]["name"] = json!("probe");
    wait_for("the restored maximum to be served", T, || async {
        let o: DynamicObject = serde_json::from_value(probe.clone()).unwrap();
        let pp = PostParams {
            dry_run: true,
            ..Default::default()
        };
        jobs.create(&pp, &o).await.is_err().then_some(())
    })
    .await;
    drop(schema);

    let op = Operator::start(&ns, "a", &["--no-leader-election"]);
    create_job(&c, &ns, "good", job_spec(1)).await;
    wait_phase(&c, &ns, "good", "Running", T).await;
    let text = wait_for("the UndecodableObject event", T, || async {
        Api::<Event>::namespaced(c.clone(), &ns)
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .find(|e| {
                e.reason.as_deref() == Some("UndecodableObject")
                    && e.regarding.as_ref().and_then(|r| r.uid.as_deref())
                        == created.metadata.uid.as_deref()
            })
            .and_then(|e| e.note)
    })
    .await;
    assert!(
        text.contains("spec.runPolicy.backoffLimit") && text.contains("3000000000"),
        "{text}"
    );
    assert_eq!(op.get("/readyz").as_deref(), Some("ok"));
    let metrics = op.get("/metrics").unwrap();
    assert!(
        metrics.contains("janus_operator_undecodable_objects_total{kind=\"JanusTrainingJob\"} 1"),
        "{metrics}"
    );
    assert!(op.log_text().contains("cannot decode the object"));
    // Fixed by its owner, it is reconciled like any other job.
    jobs.patch(
        "bad",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"runPolicy": {"backoffLimit": 3}}})),
    )
    .await
    .unwrap();
    wait_phase(&c, &ns, "bad", "Running", T).await;
}

/// Same-name jobs in two namespaces get separate checkpoint histories, each recorded
/// with its job's UID (the trainer refuses another UID's history: `trainer/tests/resume.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_name_jobs_in_two_namespaces_keep_separate_checkpoints() {
    use k8s_openapi::api::core::v1::ConfigMap;
    let c = client().await;
    let (ns1, ns2) = (namespace(&c, "ckpt-a").await, namespace(&c, "ckpt-b").await);
    let _op1 = Operator::start(&ns1, "a", &["--no-leader-election"]);
    let _op2 = Operator::start(&ns2, "b", &["--no-leader-election"]);
    let mut seen = Vec::new();
    for ns in [&ns1, &ns2] {
        create_job(&c, ns, "twin", job_spec(1)).await;
        let cm = wait_for("the twin's ConfigMap", T, || async {
            Api::<ConfigMap>::namespaced(c.clone(), ns)
                .get_opt("twin-config")
                .await
                .unwrap()
        })
        .await;
        let text = &cm.data.unwrap()["config.yaml"];
        let v: Value = serde_yaml::from_str(text).unwrap();
        let cfg = janus_crds::config::TrainConfig::from_value(v, "twin-config").unwrap();
        let uid = get_job(&c, ns, "twin").await.unwrap().metadata.uid;
        assert_eq!(cfg.checkpoint.owner, uid);
        assert!(
            cfg.checkpoint.dir.ends_with(&format!("/{ns}")),
            "{}",
            cfg.checkpoint.dir
        );
        seen.push(format!("{}/{}", cfg.checkpoint.dir, cfg.job));
    }
    assert_ne!(seen[0], seen[1]);
}

/// A worker evicted through the Eviction API (the API server marks it with a
/// `DisruptionTarget` condition, as for a drain or a preemption) restarts the gang
/// without counting towards `backoffLimit: 0`; a plain failure afterwards does count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disruption_restarts_the_gang_without_counting_towards_the_backoff_limit() {
    use k8s_openapi::api::core::v1::Pod;
    let c = client().await;
    let ns = namespace(&c, "disruption").await;
    let _op = Operator::start(&ns, "a", &["--no-leader-election"]);
    let mut spec = job_spec(2);
    spec.run_policy.backoff_limit = 0;
    create_job(&c, &ns, "evicted", spec).await;
    wait_gang_running(&c, &ns, "evicted", 2, 0).await;
    let pods_api = Api::<Pod>::namespaced(c.clone(), &ns);
    // A kwok pod goes at once; a real one takes its grace period (the trainer saves a
    // checkpoint). A finalizer holds it terminating the way a kubelet would.
    let hold = |on: bool| json!({"metadata": {"finalizers": if on { json!(["janus.dev/test-hold"]) } else { json!(null) }}});
    pods_api
        .patch(
            "evicted-worker-1",
            &PatchParams::default(),
            &Patch::Merge(hold(true)),
        )
        .await
        .unwrap();
    pods_api
        .evict("evicted-worker-1", &Default::default())
        .await
        .unwrap();
    let j = wait_for("the restart after the eviction", T, || async {
        let j = get_job(&c, &ns, "evicted").await?;
        (j.status.as_ref()?.restarts == 1).then_some(j)
    })
    .await;
    let s = j.status.as_ref().unwrap();
    assert_eq!(s.restarts_counted_towards_backoff, 0);
    let cond = condition(&j, "Restarting").unwrap();
    assert_eq!(cond.reason, "WorkerDisrupted");
    assert!(
        cond.message.contains("evicted-worker-1") && cond.message.contains("EvictionByEvictionAPI"),
        "{}",
        cond.message
    );
    pods_api
        .patch(
            "evicted-worker-1",
            &PatchParams::default(),
            &Patch::Merge(hold(false)),
        )
        .await
        .unwrap();
    wait_gang_running(&c, &ns, "evicted", 2, 1).await;
    finish_pod(&c, &ns, "evicted-worker-0", 1).await;
    let j = wait_phase(&c, &ns, "evicted", "Failed", T).await;
    assert_eq!(
        condition(&j, "Failed").unwrap().reason,
        "BackoffLimitExceeded"
    );
}

/// A job asking for a Volcano PodGroup on a cluster without Volcano's CRD: no pods,
/// Running=False with reason PodGroupNotInstalled naming the API, one Warning Event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_group_without_its_crd_is_a_condition_and_a_warning() {
    let c = client().await;
    let ns = namespace(&c, "no-podgroup").await;
    let _op = Operator::start(&ns, "a", &["--no-leader-election"]);
    let mut spec = serde_json::to_value(job_spec(2)).unwrap();
    spec["scheduling"] = json!({"podGroup": {"provider": "Volcano"}});
    create_job(&c, &ns, "gang", serde_json::from_value(spec).unwrap()).await;
    let cond = wait_running_reason(&c, &ns, "gang", "PodGroupNotInstalled").await;
    assert_eq!(cond.status, "False");
    assert!(
        cond.message.contains("scheduling.volcano.sh"),
        "{}",
        cond.message
    );
    assert!(pods(&c, &ns, "gang").await.is_empty());
    let first = wait_warnings(&c, &ns, "PodGroupNotInstalled").await;
    assert!(
        first[0]
            .note
            .as_deref()
            .unwrap_or("")
            .contains("scheduling.volcano.sh"),
        "{:?}",
        first[0].note
    );
}

/// Every storage URL field of both kinds accepts exactly the URLs the trainer opens
/// (`janus_crds::url::BOUNDARY_URLS`; the trainer's side: `trainer/src/storage.rs`),
/// and `checkpoint.everySteps: 0` (save only at the end) is accepted by the API server
/// and by the trainer's parse of the rendered config.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_urls_and_every_steps_zero_are_accepted_by_both_sides_or_refused_by_the_api_server()
{
    use janus_crds::url::BOUNDARY_URLS;
    use k8s_openapi::api::core::v1::ConfigMap;
    let c = client().await;
    let ns = namespace(&c, "urls").await;
    let train = serde_json::to_value(job_spec(1)).unwrap();
    let eval = json!({
        "model": {"url": "s3://models/janus-7b-orpo", "promptFormat": "chatml"},
        "benchmark": {"url": "s3://data/multifaceted-bench/test.jsonl"},
        "judge": {"endpoint": "http://judge.example:8000/v1", "model": "judge-model"},
        "output": {"url": "s3://eval-results"},
        "worker": {"image": "ghcr.io/janus/trainer:test"}
    });
    let kinds = [
        (
            ApiResource::erase::<JanusTrainingJob>(&()),
            "JanusTrainingJob",
            train,
            &[
                "model.url",
                "model.tokenizerUrl",
                "dataset.urls[]",
                "checkpoint.url",
                "checkpoint.resumeFrom",
                "output.url",
            ][..],
        ),
        (
            ApiResource::erase::<JanusEvalJob>(&()),
            "JanusEvalJob",
            eval,
            &[
                "model.url",
                "model.tokenizerUrl",
                "benchmark.url",
                "output.url",
                "baseline.resultsUrl",
            ][..],
        ),
    ];
    let mut wrong = vec![];
    for (ar, kind, spec, fields) in &kinds {
        let api: Api<DynamicObject> = Api::namespaced_with(c.clone(), &ns, ar);
        for field in *fields {
            for (url, accepted) in BOUNDARY_URLS {
                let mut obj = json!({"apiVersion": "janus.dev/v1alpha1", "kind": kind,
                    "metadata": {"name": "u", "namespace": ns}, "spec": spec.clone()});
                let path = format!("spec.{field}");
                set_path(&mut obj, &path, json!(url));
                let named = path.trim_end_matches("[]");
                match (dry_run(&api, &obj).await, accepted) {
                    (Ok(()), true) => {}
                    (Err(e), false) if e.starts_with("422") && e.contains(named) => {}
                    (r, _) => wrong.push(format!("{kind} {path} = {url}: {r:?}")),
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    let _op = Operator::start(&ns, "a", &["--no-leader-election"]);
    let mut spec = job_spec(1);
    spec.checkpoint.every_steps = 0;
    create_job(&c, &ns, "at-end", spec).await;
    let cm = wait_for("the ConfigMap of at-end", T, || async {
        Api::<ConfigMap>::namespaced(c.clone(), &ns)
            .get_opt("at-end-config")
            .await
            .unwrap()
    })
    .await;
    let v: Value = serde_yaml::from_str(&cm.data.unwrap()["config.yaml"]).unwrap();
    let cfg = janus_crds::config::TrainConfig::from_value(v, "at-end-config")
        .expect("the trainer accepts what the API server accepted");
    assert_eq!(cfg.checkpoint.every_steps, 0);
}

/// `runPolicy.failurePolicy.rules`: a rule making exit code 3 `FailJob` fails the job at
/// the first such exit, without a restart, naming the rule; the API server refuses
/// rules that cannot mean anything (both or neither requirement, `In` with 0, a code
/// twice, a code beyond 255, an unknown action).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fail_job_rule_on_an_exit_code_fails_the_job_at_once() {
    let c = client().await;
    let ns = namespace(&c, "failure-policy").await;
    let api: Api<DynamicObject> =
        Api::namespaced_with(c.clone(), &ns, &ApiResource::erase::<JanusTrainingJob>(&()));
    let with_rules = |rules: Value| {
        let mut spec = serde_json::to_value(job_spec(2)).unwrap();
        spec["runPolicy"] = json!({"failurePolicy": {"rules": rules}});
        json!({"apiVersion": "janus.dev/v1alpha1", "kind": "JanusTrainingJob",
               "metadata": {"name": "p", "namespace": ns}, "spec": spec})
    };
    let codes = |op: &str, values: Value| json!({"operator": op, "values": values});
    let refused = [
        json!([{"action": "FailJob"}]),
        json!([{"action": "FailJob", "onExitCodes": codes("In", json!([3])),
                "onPodConditions": [{"type": "DisruptionTarget"}]}]),
        json!([{"action": "FailJob", "onExitCodes": codes("In", json!([0, 3]))}]),
        json!([{"action": "FailJob", "onExitCodes": codes("In", json!([3, 3]))}]),
        json!([{"action": "FailJob", "onExitCodes": codes("In", json!([256]))}]),
        json!([{"action": "FailJob", "onExitCodes": codes("In", json!([]))}]),
        json!([{"action": "Ignore", "onExitCodes": codes("In", json!([3]))}]),
        json!([{"action": "FailJob", "onPodConditions": [{"type": "Ready"}]}]),
    ];
    for rules in refused {
        let r = dry_run(&api, &with_rules(rules.clone())).await;
        assert!(
            r.as_ref()
                .is_err_and(|e| e.starts_with("422") && e.contains("failurePolicy")),
            "{rules}: {r:?}"
        );
    }
    let accepted = json!([
        {"action": "FailJob", "onExitCodes": codes("In", json!([3]))},
        {"action": "RestartJobAndIgnoreBackoff", "onExitCodes": codes("NotIn", json!([0, 64, 75]))},
        {"action": "RestartJob", "onPodConditions": [{"type": "DisruptionTarget"}]}
    ]);
    dry_run(&api, &with_rules(accepted.clone())).await.unwrap();

    let _op = Operator::start(&ns, "a", &["--no-leader-election"]);
    let mut spec = serde_json::to_value(job_spec(2)).unwrap();
    spec["runPolicy"] = json!({"failurePolicy": {"rules": accepted}});
    create_job(&c, &ns, "strict", serde_json::from_value(spec).unwrap()).await;
    wait_gang_running(&c, &ns, "strict", 2, 0).await;
    finish_pod(&c, &ns, "strict-worker-1", 3).await;
    let j = wait_phase(&c, &ns, "strict", "Failed", T).await;
    let cond = condition(&j, "Failed").unwrap();
    assert_eq!(cond.reason, "PodFailurePolicy");
    assert_eq!(
        cond.message,
        "worker strict-worker-1 exited with code 3, matching runPolicy.failurePolicy.rules[0] (FailJob)"
    );
    assert_eq!(j.status.as_ref().unwrap().restarts, 0);
    let ev = wait_warnings(&c, &ns, "PodFailurePolicy").await;
    assert!(
        ev[0].note.as_deref().unwrap_or("").contains("rules[0]"),
        "{:?}",
        ev[0].note
    );
}

/// `spec.networkPolicy`: the job gets a NetworkPolicy `<name>-workers`, owned by it,
/// that admits its own pods on every port and the metrics port from `metricsFrom`; a
/// job without the field gets none; the field cannot be removed. (The test cluster's
/// network plugin enforces nothing: the policy's shape is what is checked here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_policy_admits_only_the_jobs_own_pods_and_the_named_scrapers() {
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    let c = client().await;
    let ns = namespace(&c, "netpol").await;
    let _op = Operator::start(&ns, "a", &["--no-leader-election"]);
    let mut spec = job_spec(2);
    // No GPUs: the shared cluster's are for the tests that schedule on them.
    spec.workers.gpus_per_worker = 0;
    spec.network_policy = Some(
        serde_json::from_value(json!({"metricsFrom": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
        ]}))
        .unwrap(),
    );
    let job = create_job(&c, &ns, "fenced", spec).await;
    let mut open = job_spec(1);
    open.workers.gpus_per_worker = 0;
    create_job(&c, &ns, "open", open).await;
    wait_phase(&c, &ns, "fenced", "Running", Duration::from_secs(120)).await;
    wait_phase(&c, &ns, "open", "Running", Duration::from_secs(120)).await;

    let api: Api<NetworkPolicy> = Api::namespaced(c.clone(), &ns);
    let np = api.get("fenced-workers").await.unwrap();
    let owner = &np.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), &owner.uid),
        ("JanusTrainingJob", job.metadata.uid.as_ref().unwrap())
    );
    let spec = serde_json::to_value(np.spec.unwrap()).unwrap();
    let own = json!({"podSelector": {"matchLabels": {"janus.dev/job": "fenced"}}});
    assert_eq!(spec["podSelector"], own["podSelector"]);
    assert_eq!(spec["policyTypes"], json!(["Ingress"]));
    assert_eq!(
        spec["ingress"][0],
        json!({"from": [own]}),
        "its own pods, every port"
    );
    assert_eq!(
        spec["ingress"][1],
        json!({"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
               "ports": [{"port": 9400, "protocol": "TCP"}]})
    );
    assert_eq!(spec["ingress"].as_array().unwrap().len(), 2);
    let all = api.list(&Default::default()).await.unwrap();
    assert_eq!(
        all.items.len(),
        1,
        "the job without the field has no policy"
    );

    let jobs: Api<JanusTrainingJob> = Api::namespaced(c.clone(), &ns);
    let err = jobs
        .patch(
            "fenced",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"networkPolicy": null}})),
        )
        .await
        .expect_err("removing the policy is refused");
    assert!(
        err.to_string().contains("spec.networkPolicy is immutable"),
        "{err}"
    );
}
