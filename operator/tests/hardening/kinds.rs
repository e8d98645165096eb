//! The two kinds of job as the stuck-state tests see them: one test body, run for a
//! training job's workers and for an evaluation's generation pods, reads and writes
//! both through [`Kind`] (the controller layer promises both the same condition
//! reasons and Events, so the tests promise it too).

use std::time::Duration;

use janus_crds::{JanusEvalJob, JanusTrainingJob};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use kube::{Client, ResourceExt};
use serde_json::{json, Value};

use crate::support::{job_spec, wait_for};

/// Test `$name` (an `async fn(Kind)`) for each kind: `$name::training` and
/// `$name::eval`.
macro_rules! for_each_kind {
    ($name:ident) => {
        mod $name {
            use crate::hardening::kinds::Kind;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn training() {
                super::$name(Kind::Training).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn eval() {
                super::$name(Kind::Eval).await
            }
        }
    };
}
pub(crate) use for_each_kind;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Training,
    Eval,
}

/// What a test asks of a job, in the fields both kinds have (a training job's workers,
/// an evaluation's generation shards).
#[derive(Clone, Debug, Default)]
pub struct Ask {
    pub replicas: i32,
    pub gpus: Option<i32>,
    pub backoff_limit: Option<i32>,
    pub scheduling_timeout_seconds: Option<i64>,
    pub unreachable_node_toleration_seconds: Option<i64>,
    pub ttl_seconds_after_finished: Option<i32>,
    /// Pods only on nodes labelled `<key>=<value>`, tolerating a `NoSchedule` taint of
    /// that key.
    pub pool: Option<(String, String)>,
}

impl Ask {
    pub fn pods(replicas: i32) -> Ask {
        Ask {
            replicas,
            ..Default::default()
        }
    }
}

impl Kind {
    /// The namespace of test `base` for this kind (training keeps the names its tests
    /// had before they ran for both kinds).
    pub fn ns(self, base: &str) -> String {
        match self {
            Kind::Training => base.to_string(),
            Kind::Eval => format!("eval-{base}"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Training => "JanusTrainingJob",
            Kind::Eval => "JanusEvalJob",
        }
    }

    fn resource(self) -> ApiResource {
        match self {
            Kind::Training => ApiResource::erase::<JanusTrainingJob>(&()),
            Kind::Eval => ApiResource::erase::<JanusEvalJob>(&()),
        }
    }

    pub fn api(self, c: &Client, ns: &str) -> Api<DynamicObject> {
        Api::namespaced_with(c.clone(), ns, &self.resource())
    }

    /// How the pods of this kind are named in the controller's words (`worker
    /// <pod>`, `pod <pod>`).
    pub fn noun(self) -> &'static str {
        match self {
            Kind::Training => "worker",
            Kind::Eval => "pod",
        }
    }

    /// The prefix of the names of `job`'s pods that `Ask::replicas` counts.
    pub fn pod_prefix(self, job: &str) -> String {
        match self {
            Kind::Training => format!("{job}-worker-"),
            Kind::Eval => format!("{job}-generate-"),
        }
    }

    pub fn pod_names(self, job: &str, n: i32) -> Vec<String> {
        (0..n)
            .map(|i| format!("{}{i}", self.pod_prefix(job)))
            .collect()
    }

