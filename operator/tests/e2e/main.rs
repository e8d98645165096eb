//! End to end on a real node (see fixture.rs for the world it sets up): the
//! helm-installed operator, the project's own images, real trainer processes in pods,
//! S3 checkpoints, CoreDNS, Prometheus. One test per promised behaviour.

mod fixture;

use std::time::{Duration, Instant};

use fixture::{wait_until, World, LIBTORCH_MOUNT, RELEASE_NS, TRAINER_IMAGE_TAG};
use serde_json::Value;

/// Epochs of the jobs over the sample data (micro-batch 2 x 2 ranks = 4 records a step):
/// long enough to watch the job move before a rank is killed.
const EPOCHS: u32 = 16;
const CHECKPOINT_EVERY: u64 = 12;

/// A 2-worker CPU SFT job on the tiny model in S3, checkpointing to S3.
fn job_yaml(w: &World, ns: &str, name: &str, data: &str) -> String {
    let env: String = w
        .s3_env()
        .iter()
        .map(|(k, v)| format!("  {k}: \"{v}\"\n"))
        .collect();
    format!(
        r#"apiVersion: v1
kind: Namespace
metadata: {{name: {ns}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: s3, namespace: {ns}}}
stringData:
{env}---
apiVersion: janus.dev/v1alpha1
kind: JanusTrainingJob
metadata: {{name: {name}, namespace: {ns}}}
spec:
  method: sft
  model: {{url: "{model}", dtype: float32}}
  dataset: {{urls: ["{data}"], promptFormat: mistral}}
  hyperparameters:
    epochs: {EPOCHS}
    microBatchSize: 2
    gradientAccumulationSteps: 1
    maxSeqLen: 256
    packing: false
    warmupSteps: 2
    learningRate: 0.001
  workers:
    replicas: 2
    gpusPerWorker: 0
    image: {TRAINER_IMAGE_TAG}
    imagePullPolicy: Never
    resources:
      requests: {{cpu: 100m, memory: 256Mi}}
      limits: {{memory: 2Gi}}
    # The CPU test image carries no libtorch: the venv's is mounted (images/README.md).
    template:
      spec:
        volumes:
        - {{name: libtorch, hostPath: {{path: "{site}", type: Directory}}}}
        containers:
        - name: trainer
          env:
          - {{name: OMP_NUM_THREADS, value: "1"}}
          volumeMounts:
          - {{name: libtorch, mountPath: {LIBTORCH_MOUNT}, readOnly: true}}
  checkpoint: {{url: "{ckpt}", everySteps: {CHECKPOINT_EVERY}, keep: 3}}
  output: {{url: "{out}"}}
  storageSecretRef: {{name: s3}}
  runPolicy: {{backoffLimit: 2}}
"#,
        model = w.s3_url("models/tiny"),
        site = w.site_packages.display(),
        ckpt = w.s3_url("ckpt"),
        out = w.s3_url(&format!("out/{ns}/{name}")),
    )
}

fn job(w: &World, ns: &str, name: &str) -> Value {
    w.json(&["-n", ns, "get", "jtj", name])
}

fn phase(j: &Value) -> String {
    j["status"]["phase"].as_str().unwrap_or("").to_string()
}

fn condition<'a>(j: &'a Value, type_: &str) -> Option<&'a Value> {
    j["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_ && c["status"] == "True")
}

fn wait_phase(w: &World, ns: &str, name: &str, want: &str, timeout: Duration) -> Value {
    wait_until(&format!("{ns}/{name} {want}"), timeout, || {
        let j = job(w, ns, name);
        let p = phase(&j);
        assert!(
            p != "Failed" || want == "Failed",
            "{ns}/{name} failed: {}\npods:\n{}",
            j["status"],
            w.kubectl_try(&["-n", ns, "get", "pods", "-o", "wide"]).1
        );
        (p == want).then_some(j)
    })
}

fn pod_logs(w: &World, ns: &str, pod: &str) -> String {
    w.kubectl_try(&["-n", ns, "logs", pod]).1
}

