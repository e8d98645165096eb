//! The JanusEvalJob controller against the real control plane (tests/controlplane), with
//! the real operator binary: one test per promise of issue 10 item 4, each in its own
//! namespace with its own operator process. kwok runs the pods; a test plays `janus
//! eval` by writing the pods' progress annotation and their exit codes.

use std::time::Duration;

use janus_crds::config::EvalConfig;
use janus_crds::{JanusEvalJob, JanusEvalJobSpec, JanusTrainingJob};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{json, Value};

use super::support::*;

const T: Duration = Duration::from_secs(60);

fn eval_spec(replicas: i32) -> Value {
    json!({
        "model": {"url": "s3://models/janus-7b-orpo", "promptFormat": "chatml"},
        "benchmark": {"url": "s3://data/multifaceted-bench/test.jsonl", "limit": 8},
        "judge": {"endpoint": "http://judge.example:8000/v1", "model": "judge-model",
                  "apiKeySecretRef": {"name": "judge-key", "key": "api-key"}},
        "output": {"url": "s3://eval-results"},
        "worker": {
            "replicas": replicas,
            "image": "ghcr.io/janus/trainer:test",
            "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}]
        }
    })
}

async fn create_eval(c: &Client, ns: &str, name: &str, spec: Value) -> JanusEvalJob {
    let spec: JanusEvalJobSpec = serde_json::from_value(spec).unwrap();
    Api::<JanusEvalJob>::namespaced(c.clone(), ns)
        .create(&PostParams::default(), &JanusEvalJob::new(name, spec))
        .await
        .unwrap()
}

async fn get_eval(c: &Client, ns: &str, name: &str) -> Option<JanusEvalJob> {
    Api::<JanusEvalJob>::namespaced(c.clone(), ns)
        .get_opt(name)
        .await
        .unwrap()
}

async fn judge_secret(c: &Client, ns: &str) {
    let s: Secret = serde_json::from_value(json!({
        "metadata": {"name": "judge-key"}, "stringData": {"api-key": "sk-test"}
    }))
    .unwrap();
    Api::<Secret>::namespaced(c.clone(), ns)
        .create(&PostParams::default(), &s)
        .await
        .unwrap();
}

async fn eval_pods(c: &Client, ns: &str, job: &str) -> Vec<Pod> {
    let mut v = Api::<Pod>::namespaced(c.clone(), ns)
        .list(&ListParams::default().labels(&format!("janus.dev/eval-job={job}")))
        .await
        .unwrap()
        .items;
    v.sort_by_key(|p| p.name_any());
    v
}

/// Wait until pod `name` exists (not terminating) at `attempt`, Running; returns it.
async fn wait_running(c: &Client, ns: &str, name: &str, attempt: i32) -> Pod {
    let api: Api<Pod> = Api::namespaced(c.clone(), ns);
    wait_for(
        &format!("pod {ns}/{name} Running at attempt {attempt}"),
        T,
        || async {
            let p = api.get_opt(name).await.unwrap()?;
            let ok = p.metadata.deletion_timestamp.is_none()
                && p.labels().get("janus.dev/attempt") == Some(&attempt.to_string())
                && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
            ok.then_some(p)
        },
    )
    .await
}