    /// The container of those pods.
    pub fn container(self) -> &'static str {
        match self {
            Kind::Training => "trainer",
            Kind::Eval => "generate",
        }
    }

    /// The phase of a job whose pods run.
    pub fn running_phase(self) -> &'static str {
        match self {
            Kind::Training => "Running",
            Kind::Eval => "Generating",
        }
    }

    /// The spec of a job on the fake GPU nodes.
    pub fn spec(self, ask: &Ask) -> Value {
        let mut spec = match self {
            Kind::Training => serde_json::to_value(job_spec(ask.replicas)).unwrap(),
            Kind::Eval => json!({
                "model": {"url": "s3://models/janus-7b-orpo", "promptFormat": "chatml"},
                "benchmark": {"url": "s3://data/multifaceted-bench/test.jsonl"},
                "judge": {"endpoint": "http://judge.example:8000/v1", "model": "judge-model"},
                "output": {"url": "s3://eval-results"},
                "worker": {
                    "replicas": ask.replicas,
                    "image": "ghcr.io/janus/trainer:test",
                    "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}]
                }
            }),
        };
        let pods = match self {
            Kind::Training => "workers",
            Kind::Eval => "worker",
        };
        if let Some(g) = ask.gpus {
            spec[pods]["gpusPerWorker"] = json!(g);
        }
        if let Some((key, value)) = &ask.pool {
            spec[pods]["nodeSelector"] = json!({key: value});
            spec[pods]["tolerations"]
                .as_array_mut()
                .unwrap()
                .push(json!({"key": key, "operator": "Exists", "effect": "NoSchedule"}));
        }
        let policy = [
            ("backoffLimit", ask.backoff_limit.map(i64::from)),
            ("schedulingTimeoutSeconds", ask.scheduling_timeout_seconds),
            (
                "unreachableNodeTolerationSeconds",
                ask.unreachable_node_toleration_seconds,
            ),
            (
                "ttlSecondsAfterFinished",
                ask.ttl_seconds_after_finished.map(i64::from),
            ),
        ];
        for (field, v) in policy {
            if let Some(v) = v {
                spec["runPolicy"][field] = json!(v);
            }
        }
        spec
    }

    pub async fn create(self, c: &Client, ns: &str, name: &str, ask: &Ask) -> DynamicObject {
        let obj = json!({"apiVersion": "janus.dev/v1alpha1", "kind": self.name(),
                         "metadata": {"name": name, "namespace": ns}, "spec": self.spec(ask)});
        self.api(c, ns)
            .create(
                &PostParams::default(),
                &serde_json::from_value(obj).unwrap(),
            )
            .await
            .unwrap_or_else(|e| panic!("creating {} {ns}/{name}: {e}", self.name()))
    }

    pub async fn get(self, c: &Client, ns: &str, name: &str) -> Option<DynamicObject> {
        self.api(c, ns).get_opt(name).await.unwrap()
    }

    /// `status` of `job` (null when it has none or is gone).
    pub async fn status(self, c: &Client, ns: &str, job: &str) -> Value {
        self.get(c, ns, job)
            .await
            .map_or(Value::Null, |j| j.data["status"].clone())
    }

    pub async fn phase(self, c: &Client, ns: &str, job: &str) -> String {
        let s = self.status(c, ns, job).await;
        s["phase"].as_str().unwrap_or_default().to_string()
    }

    pub async fn condition(
        self,
        c: &Client,
        ns: &str,
        job: &str,
        type_: &str,
    ) -> Option<Condition> {
        let s = self.status(c, ns, job).await;
        let c = s["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == type_)?;
        Some(serde_json::from_value(c.clone()).unwrap())
    }

    pub async fn wait_phase(
        self,
        c: &Client,
        ns: &str,
        job: &str,
        want: &str,
        timeout: Duration,
    ) -> Value {
        wait_for(
            &format!("{} {ns}/{job} in phase {want}", self.name()),
            timeout,
            || async {
                let s = self.status(c, ns, job).await;
                (s["phase"] == want).then_some(s)
            },
        )
        .await
    }

    /// The attempt every pod has reached: a training gang's, the lowest of an
    /// evaluation's shards (it restarts one pod at a time).
    pub fn attempt(self, status: &Value) -> i64 {
        match self {
            Kind::Training => status["restarts"].as_i64().unwrap_or_default(),
            Kind::Eval => status["shards"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| s["attempt"].as_i64().unwrap_or_default())
                .min()
                .unwrap_or_default(),
        }
    }

    /// The restarts counted towards `backoffLimit`.
    pub fn counted_restarts(self, status: &Value) -> i64 {
        let field = match self {
            Kind::Training => "restartsCountedTowardsBackoff",
            Kind::Eval => "restarts",
        };
        status[field].as_i64().unwrap_or_default()
    }

    pub async fn pods(self, c: &Client, ns: &str, job: &str) -> Vec<Pod> {
        let label = match self {
            Kind::Training => "janus.dev/job",
            Kind::Eval => "janus.dev/eval-job",
        };
        let mut v = Api::<Pod>::namespaced(c.clone(), ns)
            .list(&ListParams::default().labels(&format!("{label}={job}")))
            .await
            .unwrap()
            .items;
        v.sort_by_key(|p| p.name_any());
        v
    }

    /// Until `n` pods of `job` of `attempt` exist and are Running; returns them.
    pub async fn wait_running(
        self,
        c: &Client,
        ns: &str,
        job: &str,
        n: usize,
        attempt: i32,
    ) -> Vec<Pod> {
        wait_for(
            &format!("{n} Running pods of {ns}/{job} attempt {attempt}"),
            Duration::from_secs(60),
            || async {
                let ps = self.pods(c, ns, job).await;
                let ok = ps.len() == n
                    && ps.iter().all(|p| {
                        p.metadata.deletion_timestamp.is_none()
                            && p.labels().get("janus.dev/attempt") == Some(&attempt.to_string())
                            && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                    });
                ok.then_some(ps)
            },
        )
        .await
    }

    /// The pod's container exits `code` (the pod is Failed, or Succeeded on 0), as the
    /// status subresource says it.
    pub async fn exit(self, c: &Client, ns: &str, pod: &str, code: i32) {
        let phase = if code == 0 { "Succeeded" } else { "Failed" };
        let reason = if code == 0 { "Completed" } else { "Error" };
        let patch = json!({"status": {
            "phase": phase,
            "conditions": [{"type": "Ready", "status": "False", "reason": "PodCompleted"},
                           {"type": "ContainersReady", "status": "False", "reason": "PodCompleted"}],
            "containerStatuses": [{"name": self.container(), "ready": false, "started": false,
                "state": {"running": null, "terminated": {"exitCode": code, "reason": reason,
                    "startedAt": "2026-01-01T00:00:00Z", "finishedAt": "2026-01-01T00:00:00Z"}}}]}});
        Api::<Pod>::namespaced(c.clone(), ns)
            .patch_status(pod, &PatchParams::default(), &Patch::Strategic(patch))
            .await
            .unwrap();
    }
}