/// `(step, loss)` from `kubectl get jtj` as a person reads it (the STEP and LOSS columns).
fn get_jtj_columns(w: &World, ns: &str, name: &str) -> Option<(u64, String)> {
    let out = w.kubectl(&["-n", ns, "get", "jtj", name]);
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next()?.split_whitespace().collect();
    let row: Vec<&str> = lines.next()?.split_whitespace().collect();
    let col = |n: &str| header.iter().position(|h| *h == n).and_then(|i| row.get(i));
    let step = col("STEP")?.parse().ok()?;
    let loss = col("LOSS")?.to_string();
    Some((step, loss))
}

fn latest_checkpoint_step(w: &World, ns: &str, name: &str) -> Option<u64> {
    let latest = std::fs::read_to_string(w.s3_path(&format!("ckpt/{ns}/{name}/latest"))).ok()?;
    latest.trim().trim_start_matches("step-").parse().ok()
}

#[test]
fn helm_installed_operator_runs_under_its_own_service_account_with_leader_election() {
    let w = World::get();
    let pods = w.json(&[
        "-n",
        RELEASE_NS,
        "get",
        "pods",
        "-l",
        "app.kubernetes.io/name=janus-operator",
    ]);
    let items = pods["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "the chart runs 2 replicas: {pods}");
    let names: Vec<&str> = items
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap())
        .collect();
    for p in items {
        assert_eq!(p["spec"]["serviceAccountName"], "janus-operator");
        assert_eq!(p["spec"]["nodeName"], "janus-node", "a real node runs it");
        assert_eq!(
            p["spec"]["containers"][0]["image"],
            concat!("ghcr.io/janus/janus-operator:", env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(p["status"]["phase"], "Running");
    }
    // One of them holds the Lease.
    let holder = wait_until("a Lease holder", Duration::from_secs(60), || {
        let l = w.json(&["-n", RELEASE_NS, "get", "lease", "janus-operator"]);
        l["spec"]["holderIdentity"].as_str().map(str::to_string)
    });
    assert!(
        names.contains(&holder.as_str()),
        "holder {holder} is not one of {names:?}"
    );
    // The chart's RBAC, not cluster-admin: what the controller needs, nothing more.
    let sa = format!("--as=system:serviceaccount:{RELEASE_NS}:janus-operator");
    let can = |args: &[&str]| {
        let mut a = vec!["auth", "can-i", sa.as_str()];
        a.extend(args);
        // The answer is stdout's line; a warning may follow on stderr (a cluster-scoped
        // resource asked with the context's namespace).
        w.kubectl_try(&a).1.lines().next().map(str::trim) == Some("yes")
    };
    assert!(can(&[
        "patch",
        "janustrainingjobs.janus.dev",
        "--subresource=status",
        "-A"
    ]));
    assert!(can(&["create", "pods", "-n", "default"]));
    // A child is read before it is applied over, so that an object of its name the job
    // does not own is left alone (no adoption): `get` on each kind of child. Pods it may
    // already list, so `get` on them reveals nothing more.
    for what in ["pods", "services", "configmaps", "serviceaccounts"] {
        assert!(can(&["get", what, "-n", "default"]), "get {what}");
    }
    // Trimmed to the verbs it uses: children by create or server-side apply only (every
    // job of the tests below gets its children so), status by patch only.
    for (verb, what) in [
        ("update", "janustrainingjobs.janus.dev/status"),
        ("delete", "configmaps"),
        ("update", "serviceaccounts"),
        ("list", "roles.rbac.authorization.k8s.io"),
        ("create", "rolebindings.rbac.authorization.k8s.io"),
        ("list", "serviceaccounts"),
        ("delete", "podgroups.scheduling.volcano.sh"),
    ] {
        assert!(
            !can(&[verb, what, "-n", "default"]),
            "the operator may not {verb} {what}"
        );
    }
    // Kueue: the Workload's PodsReady (status by patch) and its priority, read from a
    // WorkloadPriorityClass or a PriorityClass (list: the cluster's globalDefault one);
    // never a write to either class. Kueue is not installed on this cluster, and
    // `kubectl auth can-i` asks for a resource of an API the server does not serve
    // without its group (always "no"), so these go through a SubjectAccessReview.
    let may = |verb: &str, group: &str, resource: &str, subresource: &str| {
        let review = serde_json::json!({
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": format!("system:serviceaccount:{RELEASE_NS}:janus-operator"),
                "resourceAttributes": {
                    "verb": verb, "group": group, "resource": resource,
                    "subresource": subresource, "namespace": "default",
                },
            },
        });
        let path = w
            .dir
            .join(format!("sar-{verb}-{resource}-{subresource}.json"));
        std::fs::write(&path, review.to_string()).unwrap();
        let answer = w.json(&["create", "-f", &path.display().to_string()]);
        answer["status"]["allowed"] == serde_json::json!(true)
    };
    assert!(may("patch", "kueue.x-k8s.io", "workloads", "status"));
    assert!(!may("update", "kueue.x-k8s.io", "workloads", "status"));
    for (group, resource) in [
        ("kueue.x-k8s.io", "workloadpriorityclasses"),
        ("scheduling.k8s.io", "priorityclasses"),
    ] {
        assert!(may("get", group, resource, ""), "get {resource}");
        assert!(
            !may("create", group, resource, ""),
            "the operator may not create {resource}"
        );
    }
    assert!(can(&["list", "priorityclasses.scheduling.k8s.io"]));
    // Which pod sent a progress report (pods themselves hold no API permission).
    assert!(can(&["create", "tokenreviews.authentication.k8s.io"]));
    // Its own Lease only: RBAC names it.
    assert!(can(&[
        "update",
        "leases.coordination.k8s.io/janus-operator",
        "-n",
        RELEASE_NS
    ]));
    assert!(!can(&[
        "update",
        "leases.coordination.k8s.io/someone-elses",
        "-n",
        RELEASE_NS
    ]));
    assert!(
        !can(&["create", "clusterrolebindings"]),
        "the operator must not be cluster-admin"
    );
    // It may `get` a named Secret (an evaluation's judge key must exist before the
    // judge starts), never list or watch them: it learns no Secret it was not told of.
    assert!(
        !can(&["list", "secrets", "-n", "default"]),
        "the operator lists no secrets"
    );
    assert!(
        !can(&["watch", "secrets", "-n", "default"]),
        "the operator watches no secrets"
    );
    assert!(!can(&[
        "update",
        "leases.coordination.k8s.io",
        "-n",
        "default"
    ]));
    // Probes answer on the pod itself.
    let ip = items[0]["status"]["podIP"].as_str().unwrap();
    assert_eq!(
        fixture::http_get(&format!("http://{ip}:8080/healthz")).unwrap(),
        "ok"
    );
    // PodDisruptionBudget of the chart keeps one replica through a drain.
    let pdb = w.json(&["-n", RELEASE_NS, "get", "pdb", "janus-operator"]);
    assert_eq!(pdb["spec"]["minAvailable"], 1);
}

#[test]
fn a_killed_rank_restarts_the_gang_which_resumes_from_s3_and_matches_a_straight_run_bitwise() {
    let w = World::get();
    let (ns, name) = ("e2e-restart", "sft");
    w.kubectl_apply(&job_yaml(w, ns, name, &w.s3_url("data/sft.jsonl")));
    let started = Instant::now();

    // Pods Running on the real node.
    let j = wait_phase(w, ns, name, "Running", Duration::from_secs(180));
    assert_eq!(j["status"]["restarts"], 0);
    let pods = w.json(&[
        "-n",
        ns,
        "get",
        "pods",
        "-l",
        &format!("janus.dev/job={name}"),
    ]);
    for p in pods["items"].as_array().unwrap() {
        assert_eq!(p["status"]["phase"], "Running", "{}", p["status"]);
        assert_eq!(p["spec"]["nodeName"], "janus-node");
    }

    // Rank 1 reached rank 0 through the headless Service's DNS name: it joined the
    // rendezvous at JANUS_MASTER_ADDR, and CoreDNS resolves that name to rank 0's pod.
    let rank1 = format!("{name}-worker-1");
    wait_until("rank 1 joined the job", Duration::from_secs(120), || {
        pod_logs(w, ns, &rank1)
            .contains("joined the job")
            .then_some(())
    });
    let rank0_ip = w.json(&["-n", ns, "get", "pod", &format!("{name}-worker-0")])["status"]
        ["podIP"]
        .as_str()
        .unwrap()
        .to_string();
    let master = format!("{name}-worker-0.{name}.{ns}.svc.cluster.local");
    assert_eq!(
        dns_a(&master).as_deref(),
        Some(rank0_ip.as_str()),
        "{master}"
    );
    // The API server reaches the kubelet too (exec through its client certificate).
    let help = w.kubectl(&[
        "-n",
        ns,
        "exec",
        &rank1,
        "--",
        "/usr/local/bin/janus",
        "--help",
    ]);
    assert!(help.contains("train"), "{help}");

    // `kubectl get jtj` shows step and loss moving.
    let first = wait_until(
        "STEP/LOSS in kubectl get jtj",
        Duration::from_secs(90),
        || get_jtj_columns(w, ns, name).filter(|(s, _)| *s > 0),
    );
    let second = wait_until(
        "STEP moving in kubectl get jtj",
        Duration::from_secs(90),
        || get_jtj_columns(w, ns, name).filter(|(s, l)| *s > first.0 && *l != first.1),
    );
    assert!(second.0 > first.0);

    // Prometheus has janus_train_step rising, and every dashboard query has data.
    let q = format!("janus_train_step{{janus_job=\"{name}\",namespace=\"{ns}\",rank=\"0\"}}");
    let s1 = wait_until(
        "janus_train_step in Prometheus",
        Duration::from_secs(60),
        || w.prom_query(&q).first().map(sample_value),
    );
    let s2 = wait_until("janus_train_step rising", Duration::from_secs(60), || {
        w.prom_query(&q)
            .first()
            .map(sample_value)
            .filter(|v| *v > s1)
    });
    assert!(s2 > s1);
    every_dashboard_query_returns_data(w, ns, name);

    // SIGKILL the trainer process of rank 1 once a checkpoint is in S3.
    let resume_from = wait_until("a checkpoint in S3", Duration::from_secs(120), || {
        latest_checkpoint_step(w, ns, name).filter(|s| *s >= CHECKPOINT_EVERY)
    });
    let pids = w.trainer_pids(ns, &rank1);
    assert_eq!(pids.len(), 1, "one janus process in {rank1}: {pids:?}");
    let total = job(w, ns, name)["status"]["progress"]["totalSteps"]
        .as_u64()
        .unwrap();
    fixture::run(
        std::process::Command::new("kill").args(["-KILL", &pids[0].to_string()]),
        "kill -KILL rank 1",
    );
    let killed_at = latest_checkpoint_step(w, ns, name).unwrap();
    assert!(killed_at < total, "the job finished before the kill");

    // The operator restarts the gang: Restarting condition naming exit 137, an Event,
    // restarts 1.
    let j = wait_until("restarts 1", Duration::from_secs(60), || {
        let j = job(w, ns, name);
        (j["status"]["restarts"] == 1).then_some(j)
    });
    let restarting = j["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Restarting")
        .unwrap_or_else(|| panic!("no Restarting condition: {}", j["status"]));
    assert_eq!(restarting["reason"], "WorkerFailed", "{restarting}");
    let msg = restarting["message"].as_str().unwrap();
    assert!(msg.contains(&rank1) && msg.contains("137"), "{msg}");
    // The Event is written after the status (its own request): wait for it.
    wait_until(
        "a Warning Event naming exit 137",
        Duration::from_secs(30),
        || {
            let events = w.json(&[
                "-n",
                ns,
                "get",
                "events.events.k8s.io",
                "--field-selector",
                &format!("regarding.name={name}"),
            ]);
            events["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| {
                    e["type"] == "Warning" && e["note"].as_str().is_some_and(|n| n.contains("137"))
                })
                .then_some(())
        },
    );

    // The new gang resumes from the newest checkpoint in S3 and the job succeeds.
    let j = wait_phase(w, ns, name, "Succeeded", Duration::from_secs(600));
    assert_eq!(j["status"]["restarts"], 1);
    let logs0 = pod_logs(w, ns, &format!("{name}-worker-0"));
    let resumed: Value = logs0
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["fields"]["message"] == "resumed" || v["message"] == "resumed")
        .unwrap_or_else(|| panic!("rank 0 of attempt 1 did not resume:\n{logs0}"));
    let step = resumed["fields"]["step"]
        .as_u64()
        .or(resumed["step"].as_u64())
        .unwrap();
    assert!(
        step >= resume_from && step >= killed_at && step < total,
        "resumed from {step}, expected the newest checkpoint at the kill ({killed_at})"
    );

    // Bitwise equal to an uninterrupted run of the same job (the rendered config, 2
    // local ranks, its own checkpoint and output directories).
    let reference = straight_run(w, ns, name);
    let ours = read_weights(&w.s3_path(&format!("out/{ns}/{name}")));
    assert_eq!(ours.len(), reference.len());
    for ((fa, a), (fb, b)) in ours.iter().zip(reference.iter()) {
        assert_eq!(fa, fb);
        assert!(a == b, "{fa} differs from the uninterrupted run");
    }
    eprintln!("gang restart test: {:.0}s", started.elapsed().as_secs_f64());
}

