//! The Helm chart, rendered by a real `helm` (built from helm.sh/helm by
//! tests/controlplane/build-node.sh): `helm lint --strict`, `helm template` against
//! golden files, the optional monitors, and the values schema. Installing it into a
//! cluster with a real node is tests/e2e.
//!
//! Regenerate the golden files after an intended change with
//! `JANUS_UPDATE_GOLDEN=1 cargo test -p janus-operator --test chart`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn repo() -> PathBuf {
    Path::new(
        &std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into()),
    )
    .join("..")
    .canonicalize()
    .unwrap()
}

fn helm_binary() -> &'static PathBuf {
    static HELM: OnceLock<PathBuf> = OnceLock::new();
    HELM.get_or_init(|| {
        if let Some(h) = std::env::var_os("JANUS_HELM") {
            return PathBuf::from(h);
        }
        let out = Command::new(repo().join("tests/controlplane/build-node.sh"))
            .output()
            .expect("run build-node.sh");
        assert!(
            out.status.success(),
            "build-node.sh failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let exports = String::from_utf8(out.stdout).unwrap();
        let line = exports
            .lines()
            .find_map(|l| l.strip_prefix("export JANUS_HELM="))
            .expect("build-node.sh prints JANUS_HELM");
        PathBuf::from(line.trim_matches('\''))
    })
}