async fn wait_eval<F>(c: &Client, ns: &str, name: &str, what: &str, check: F) -> JanusEvalJob
where
    F: Fn(&JanusEvalJob) -> bool,
{
    let mut last = None;
    let r = tokio::time::timeout(T, async {
        loop {
            if let Some(j) = get_eval(c, ns, name).await {
                if check(&j) {
                    return j;
                }
                last = j.status.clone();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    r.unwrap_or_else(|_| panic!("{ns}/{name}: timed out waiting for {what}; last status {last:#?}"))
}

fn eval_phase(j: &JanusEvalJob) -> &'static str {
    j.status
        .as_ref()
        .and_then(|s| s.phase)
        .map_or("", |p| p.as_str())
}

fn eval_condition<'a>(
    j: &'a JanusEvalJob,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    j.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

/// As `janus eval` would: the pod's progress report on itself.
async fn report(c: &Client, ns: &str, pod: &str, report: Value) {
    let patch =
        json!({"metadata": {"annotations": {"janus.dev/eval-progress": report.to_string()}}});
    Api::<Pod>::namespaced(c.clone(), ns)
        .patch(pod, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
}

/// Container `container` of `pod` (an init container when `init`) exits `code`; the pod
/// is Failed, or Succeeded when `code` is 0.
async fn exit(c: &Client, ns: &str, pod: &str, container: &str, init: bool, code: i32) {
    let phase = if code == 0 { "Succeeded" } else { "Failed" };
    let statuses = json!([{"name": container, "ready": false, "started": false,
        "state": {"running": null, "terminated": {"exitCode": code,
            "reason": if code == 0 { "Completed" } else { "Error" },
            "message": format!("{container} exited {code}"),
            "startedAt": "2026-01-01T00:00:00Z", "finishedAt": "2026-01-01T00:00:00Z"}}}]);
    let key = if init {
        "initContainerStatuses"
    } else {
        "containerStatuses"
    };
    let patch = json!({"status": {"phase": phase, key: statuses}});
    Api::<Pod>::namespaced(c.clone(), ns)
        .patch_status(pod, &PatchParams::default(), &Patch::Strategic(patch))
        .await
        .unwrap();
}

fn env_of(pod: &Pod, container: &str) -> Vec<(String, Option<String>)> {
    let spec = pod.spec.as_ref().unwrap();
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .find(|c| c.name == container)
        .unwrap()
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.clone(), e.value.clone()))
        .collect()
}

fn env_value(pod: &Pod, container: &str, name: &str) -> Option<String> {
    env_of(pod, container)
        .into_iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eval_job_generates_then_judges_and_mirrors_the_scores() {
    let c = client().await;
    let ns = namespace(&c, "eval-flow").await;
    let op = Operator::start(&ns, "a", &["--no-leader-election"]);
    judge_secret(&c, &ns).await;
    let job = create_eval(&c, &ns, "ev", eval_spec(2)).await;

    let g0 = wait_running(&c, &ns, "ev-generate-0", 0).await;
    let g1 = wait_running(&c, &ns, "ev-generate-1", 0).await;
    for (i, p) in [&g0, &g1].into_iter().enumerate() {
        assert_eq!(
            env_value(p, "generate", "JANUS_NODE_RANK"),
            Some(i.to_string())
        );
        assert_eq!(
            env_value(p, "generate", "JANUS_NNODES").as_deref(),
            Some("2")
        );
        assert_eq!(env_value(p, "generate", "JANUS_JOB").as_deref(), Some("ev"));
        assert_eq!(
            env_value(p, "generate", "JANUS_CONFIG").as_deref(),
            Some("/etc/janus/config.yaml")
        );
        let cmd = p.spec.as_ref().unwrap().containers[0]
            .command
            .clone()
            .unwrap();
        assert_eq!(cmd, vec!["janus", "eval", "generate"]);
        assert!(p
            .spec
            .as_ref()
            .unwrap()
            .node_name
            .as_deref()
            .unwrap()
            .starts_with("kwok-node-"));
        let o = &p.owner_references()[0];
        assert_eq!(
            (o.uid.as_str(), o.controller),
            (job.uid().unwrap().as_str(), Some(true))
        );
    }
    // The config every pod reads is the eval config `janus eval` parses.
    let cm = Api::<ConfigMap>::namespaced(c.clone(), &ns)
        .get("ev-eval-settings")
        .await
        .unwrap();
    let text = &cm.data.unwrap()["config.yaml"];
    let cfg = EvalConfig::from_value(serde_yaml::from_str(text).unwrap(), "configmap").unwrap();
    assert_eq!(cfg.output_dir, format!("s3://eval-results/{ns}/ev"));
    assert_eq!(cfg.model.path, "s3://models/janus-7b-orpo");
    assert_eq!(cfg.bench.limit, Some(8));
    assert_eq!(
        cfg.judge.api_key_env.as_deref(),
        Some("JANUS_JUDGE_API_KEY")
    );

    // Pods hold no API permission; each reports through the operator, on itself only.
    let sa = impersonated_client(&format!("system:serviceaccount:{ns}:ev-eval")).await;
    let as_pod: Api<Pod> = Api::namespaced(sa, &ns);
    let note = json!({"metadata": {"annotations": {"x": "y"}}});
    assert!(
        as_pod
            .patch(
                "ev-generate-0",
                &PatchParams::default(),
                &Patch::Merge(&note)
            )
            .await
            .is_err(),
        "a pod may not patch itself"
    );
    let shard0 = Api::<Pod>::namespaced(c.clone(), &ns)
        .get("ev-generate-0")
        .await
        .unwrap();
    assert_eq!(
        shard0
            .spec
            .as_ref()
            .unwrap()
            .automount_service_account_token,
        Some(false)
    );
    let token = pod_token(&c, &ns, "ev-eval", &shard0, "janus.dev/operator").await;
    let doc = json!({"stage": "generate", "itemsDone": 4, "itemsTotal": 4, "updatedAt": "2026-01-01T00:00:01Z"});
    let body = json!({"annotation": "janus.dev/eval-progress", "value": doc.to_string()});
    let (code, why) = op.post("/v1/report", Some(&token), &body.to_string());
    assert_eq!(code, 204, "{why}");
    let training = json!({"annotation": "janus.dev/progress", "value": "{}"});
    let (code, why) = op.post("/v1/report", Some(&token), &training.to_string());
    assert_eq!(code, 403, "only its own kind of report: {why}");

    // Progress is mirrored; the judge waits for every shard.
    report(&c, &ns, "ev-generate-1", json!({"stage": "generate", "itemsDone": 1, "itemsTotal": 4, "updatedAt": "2026-01-01T00:00:02Z"})).await;
    let j = wait_eval(&c, &ns, "ev", "itemsGenerated 5 of 8", |j| {
        j.status
            .as_ref()
            .and_then(|s| s.progress.as_ref())
            .is_some_and(|p| p.items_generated == 5 && p.items_total == 8)
    })
    .await;
    assert_eq!(eval_phase(&j), "Generating");
    exit(&c, &ns, "ev-generate-0", "generate", false, 0).await;
    wait_eval(&c, &ns, "ev", "shard 0 Succeeded", |j| {
        j.status.as_ref().is_some_and(|s| {
            s.shards
                .first()
                .is_some_and(|x| x.phase == janus_crds::eval::PodPhase::Succeeded)
        })
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        eval_pods(&c, &ns, "ev")
            .await
            .iter()
            .all(|p| p.name_any() != "ev-judge"),
        "no judge while shard 1 generates"
    );
    exit(&c, &ns, "ev-generate-1", "generate", false, 0).await;

    // Then one judge pod: judge (init container, with the key), then score.
    let judge = wait_running(&c, &ns, "ev-judge", 0).await;
    let spec = judge.spec.clone().unwrap();
    assert_eq!(
        spec.init_containers.as_ref().unwrap()[0]
            .command
            .clone()
            .unwrap(),
        vec!["janus", "eval", "judge"]
    );
    assert_eq!(
        spec.containers[0].command.clone().unwrap(),
        vec!["janus", "eval", "score"]
    );
    let key = spec.init_containers.as_ref().unwrap()[0]
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "JANUS_JUDGE_API_KEY")
        .and_then(|e| e.value_from.clone())
        .and_then(|v| v.secret_key_ref)
        .expect("the judge's API key from the Secret");
    assert_eq!(
        (key.name.as_str(), key.key.as_str()),
        ("judge-key", "api-key")
    );
    let j = wait_eval(&c, &ns, "ev", "phase Judging", |j| {
        eval_phase(j) == "Judging"
    })
    .await;
    assert_eq!(
        eval_condition(&j, "Generated").unwrap().reason,
        "AllShardsGenerated"
    );

    report(
        &c,
        &ns,
        "ev-judge",
        json!({"stage": "score", "itemsDone": 8, "itemsTotal": 8,
        "callsDone": 72, "callsTotal": 72, "parseFailures": 1, "updatedAt": "2026-01-01T00:01:00Z",
        "scores": {"mean": 3.875, "std": 0.05, "perDimension": {"style": 4.0},
                   "versusBaseline": {"win": 0.5, "tie": 0.25, "lose": 0.25, "winPlusTie": 0.75}}}),
    )
    .await;
    exit(&c, &ns, "ev-judge", "score", false, 0).await;
    let j = wait_eval(&c, &ns, "ev", "phase Succeeded", |j| {
        eval_phase(j) == "Succeeded"
    })
    .await;
    let s = j.status.clone().unwrap();
    let sc = s.scores.unwrap();
    assert_eq!(sc.mean, 3.875);
    assert_eq!(sc.per_dimension["style"], 4.0);
    assert_eq!(sc.versus_baseline.unwrap().win_plus_tie, 0.75);
    let p = s.progress.unwrap();
    assert_eq!(
        (p.calls_judged, p.calls_total, p.judge_failures),
        (72, 72, 1)
    );
    assert!(s.completion_time.is_some());
    assert_eq!(
        eval_condition(&j, "Succeeded").unwrap().reason,
        "ScoresReported"
    );
    let reasons = event_reasons(&c, &ns, "ev").await;
    for r in [
        "JobCreated",
        "AllShardsGenerated",
        "JudgeStarted",
        "ScoresReported",
    ] {
        assert!(
            reasons.iter().any(|e| e == r),
            "no {r} Event in {reasons:?}"
        );
    }
    // Printer columns: Phase, Score, Win+Tie, Age.
    let cl = cluster();
    let out = std::process::Command::new(cl.bin.join("kubectl"))
        .arg(format!("--kubeconfig={}", cl.kubeconfig.display()))
        .args(["get", "jej", "ev", "-n", &ns])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    let mut rows = table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>());
    assert_eq!(
        rows.next().unwrap(),
        vec!["NAME", "PHASE", "SCORE", "WIN+TIE", "AGE"]
    );
    assert_eq!(
        &rows.next().unwrap()[..4],
        &["ev", "Succeeded", "3.875", "0.75"]
    );
    assert_eq!(op.metric("janus_eval_restarts_total"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_eval_pod_is_recreated_alone_and_bad_input_fails_the_job() {
    let c = client().await;
    let ns = namespace(&c, "eval-restart").await;
    let op = Operator::start(&ns, "a", &["--no-leader-election"]);
    judge_secret(&c, &ns).await;
    create_eval(&c, &ns, "ev", eval_spec(2)).await;
    let g0 = wait_running(&c, &ns, "ev-generate-0", 0).await;
    let g1 = wait_running(&c, &ns, "ev-generate-1", 0).await;

    // A retryable failure of shard 1: that pod alone comes back, at attempt 1.
    exit(&c, &ns, "ev-generate-1", "generate", false, 75).await;
    let g1b = wait_running(&c, &ns, "ev-generate-1", 1).await;
    assert_ne!(g1b.uid(), g1.uid());
    assert_eq!(
        env_value(&g1b, "generate", "JANUS_ATTEMPT").as_deref(),
        Some("1")
    );
    let now0 = Api::<Pod>::namespaced(c.clone(), &ns)
        .get("ev-generate-0")
        .await
        .unwrap();
    assert_eq!(now0.uid(), g0.uid(), "the other shard keeps running");
    let j = wait_eval(&c, &ns, "ev", "restarts 1", |j| {
        j.status.as_ref().is_some_and(|s| s.restarts == 1)
    })
    .await;
    let s = j.status.unwrap();
    assert_eq!((s.shards[0].attempt, s.shards[1].attempt), (0, 1));
    let reasons = event_reasons(&c, &ns, "ev").await;
    assert!(reasons.iter().any(|r| r == "PodFailed"), "{reasons:?}");
    wait_for("janus_eval_restarts_total 1", T, || async {
        (op.metric("janus_eval_restarts_total") == 1.0).then_some(())
    })
    .await;

    // The judge's own failure is retried too; then bad input (64) fails the job at once.
    exit(&c, &ns, "ev-generate-0", "generate", false, 0).await;
    exit(&c, &ns, "ev-generate-1", "generate", false, 0).await;
    wait_running(&c, &ns, "ev-judge", 0).await;
    exit(&c, &ns, "ev-judge", "judge", true, 75).await;
    wait_running(&c, &ns, "ev-judge", 1).await;
    exit(&c, &ns, "ev-judge", "judge", true, 64).await;
    let j = wait_eval(&c, &ns, "ev", "phase Failed", |j| eval_phase(j) == "Failed").await;
    let f = eval_condition(&j, "Failed").unwrap();
    assert_eq!(f.reason, "NonRetryableExit");
    assert!(
        f.message.contains("ev-judge")
            && f.message.contains("container judge")
            && f.message.contains("64"),
        "{}",
        f.message
    );
    assert_eq!(j.status.unwrap().restarts, 2);
    // Done shards were not generated again.
    let names: Vec<String> = eval_pods(&c, &ns, "ev")
        .await
        .iter()
        .map(|p| p.name_any())
        .collect();
    let g0_now = Api::<Pod>::namespaced(c.clone(), &ns)
        .get("ev-generate-0")
        .await
        .unwrap();
    assert_eq!(g0_now.uid(), g0.uid(), "{names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_judge_secret_is_a_condition_and_an_event_not_a_crash_loop() {
    let c = client().await;
    let ns = namespace(&c, "eval-secret").await;
    let op = Operator::start(&ns, "a", &["--no-leader-election"]);
    create_eval(&c, &ns, "ev", eval_spec(1)).await;
    // Generation does not need the key and goes ahead.
    wait_running(&c, &ns, "ev-generate-0", 0).await;
    let j = wait_eval(&c, &ns, "ev", "SecretsReady False", |j| {
        eval_condition(j, "SecretsReady").is_some_and(|c| c.status == "False")
    })
    .await;
    let cond = eval_condition(&j, "SecretsReady").unwrap();
    assert_eq!(cond.reason, "SecretNotFound");
    assert!(
        cond.message.contains("judge-key") && cond.message.contains("spec.judge.apiKeySecretRef"),
        "{}",
        cond.message
    );
    exit(&c, &ns, "ev-generate-0", "generate", false, 0).await;
    wait_eval(&c, &ns, "ev", "phase Judging", |j| {
        eval_phase(j) == "Judging"
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        eval_pods(&c, &ns, "ev")
            .await
            .iter()
            .all(|p| p.name_any() != "ev-judge"),
        "no judge pod without its key"
    );
    let warnings: Vec<String> = event_reasons(&c, &ns, "ev").await;
    assert_eq!(
        warnings.iter().filter(|r| *r == "SecretNotFound").count(),
        1,
        "one Event for the transition: {warnings:?}"
    );
    // Waiting is no reconcile error (no error loop, no backoff).
    let metrics = op.get("/metrics").unwrap_or_default();
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("janus_operator_reconcile_errors_total{") && !l.ends_with(" 0")),
        "{metrics}"
    );

    // The Secret appears: the judge starts without anyone touching the job.
    judge_secret(&c, &ns).await;
    wait_running(&c, &ns, "ev-judge", 0).await;
    let j = wait_eval(&c, &ns, "ev", "SecretsReady True", |j| {
        eval_condition(j, "SecretsReady").is_some_and(|c| c.status == "True")
    })
    .await;
    assert_eq!(
        eval_condition(&j, "SecretsReady").unwrap().reason,
        "SecretsFound"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eval_job_waits_for_its_training_job_and_evaluates_its_output() {
    let c = client().await;
    let ns = namespace(&c, "eval-wait").await;
    let _op = Operator::start(&ns, "a", &["--no-leader-election"]);
    judge_secret(&c, &ns).await;
    let mut spec = eval_spec(1);
    spec["model"] = json!({"trainingJob": "sft"});
    create_eval(&c, &ns, "sft", spec).await;
    let j = wait_eval(&c, &ns, "sft", "ModelReady False", |j| {
        eval_condition(j, "ModelReady").is_some_and(|c| c.status == "False")
    })
    .await;
    assert_eq!(
        eval_condition(&j, "ModelReady").unwrap().reason,
        "TrainingJobNotFound"
    );
    assert!(eval_pods(&c, &ns, "sft").await.is_empty());

    create_job(&c, &ns, "sft", job_spec(1)).await;
    wait_eval(&c, &ns, "sft", "WaitingForTrainingJob", |j| {
        eval_condition(j, "ModelReady").is_some_and(|c| c.reason == "WaitingForTrainingJob")
    })
    .await;
    wait_gang_running(&c, &ns, "sft", 1, 0).await;
    assert!(
        eval_pods(&c, &ns, "sft").await.is_empty(),
        "nothing before the model exists"
    );
    finish_pod(&c, &ns, "sft-worker-0", 0).await;
    wait_phase(&c, &ns, "sft", "Succeeded", T).await;

    wait_running(&c, &ns, "sft-generate-0", 0).await;
    let j = wait_eval(&c, &ns, "sft", "ModelReady True", |j| {
        eval_condition(j, "ModelReady").is_some_and(|c| c.status == "True")
    })
    .await;
    let s = j.status.unwrap();
    // The training job's output, in the format it trained with (sft: mistral).
    assert_eq!(s.model_url.as_deref(), Some("s3://models/out"));
    let cm = Api::<ConfigMap>::namespaced(c.clone(), &ns)
        .get("sft-eval-settings")
        .await
        .unwrap();
    let cfg = EvalConfig::from_value(
        serde_yaml::from_str(&cm.data.unwrap()["config.yaml"]).unwrap(),
        "cm",
    )
    .unwrap();
    assert_eq!(cfg.model.path, "s3://models/out");
    assert_eq!(
        cfg.model.prompt_format,
        janus_crds::config::PromptFormat::Mistral
    );
    let reasons = event_reasons(&c, &ns, "sft").await;
    for r in [
        "TrainingJobNotFound",
        "WaitingForTrainingJob",
        "TrainingJobSucceeded",
    ] {
        assert!(reasons.iter().any(|e| e == r), "no {r} in {reasons:?}");
    }
    // Same name, different kind: neither took the other's children.
    let tj = Api::<JanusTrainingJob>::namespaced(c.clone(), &ns)
        .get("sft")
        .await
        .unwrap();
    assert_eq!(tj.status.unwrap().workers.unwrap().succeeded, 1);
    let tcm = Api::<ConfigMap>::namespaced(c.clone(), &ns)
        .get("sft-config")
        .await
        .unwrap();
    assert!(tcm.data.unwrap()["config.yaml"].contains("method: sft"));
}

/// Invalid evaluations are refused by the API server itself, naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_eval_specs_are_rejected_by_the_api_server_naming_the_field() {
    let c = client().await;
    let ns = namespace(&c, "eval-invalid").await;
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(
        c.clone(),
        &ns,
        &kube::core::ApiResource::erase::<JanusEvalJob>(&()),
    );
    let valid = |name: &str| {
        json!({"apiVersion": "janus.dev/v1alpha1", "kind": "JanusEvalJob",
               "metadata": {"name": name}, "spec": eval_spec(2)})
    };
    type Mutation = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Mutation, &str)> = vec![
        (
            "url and trainingJob",
            Box::new(|v| v["spec"]["model"]["trainingJob"] = json!("sft")),
            "spec.model",
        ),
        (
            "no model",
            Box::new(|v| v["spec"]["model"] = json!({"dtype": "bfloat16"})),
            "spec.model",
        ),
        (
            "bad model URL",
            Box::new(|v| v["spec"]["model"]["url"] = json!("ftp://m")),
            "spec.model.url",
        ),
        (
            "relative bench path",
            Box::new(|v| v["spec"]["benchmark"]["url"] = json!("bench.jsonl")),
            "spec.benchmark.url",
        ),
        (
            "zero replicas",
            Box::new(|v| v["spec"]["worker"]["replicas"] = json!(0)),
            "spec.worker.replicas",
        ),
        (
            "zero topP",
            Box::new(|v| v["spec"]["generation"] = json!({"topP": 0.0})),
            "spec.generation.topP",
        ),
        (
            "topP above 1",
            Box::new(|v| v["spec"]["generation"] = json!({"topP": 1.5})),
            "spec.generation.topP",
        ),
        (
            "negative temperature",
            Box::new(|v| v["spec"]["generation"] = json!({"temperature": -1.0})),
            "spec.generation.temperature",
        ),
        (
            "zero judge runs",
            Box::new(|v| v["spec"]["judge"]["runs"] = json!(0)),
            "spec.judge.runs",
        ),
        (
            "judge endpoint scheme",
            Box::new(|v| v["spec"]["judge"]["endpoint"] = json!("ftp://judge")),
            "spec.judge.endpoint",
        ),
        (
            "zero concurrency",
            Box::new(|v| v["spec"]["judge"]["concurrency"] = json!(0)),
            "spec.judge.concurrency",
        ),
        (
            "secret without key",
            Box::new(|v| v["spec"]["judge"]["apiKeySecretRef"] = json!({"name": "k"})),
            "spec.judge.apiKeySecretRef.key",
        ),
        (
            "baseline with both",
            Box::new(|v| {
                v["spec"]["baseline"] = json!({"evalJob": "b", "resultsUrl": "s3://r/results.json"})
            }),
            "spec.baseline",
        ),
        (
            "baseline with neither",
            Box::new(|v| v["spec"]["baseline"] = json!({})),
            "spec.baseline",
        ),
        (
            "baseline is itself",
            Box::new(|v| v["spec"]["baseline"] = json!({"evalJob": v["metadata"]["name"].clone()})),
            "spec.baseline.evalJob",
        ),
        (
            "negative backoffLimit",
            Box::new(|v| v["spec"]["runPolicy"] = json!({"backoffLimit": -1})),
            "spec.runPolicy.backoffLimit",
        ),
        (
            "name too long for the pod label",
            Box::new(|v| v["metadata"]["name"] = json!("a".repeat(64))),
            "metadata.name",
        ),
    ];
    let mut failures = vec![];
    for (i, (what, mutate, field)) in cases.iter().enumerate() {
        let mut v = valid(&format!("bad-{i}"));
        mutate(&mut v);
        let obj: kube::api::DynamicObject = serde_json::from_value(v).unwrap();
        match api.create(&PostParams::default(), &obj).await {
            Ok(_) => failures.push(format!("{what}: accepted")),
            Err(kube::Error::Api(s)) if s.code == 422 && s.message.contains(field) => {}
            Err(e) => failures.push(format!("{what}: expected a 422 naming {field}, got {e}")),
        }
    }

    let jobs: Api<JanusEvalJob> = Api::namespaced(c.clone(), &ns);
    create_eval(&c, &ns, "imm", eval_spec(2)).await;
    for (what, patch, field) in [
        (
            "model",
            json!({"spec": {"model": {"url": "s3://other"}}}),
            "spec.model is immutable",
        ),
        (
            "replicas",
            json!({"spec": {"worker": {"replicas": 3}}}),
            "spec.worker.replicas is immutable",
        ),
        (
            "judge model",
            json!({"spec": {"judge": {"model": "other"}}}),
            "spec.judge.model is immutable",
        ),
        (
            "sampling",
            json!({"spec": {"generation": {"temperature": 0.0}}}),
            "spec.generation is immutable",
        ),
        (
            "benchmark",
            json!({"spec": {"benchmark": {"url": "s3://other.jsonl"}}}),
            "spec.benchmark is immutable",
        ),
    ] {
        match jobs
            .patch("imm", &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => failures.push(format!("changing {what}: accepted")),
            Err(kube::Error::Api(s)) if s.code == 422 && s.message.contains(field) => {}
            Err(e) => failures.push(format!(
                "changing {what}: expected a 422 with `{field}`, got {e}"
            )),
        }
    }
    // What may change does change: suspend, the TTL, the judge's rate limit.
    jobs.patch(
        "imm",
        &PatchParams::default(),
        &Patch::Merge(
            json!({"spec": {"runPolicy": {"suspend": true, "ttlSecondsAfterFinished": 60},
                                       "judge": {"requestsPerMinute": 60}}}),
        ),
    )
    .await
    .unwrap();

    // The example evaluation is valid (server-side dry run).
    let cl = cluster();
    let example = std::path::Path::new(
        &std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into()),
    )
    .join("../manifests/examples/eval-kwok.yaml");
    let out = std::process::Command::new(cl.bin.join("kubectl"))
        .arg(format!("--kubeconfig={}", cl.kubeconfig.display()))
        .args(["apply", "--dry-run=server", "-n", &ns, "-f"])
        .arg(&example)
        .output()
        .unwrap();
    if !out.status.success()
        || !String::from_utf8_lossy(&out.stdout).contains("janusevaljob.janus.dev/demo-bench")
    {
        failures.push(format!(
            "{}: {}{}",
            example.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