#[test]
fn a_worker_exiting_64_on_bad_data_fails_the_job_at_once_with_the_trainers_message() {
    let w = World::get();
    let (ns, name) = ("e2e-bad-data", "sft");
    let bad = w.s3_path("bad/sft.jsonl");
    std::fs::create_dir_all(bad.parent().unwrap()).unwrap();
    let good = std::fs::read_to_string(w.s3_path("data/sft.jsonl")).unwrap();
    let mut lines: Vec<&str> = good.lines().collect();
    lines[2] = "{\"system\": \"sys\", \"prompt\": 17}";
    std::fs::write(&bad, lines.join("\n") + "\n").unwrap();
    w.kubectl_apply(&job_yaml(w, ns, name, &w.s3_url("bad/sft.jsonl")));
    let j = wait_phase(w, ns, name, "Failed", Duration::from_secs(300));
    let failed = condition(&j, "Failed").expect("a Failed condition");
    assert_eq!(failed["reason"], "NonRetryableExit", "{failed}");
    let msg = failed["message"].as_str().unwrap();
    assert!(msg.contains("exited with code 64"), "{msg}");
    // The trainer's own words: the file and line of the bad record.
    assert!(msg.contains("sft.jsonl") && msg.contains(":3"), "{msg}");
    assert_eq!(j["status"]["restarts"], 0, "not retried");
}