/// Run helm with a private home (no repositories, no state of the machine's user).
fn helm(args: &[&str]) -> (bool, String, String) {
    let home = tempfile_dir();
    let out = Command::new(helm_binary())
        .args(args)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .env_remove("KUBECONFIG")
        .output()
        .expect("run helm");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn tempfile_dir() -> PathBuf {
    let base = option_env!("CARGO_TARGET_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let d = base.join(format!("helm-home-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn chart() -> String {
    repo().join("charts/janus-operator").display().to_string()
}

fn template(extra: &[&str]) -> String {
    let c = chart();
    let mut args = vec![
        "template",
        "janus-operator",
        c.as_str(),
        "--namespace",
        "janus-system",
    ];
    args.extend(extra);
    let (ok, out, err) = helm(&args);
    assert!(ok, "helm template {extra:?} failed:\n{err}");
    out
}

fn golden(name: &str, rendered: &str) {
    let path = repo().join("operator/tests/fixtures").join(name);
    if std::env::var_os("JANUS_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, rendered).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (JANUS_UPDATE_GOLDEN=1 writes it)", path.display()));
    if want != rendered {
        let first = want
            .lines()
            .zip(rendered.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(want.lines().count().min(rendered.lines().count()));
        panic!(
            "helm template output differs from {} at line {}:\n  golden:   {:?}\n  rendered: {:?}\n\
             (JANUS_UPDATE_GOLDEN=1 rewrites it after an intended change)",
            path.display(),
            first + 1,
            want.lines().nth(first),
            rendered.lines().nth(first)
        );
    }
}

fn kinds(rendered: &str) -> Vec<String> {
    rendered
        .lines()
        .filter_map(|l| l.strip_prefix("kind: "))
        .map(str::to_string)
        .collect()
}

#[test]
fn helm_lint_strict_passes() {
    let (ok, out, err) = helm(&["lint", "--strict", &chart()]);
    assert!(ok, "helm lint --strict:\n{out}\n{err}");
    assert!(
        out.contains("1 chart(s) linted, 0 chart(s) failed"),
        "{out}"
    );
}

#[test]
fn default_render_matches_its_golden_file() {
    let r = template(&[]);
    golden("chart-default.yaml", &r);
    let k = kinds(&r);
    for want in [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
    ] {
        assert!(k.iter().any(|x| x == want), "no {want} in {k:?}");
    }
    // The operator's port admits only the jobs' pods (any namespace when it watches all).
    let np = &r[r.find("kind: NetworkPolicy").unwrap()..];
    let np = &np[..np.find("\n---").unwrap_or(np.len())];
    for want in [
        "policyTypes: [Ingress]",
        "- {port: http, protocol: TCP}",
        "- {key: janus.dev/job, operator: Exists}",
        "- {key: janus.dev/eval-job, operator: Exists}",
        "namespaceSelector:\n        {}",
    ] {
        assert!(np.contains(want), "{want:?} not in\n{np}");
    }
    // Monitors only when asked for (their CRDs may not exist in the cluster).
    assert!(
        !k.iter().any(|x| x == "ServiceMonitor" || x == "PodMonitor"),
        "{k:?}"
    );
}

#[test]
fn monitors_render_when_enabled_with_their_labels() {
    let r = template(&[
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set",
        "metrics.serviceMonitor.labels.release=kube-prometheus",
        "--set",
        "metrics.podMonitor.enabled=true",
        "--set",
        "metrics.podMonitor.labels.team=ml",
        "--set",
        "imagePullSecrets={regcred}",
        "--set",
        "watchNamespace=research",
    ]);
    golden("chart-monitoring.yaml", &r);
    let k = kinds(&r);
    assert!(
        k.iter().any(|x| x == "ServiceMonitor") && k.iter().any(|x| x == "PodMonitor"),
        "{k:?}"
    );
    assert!(r.contains("release: kube-prometheus"), "{r}");
    assert!(r.contains("team: ml"), "{r}");
    assert!(r.contains("- name: \"regcred\""), "{r}");
    assert!(r.contains("matchNames: [research]"), "{r}");
    assert!(r.contains("port: metrics"), "{r}");
    // The target's namespace and pod, never the trainer's own labels of those names.
    assert!(!r.contains("honorLabels:"), "{r}");
}

#[test]
fn the_network_policy_admits_the_watched_namespace_and_the_named_scrapers() {
    let r = template(&[
        "--set",
        "watchNamespace=research",
        "--set-json",
        r#"networkPolicy.metricsFrom=[{"namespaceSelector":{"matchLabels":{"kubernetes.io/metadata.name":"monitoring"}}}]"#,
    ]);
    let np = &r[r.find("kind: NetworkPolicy").expect("a NetworkPolicy")..];
    assert!(
        np.contains("matchLabels: {kubernetes.io/metadata.name: research}"),
        "{np}"
    );
    assert!(
        np.contains("kubernetes.io/metadata.name: monitoring"),
        "{np}"
    );
    let off = template(&["--set", "networkPolicy.enabled=false"]);
    assert!(!kinds(&off).iter().any(|k| k == "NetworkPolicy"));
}

#[test]
fn a_single_replica_has_no_disruption_budget() {
    let k = kinds(&template(&["--set", "replicas=1"]));
    assert!(!k.iter().any(|x| x == "PodDisruptionBudget"), "{k:?}");
}

#[test]
fn the_values_schema_rejects_bad_values_naming_the_key() {
    let c = chart();
    for (set, want) in [
        ("replicas=two", "/replicas"),
        ("replicass=2", "replicass"),
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
        (
            "metrics.serviceMonitor.interval=soon",
            "/metrics/serviceMonitor/interval",
        ),
        ("stallSeconds=1", "/stallSeconds"),
    ] {
        let (ok, _, err) = helm(&["template", "x", c.as_str(), "--set", set]);
        assert!(!ok, "--set {set} was accepted");
        assert!(
            err.contains(want),
            "--set {set}: the error does not name {want}:\n{err}"
        );
    }
}

#[test]
fn the_rendered_liveness_probe_is_the_wedge_detecting_healthz() {
    let r = template(&["--set", "stallSeconds=45"]);
    assert!(r.contains("- --stall-seconds=45"), "{r}");
    assert!(r.contains("path: /healthz"), "{r}");
}

// ---- A well-known manifest scanner on what the operator creates and on the chart ----

/// kube-score (tests/controlplane/build-kube-score.sh builds it once, at the pinned
/// release, and caches it), or `$JANUS_KUBE_SCORE`.
fn kube_score_binary() -> &'static PathBuf {
    static KS: OnceLock<PathBuf> = OnceLock::new();
    KS.get_or_init(|| {
        if let Some(k) = std::env::var_os("JANUS_KUBE_SCORE") {
            return PathBuf::from(k);
        }
        let script = repo().join("tests/controlplane/build-kube-score.sh");
        let out = Command::new(&script)
            .stderr(std::process::Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
        assert!(out.status.success(), "{} failed", script.display());
        let dir = String::from_utf8(out.stdout).unwrap();
        PathBuf::from(dir.lines().last().unwrap().trim()).join("bin/kube-score")
    })
}

/// What kube-score finds that a batch pod of the operator's is allowed to show, each
/// with why (matched against its `ci` output: the check's words and the object).
const WORKLOAD_EXCEPTIONS: &[(&str, &str)] = &[
    // Egress is left open on purpose: the pods reach object storage, the model and
    // judge endpoints and the operator's report port, whose addresses are the user's.
    (
        "does not have a matching egress NetworkPolicy",
        "egress to storage and endpoints",
    ),
    // The cluster's scheduler places a gang; a probe would restart a rank mid-step,
    // and a batch pod that is not ready is not a Service backend either.
    (
        "Container is missing a readinessProbe",
        "a batch pod serves no traffic",
    ),
    // The image's tag is the user's (the examples pin one); pulling on every start would
    // make every gang restart wait for the registry.
    (
        "ImagePullPolicy is not set to Always",
        "a pinned tag needs no pull per start",
    ),
    // CPU, memory and ephemeral storage are the job's `resources` and
    // `scratchSizeLimit` (the scanned job sets them), GPUs its `gpusPerWorker`.
];

/// The chart's own findings on the operator's Deployment, each with why.
const CHART_EXCEPTIONS: &[(&str, &str)] = &[
    // A CPU limit throttles the controller under a burst of events; it requests CPU.
    ("CPU limit is not set", "CPU is requested, not limited"),
    (
        "ImagePullPolicy is not set to Always",
        "image.pullPolicy is the user's",
    ),
    // The operator reaches the API server, whose address differs per cluster.
    (
        "does not have a matching egress NetworkPolicy",
        "egress to the API server",
    ),
    // Two replicas behind leader election: losing a node costs one lease period, and
    // `affinity` is there for a cluster that wants them apart.
    (
        "Deployment does not have a host podAntiAffinity set",
        "leader election",
    ),
];

/// kube-score's findings (WARNING and CRITICAL lines of its `ci` output) on `yaml` that
/// no exception explains.
fn kube_score(yaml: &str, exceptions: &[(&str, &str)]) -> Vec<String> {
    let dir = tempfile_dir();
    let file = dir.join(format!("scan-{}.yaml", yaml.len()));
    std::fs::write(&file, yaml).unwrap();
    let out = Command::new(kube_score_binary())
        .args([
            "score",
            "--output-format",
            "ci",
            "--kubernetes-version",
            "v1.34",
        ])
        .arg(&file)
        .output()
        .expect("run kube-score");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.lines().any(|l| l.starts_with("[OK]")),
        "kube-score ran no check on {}:\n{text}\n{}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .filter(|l| l.starts_with("[WARNING]") || l.starts_with("[CRITICAL]"))
        .filter(|l| !exceptions.iter().any(|(words, _)| l.contains(words)))
        .map(str::to_string)
        .collect()
}

fn yaml_docs(objects: &[serde_json::Value]) -> String {
    objects
        .iter()
        .map(|o| serde_yaml::to_string(o).unwrap())
        .collect::<Vec<_>>()
        .join("---\n")
}

fn example<T>(file: &str) -> T
where
    T: serde::de::DeserializeOwned + kube::Resource,
    T::DynamicType: Default,
{
    use serde::Deserialize;
    let text = std::fs::read_to_string(repo().join("manifests/examples").join(file)).unwrap();
    // The file may hold other objects too (a Secret): take the one of kind T.
    let mut obj: T = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_yaml::Value::deserialize(d).unwrap())
        .find(|v| v["kind"].as_str() == Some(T::kind(&Default::default()).as_ref()))
        .map(|v| serde_yaml::from_value(v).unwrap())
        .unwrap_or_else(|| panic!("{file}: no {}", T::kind(&Default::default())));
    let meta = obj.meta_mut();
    meta.namespace = Some("research".into());
    meta.uid = Some("4f1c2d7e-0000-4000-8000-000000000001".into());
    obj
}

#[test]
fn kube_score_finds_nothing_that_applies_to_a_worker_pod_or_an_evaluation_pod() {
    use janus_operator::{eval, training};
    let mut job: janus_crds::JanusTrainingJob = example("sft-kwok.yaml");
    // As a platform would run it: its resources, scratch size and NetworkPolicy set.
    job.spec.workers.resources = Some(
        serde_json::from_value(serde_json::json!({
            "requests": {"cpu": "16", "memory": "200Gi", "ephemeral-storage": "100Gi"},
            "limits": {"cpu": "16", "memory": "200Gi", "ephemeral-storage": "100Gi"}
        }))
        .unwrap(),
    );
    job.spec.workers.scratch_size_limit = Some(
        k8s_openapi::apimachinery::pkg::api::resource::Quantity("100Gi".into()),
    );
    job.spec.network_policy = Some(serde_json::from_value(serde_json::json!({})).unwrap());
    let pod = training::children::worker_pod(&job, 0, 0).unwrap();
    let np = training::children::network_policy(&job).unwrap().unwrap();
    let found = kube_score(
        &yaml_docs(&[
            serde_json::to_value(&pod).unwrap(),
            serde_json::to_value(&np).unwrap(),
        ]),
        WORKLOAD_EXCEPTIONS,
    );
    assert!(
        found.is_empty(),
        "kube-score on a worker pod:\n{}",
        found.join("\n")
    );

    let mut ej: janus_crds::JanusEvalJob = example("eval-kwok.yaml");
    let r: k8s_openapi::api::core::v1::ResourceRequirements =
        serde_json::from_value(serde_json::json!({
            "requests": {"cpu": "4", "memory": "32Gi", "ephemeral-storage": "50Gi"},
            "limits": {"cpu": "4", "memory": "32Gi", "ephemeral-storage": "50Gi"}
        }))
        .unwrap();
    ej.spec.worker.resources = Some(r.clone());
    ej.spec.judge.resources = Some(r);
    let pods = [
        eval::children::generation_pod(&ej, 0, 0).unwrap(),
        eval::children::judge_pod(&ej, 0).unwrap(),
    ];
    // Evaluation pods get no NetworkPolicy of their own: the chart's namespace policy
    // is the user's to add; this finding is the one expected beyond the exceptions.
    let mut exceptions = WORKLOAD_EXCEPTIONS.to_vec();
    exceptions.push((
        "The pod does not have a matching NetworkPolicy",
        "no eval NetworkPolicy",
    ));
    let objs: Vec<_> = pods
        .iter()
        .map(|p| serde_json::to_value(p).unwrap())
        .collect();
    let found = kube_score(&yaml_docs(&objs), &exceptions);
    assert!(
        found.is_empty(),
        "kube-score on evaluation pods:\n{}",
        found.join("\n")
    );
}

#[test]
fn kube_score_finds_nothing_on_the_chart_beyond_its_listed_exceptions() {
    let found = kube_score(&template(&[]), CHART_EXCEPTIONS);
    assert!(
        found.is_empty(),
        "kube-score on the chart:\n{}",
        found.join("\n")
    );
}