#[test]
fn deleting_a_job_removes_its_pods_and_the_trainer_processes() {
    let w = World::get();
    let (ns, name) = ("e2e-delete", "sft");
    w.kubectl_apply(&job_yaml(w, ns, name, &w.s3_url("data/sft.jsonl")));
    wait_phase(w, ns, name, "Running", Duration::from_secs(180));
    let pods = [format!("{name}-worker-0"), format!("{name}-worker-1")];
    let pids: Vec<i32> = wait_until("both trainer processes", Duration::from_secs(120), || {
        let p: Vec<i32> = pods.iter().flat_map(|p| w.trainer_pids(ns, p)).collect();
        (p.len() == 2).then_some(p)
    });
    w.kubectl(&[
        "-n",
        ns,
        "delete",
        "jtj",
        name,
        "--wait=true",
        "--timeout=120s",
    ]);
    wait_until("the job's pods gone", Duration::from_secs(120), || {
        let left = w.json(&[
            "-n",
            ns,
            "get",
            "pods",
            "-l",
            &format!("janus.dev/job={name}"),
        ]);
        left["items"].as_array().unwrap().is_empty().then_some(())
    });
    wait_until(
        "the trainer processes gone",
        Duration::from_secs(60),
        || {
            pids.iter()
                .all(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
                .then_some(())
        },
    );
    for kind in ["service", "configmap", "serviceaccount"] {
        let left = w.json(&[
            "-n",
            ns,
            "get",
            kind,
            "-l",
            &format!("janus.dev/job={name}"),
        ]);
        assert!(
            left["items"].as_array().unwrap().is_empty(),
            "{kind} left: {left}"
        );
    }
}

/// Every query of manifests/grafana/janus-dashboard.json, with its variables set to
/// this job, returns at least one series.
fn every_dashboard_query_returns_data(w: &World, ns: &str, job: &str) {
    let d: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture::repo().join("manifests/grafana/janus-dashboard.json"))
            .unwrap(),
    )
    .unwrap();
    let vars: Vec<String> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect();
    assert!(
        vars.contains(&"namespace".into()) && vars.contains(&"job".into()),
        "{vars:?}"
    );
    let mut queries = vec![];
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap();
            let q = expr.replace("$namespace", ns).replace("$job", job);
            assert!(!q.contains('$'), "unknown variable in {expr}");
            queries.push((p["title"].as_str().unwrap().to_string(), q));
        }
    }
    assert!(queries.len() >= 12, "{queries:?}");
    // rate() over 5m windows needs two scrapes of each series: give it up to a minute.
    let mut missing = vec![];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        missing = queries
            .iter()
            .filter(|(_, q)| w.prom_query(q).is_empty())
            .cloned()
            .collect::<Vec<_>>();
        if missing.is_empty() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    assert!(
        missing.is_empty(),
        "dashboard queries without data: {missing:#?}"
    );
}

fn sample_value(s: &Value) -> f64 {
    s["value"][1].as_str().unwrap().parse().unwrap()
}

/// An A record through the cluster DNS (CoreDNS behind the kube-dns Service), asked
/// from the node: a UDP query by hand keeps the test free of resolver configuration.
fn dns_a(name: &str) -> Option<String> {
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    sock.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for part in name.split('.') {
        q.push(part.len() as u8);
        q.extend(part.as_bytes());
    }
    q.extend([0, 0, 1, 0, 1]);
    sock.send_to(&q, "10.0.0.10:53").ok()?;
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).ok()?;
    let answers = u16::from_be_bytes([buf[6], buf[7]]);
    (buf[3] & 0x0f == 0 && answers > 0 && n >= 4).then(|| {
        buf[n - 4..n]
            .iter()
            .map(|b| b.to_string())
            .collect::<Vec<_>>()
            .join(".")
    })
}

/// The same job run straight through on the host: the rendered config from the job's
/// ConfigMap, 2 local ranks, its own checkpoint and output directories. The final
/// model's files, by name.
fn straight_run(w: &World, ns: &str, name: &str) -> Vec<(String, Vec<u8>)> {
    let cm = w.json(&["-n", ns, "get", "configmap", &format!("{name}-config")]);
    let dir = w.dir.join(format!("straight-{ns}"));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("config.yaml");
    std::fs::write(&cfg, cm["data"]["config.yaml"].as_str().unwrap()).unwrap();
    let mut cmd = std::process::Command::new(&w.janus);
    cmd.args(["train", "--config"])
        .arg(&cfg)
        .arg("--set")
        .arg(format!("checkpoint.dir={}", dir.join("ckpt").display()))
        .arg("--set")
        .arg(format!("output_dir={}", dir.join("out").display()))
        .env("JANUS_NPROC_PER_NODE", "2")
        .env("OMP_NUM_THREADS", "1");
    for (k, v) in w.s3_env() {
        cmd.env(k, v);
    }
    fixture::run(&mut cmd, "the straight 2-rank run");
    read_weights(&dir.join("out"))
}

fn read_weights(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".safetensors"))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no safetensors in {}", dir.display());
    files
}

/// The 2-worker job of [`job_yaml`] with `spec.fabricCheck` set to `check`.
fn fabric_job_yaml(w: &World, ns: &str, name: &str, check: &str) -> String {
    let yaml = job_yaml(w, ns, name, &w.s3_url("data/sft.jsonl"));
    let policy = "  runPolicy: {backoffLimit: 2}\n";
    assert!(yaml.contains(policy));
    yaml.replace(policy, &format!("{policy}  fabricCheck: {check}\n"))
}

#[test]
fn the_fabric_check_puts_the_gangs_bus_bandwidth_in_status_and_an_impossible_threshold_fails_the_job(
) {
    let w = World::get();
    let (ok_ns, fail_ns, name) = ("e2e-fabric", "e2e-fabric-fail", "sft");
    // Both at once: the node has the room, and the test takes the time of one.
    w.kubectl_apply(&fabric_job_yaml(
        w,
        ok_ns,
        name,
        "{minBusBandwidthGBps: 0.0001, sizeBytes: 4194304}",
    ));
    w.kubectl_apply(&fabric_job_yaml(
        w,
        fail_ns,
        name,
        "{minBusBandwidthGBps: 1000000, sizeBytes: 4194304}",
    ));

    // The passing gang: its figure in status.fabric, FabricCheck True, and training on.
    let j = wait_until("status.fabric", Duration::from_secs(300), || {
        let j = job(w, ok_ns, name);
        assert_ne!(phase(&j), "Failed", "{}", j["status"]);
        j["status"]["fabric"]["busBandwidthGBps"]
            .as_f64()
            .is_some()
            .then_some(j)
    });
    let f = &j["status"]["fabric"];
    let gbps = f["busBandwidthGBps"].as_f64().unwrap();
    assert!(gbps > 0.0, "{f}");
    assert_eq!(f["ranks"], 2, "{f}");
    assert_eq!(f["backend"], "ring", "{f}");
    assert_eq!(f["sizeBytes"], 4194304, "{f}");
    // 2 ranks: bus bandwidth = algorithm bandwidth x 2(2-1)/2.
    let algbw = f["algorithmBandwidthGBps"].as_f64().unwrap();
    assert!((gbps - algbw).abs() <= 1e-9 * gbps, "{f}");
    let c = condition(&j, "FabricCheck").unwrap_or_else(|| panic!("{}", j["status"]));
    assert_eq!(c["reason"], "FabricCheckPassed", "{c}");
    assert!(
        c["message"].as_str().unwrap().contains("GB/s over 2 ranks"),
        "{c}"
    );
    let log0 = pod_logs(w, ok_ns, &format!("{name}-worker-0"));
    assert!(log0.contains("fabric check"), "{log0}");
    eprintln!("fabric check on the real node, 2 CPU ranks in pods, 4 MiB: busbw {gbps:.3} GB/s");
    wait_until("a step after the check", Duration::from_secs(120), || {
        get_jtj_columns(w, ok_ns, name).filter(|(s, _)| *s > 0)
    });
    w.kubectl(&["delete", "namespace", ok_ns, "--wait=false"]);

    // The impossible threshold: Failed at once, FabricCheckFailed naming both figures.
    let j = wait_phase(w, fail_ns, name, "Failed", Duration::from_secs(300));
    let failed = condition(&j, "Failed").expect("a Failed condition");
    assert_eq!(failed["reason"], "FabricCheckFailed", "{failed}");
    let msg = failed["message"].as_str().unwrap();
    assert!(
        msg.contains("exited with code 65 (the fabric check failed, not retried)")
            && msg.contains("GB/s over 2 ranks")
            && msg.contains("below the required 1000000 GB/s"),
        "{msg}"
    );
    assert_eq!(j["status"]["restarts"], 0, "not retried");
    // Rank 0 reported its figure before it exited.
    let j = wait_until(
        "status.fabric of the failed job",
        Duration::from_secs(60),
        || {
            let j = job(w, fail_ns, name);
            j["status"]["fabric"]["busBandwidthGBps"]
                .as_f64()
                .is_some()
                .then_some(j)
        },
    );
    let measured = j["status"]["fabric"]["busBandwidthGBps"].as_f64().unwrap();
    assert!(measured > 0.0 && measured < 1e6, "{}", j["status"]);
    w.kubectl(&["delete", "namespace", fail_ns, "--wait=false"]);
}

/// A stalled peer does not hang the job: with rank 1's trainer stopped (SIGSTOP, a
/// wedged process whose pod still runs), rank 0's collective gets no progress for
/// `spec.collectiveTimeoutSeconds`, it exits 75 naming the silent peer, and the
/// operator restarts the gang, which resumes and finishes.
#[test]
fn a_stalled_rank_ends_its_collective_at_the_deadline_and_the_gang_restarts() {
    let w = World::get();
    let (ns, name) = ("e2e-stall", "sft");
    const DEADLINE: u64 = 20;
    let yaml = job_yaml(w, ns, name, &w.s3_url("data/sft.jsonl"));
    let policy = "  runPolicy: {backoffLimit: 2}\n";
    assert!(yaml.contains(policy));
    w.kubectl_apply(&yaml.replace(
        policy,
        &format!("{policy}  collectiveTimeoutSeconds: {DEADLINE}\n"),
    ));
    wait_phase(w, ns, name, "Running", Duration::from_secs(180));
    let cm = w.json(&["-n", ns, "get", "configmap", &format!("{name}-config")]);
    let rendered = cm["data"]["config.yaml"].as_str().unwrap();
    assert!(
        rendered
            .lines()
            .any(|l| l.trim() == format!("timeout_seconds: {DEADLINE}")),
        "{rendered}"
    );
    wait_until("a checkpoint in S3", Duration::from_secs(180), || {
        latest_checkpoint_step(w, ns, name).filter(|s| *s >= CHECKPOINT_EVERY)
    });
    let total = job(w, ns, name)["status"]["progress"]["totalSteps"]
        .as_u64()
        .unwrap();
    let rank1 = format!("{name}-worker-1");
    let pids = w.trainer_pids(ns, &rank1);
    assert_eq!(pids.len(), 1, "one janus process in {rank1}: {pids:?}");
    fixture::run(
        std::process::Command::new("kill").args(["-STOP", &pids[0].to_string()]),
        "kill -STOP rank 1",
    );
    let stopped = Instant::now();
    let at = latest_checkpoint_step(w, ns, name).unwrap();
    assert!(at < total, "the job finished before the stall");

    // Rank 0 gives up at the deadline (plus its step in flight), not never.
    let j = wait_until(
        "restarts 1 after the stall",
        Duration::from_secs(DEADLINE + 120),
        || {
            let j = job(w, ns, name);
            (j["status"]["restarts"] == 1).then_some(j)
        },
    );
    let detected = stopped.elapsed().as_secs_f64();
    let restarting = condition(&j, "Restarting")
        .unwrap_or_else(|| panic!("no Restarting condition: {}", j["status"]));
    let msg = restarting["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!("{name}-worker-0"))
            && msg.contains("75")
            && msg.contains("stopped answering"),
        "{msg}"
    );
    assert!(
        detected >= DEADLINE as f64,
        "restarted {detected:.0}s after the stall, before the {DEADLINE}s deadline"
    );

    // The stopped process dies with its pod (SIGKILL after the grace period); the new
    // gang resumes and the job succeeds.
    let j = wait_phase(w, ns, name, "Succeeded", Duration::from_secs(600));
    assert_eq!(j["status"]["restarts"], 1, "{}", j["status"]);
    eprintln!(
        "stalled rank on the real node: the gang restarted {detected:.0}s after SIGSTOP \
         (deadline {DEADLINE}s), the job succeeded"
    );
    w.kubectl(&["delete", "namespace", ns, "--wait=false"]);
}
