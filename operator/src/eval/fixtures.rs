//! Scenario tests of the exact requests one reconcile of an evaluation makes, on the
//! layer's scripted API server ([`crate::controller::fixtures`]): each test asserts the
//! method, path and body of each request, in order; Events apart.

use std::collections::BTreeMap;

use janus_crds::eval::{EvalPhase, JudgeStatus, PodPhase, ShardStatus};
use janus_crds::{JanusEvalJob, JanusEvalJobStatus};
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::controller::Action;
use serde_json::json;

use super::controller::EvalCaches;
use crate::controller::fixtures::{self, ready_store, APPLY, CREATE};
use crate::eval::config_render::tests::representative_job;

const NS: &str = "research";
const JOB: &str = "janus-7b-orpo-bench";
const JOB_PATH: &str =
    "/apis/janus.dev/v1alpha1/namespaces/research/janusevaljobs/janus-7b-orpo-bench";

/// A scenario: the job, its cached pods, the objects the API server holds (its
/// Secrets among them).
struct Scenario(fixtures::Scenario<JanusEvalJob>);

impl Scenario {
    fn new(job: JanusEvalJob) -> Self {
        let sc = fixtures::Scenario::new(job, JOB_PATH);
        for (name, key) in [
            ("s3-credentials", "AWS_ACCESS_KEY_ID"),
            ("openai", "api-key"),
        ] {
            sc.server.insert(
                format!("/api/v1/namespaces/{NS}/secrets/{name}"),
                json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NS},
                       "data": {key: "eA=="}}),
            );
        }
        Scenario(sc)
    }

    fn with_pod(self, pod: Pod) -> Self {
        Scenario(self.0.with_pod(pod))
    }

    fn without(self, path: &str) -> Self {
        Scenario(self.0.without(path))
    }

    fn server(&self) -> &fixtures::ApiServer {
        &self.0.server
    }

    async fn try_reconcile(&self) -> crate::error::Result<Action> {
        let own = EvalCaches {
            training_jobs: ready_store(vec![]),
            eval_jobs: ready_store(vec![self.0.job.clone()]),
        };
        self.0.reconcile_with(own).await
    }

    async fn reconcile(&self) -> Action {
        self.try_reconcile().await.expect("reconcile succeeds")
    }
}

fn job_with(status: Option<JanusEvalJobStatus>) -> JanusEvalJob {
    let mut job = representative_job();
    job.status = status;
    job
}

/// A pod of the job as the operator made it, in `phase`.
fn pod(slot: super::stage::Slot, attempt: i32, phase: &str, exit: Option<i32>) -> Pod {
    let job = representative_job();
    let mut p = super::children::slot_pod(&job, slot, attempt).unwrap();
    let container = p.spec.as_ref().unwrap().containers[0].name.clone();
    p.status = Some(
        serde_json::from_value(json!({
            "phase": phase,
            "containerStatuses": [{"name": container, "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                "state": match exit {
                    Some(code) => json!({"terminated": {"exitCode": code, "message": "boom"}}),
                    None => json!({"running": {}}),
                }}]
        }))
        .unwrap(),
    );
    p
}

fn generating(shard_phase: PodPhase) -> JanusEvalJobStatus {
    let (job, now) = (
        representative_job(),
        "2026-01-01T12:00:00Z".parse().unwrap(),
    );
    // The status the first reconcile wrote, then the shards in `shard_phase`.
    let g = super::gates::model(&job, None);
    let gates = super::gates::Gates {
        model: g.0,
        baseline: super::stage::Gate::ready("BaselineSucceeded", ""),
        storage_secret: super::stage::Gate::ready("SecretsFound", ""),
        judge_secret: super::stage::Gate::ready("SecretsFound", ""),
        resolved: g.1,
    };
    let d = super::stage::Decision::Step(super::stage::Progress {
        phase: EvalPhase::Pending,
        done: vec![],
        restart: vec![],
        delete: vec![],
        create: (0..4).map(super::stage::Slot::Generate).collect(),
        requeue_after: None,
    });
    let (mut s, _) = super::status::next_status(&job, &gates, &d, &[], &[], now);
    s.phase = Some(EvalPhase::Generating);
    s.shards = (0..4)
        .map(|i| ShardStatus {
            index: i,
            phase: shard_phase,
            ..Default::default()
        })
        .collect();
    s
}

#[tokio::test]
async fn a_new_job_reads_its_secrets_applies_config_and_identity_writes_status_then_creates_the_shards(
) {
    let sc = Scenario::new(job_with(None));
    sc.reconcile().await;
    let reqs = sc.server().requests();
    let ns = format!("/api/v1/namespaces/{NS}");
    assert_eq!(
        sc.server().lines(),
        vec![
            format!("GET {JOB_PATH}"),
            format!("GET {ns}/secrets/s3-credentials"),
            format!("GET {ns}/secrets/openai"),
            format!("POST {ns}/serviceaccounts{CREATE}"),
            format!("POST {ns}/configmaps{CREATE}"),
            format!("PATCH {JOB_PATH}/status{APPLY}"),
            format!("POST {ns}/pods?"),
            format!("POST {ns}/pods?"),
            format!("POST {ns}/pods?"),
            format!("POST {ns}/pods?"),
        ]
    );
    let cm = &reqs[4].body;
    assert!(cm["data"]["config.yaml"]
        .as_str()
        .unwrap()
        .contains("output_dir: s3://eval-results/research/janus-7b-orpo-bench"));
    let st = &reqs[5].body["status"];
    assert_eq!(st["phase"], "Pending");
    assert_eq!(st["modelUrl"], "s3://models/janus-7b-orpo");
    assert_eq!(st["shards"].as_array().unwrap().len(), 4);
    // Pods report through the operator with their projected token, no API token.
    assert_eq!(
        fixtures::created_pods(&reqs[6..]),
        fixtures::numbered(&format!("{JOB}-generate-"), 4)
    );
    assert_eq!(
        sc.server().events(),
        vec![
            ("JobCreated".to_string(), "Normal".to_string()),
            ("ModelUrl".into(), "Normal".into()),
            ("SecretsFound".into(), "Normal".into()),
        ]
    );
}

#[tokio::test]
async fn a_second_look_at_an_unchanged_job_makes_no_request() {
    let mut sc = Scenario::new(job_with(Some(generating(PodPhase::Running))));
    for i in 0..4 {
        sc = sc.with_pod(pod(super::stage::Slot::Generate(i), 0, "Running", None));
    }
    let action = sc.reconcile().await;
    assert!(
        sc.server().requests().is_empty(),
        "{:?}",
        sc.server().lines()
    );
    assert!(sc.server().events().is_empty());
    assert_eq!(action, Action::requeue(std::time::Duration::from_secs(300)));
}

#[tokio::test]
async fn a_failed_shard_is_counted_on_a_fresh_list_then_deleted_alone() {
    let mut sc = Scenario::new(job_with(Some(generating(PodPhase::Running))));
    for i in 0..4 {
        let (phase, exit) = if i == 1 {
            ("Failed", Some(75))
        } else {
            ("Running", None)
        };
        sc = sc.with_pod(pod(super::stage::Slot::Generate(i), 0, phase, exit));
    }
    sc.reconcile().await;
    let reqs = sc.server().requests();
    let ns = format!("/api/v1/namespaces/{NS}");
    assert_eq!(
        sc.server().lines(),
        vec![
            format!("GET {JOB_PATH}"),
            format!("GET {ns}/secrets/s3-credentials"),
            format!("GET {ns}/secrets/openai"),
            format!("GET {ns}/pods?&labelSelector=janus.dev%2Feval-job%3D{JOB}"),
            format!("PATCH {JOB_PATH}/status{APPLY}"),
            format!("DELETE {ns}/pods/{JOB}-generate-1?"),
        ],
        "no create: the new pod reuses the name once the old one is gone"
    );
    let st = &reqs[4].body["status"];
    assert_eq!(st["restarts"], 1);
    assert_eq!(st["shards"][1]["attempt"], 1);
    assert_eq!(st["shards"][1]["phase"], "Failed");
    assert_eq!(st["shards"][0]["attempt"], 0);
    assert_eq!(
        sc.server().events(),
        vec![("PodFailed".to_string(), "Warning".to_string())]
    );
}

#[tokio::test]
async fn a_missing_judge_secret_is_a_condition_and_a_warning_and_looks_again_soon() {
    let mut sc = Scenario::new(job_with(Some(generating(PodPhase::Succeeded))))
        .without(&format!("/api/v1/namespaces/{NS}/secrets/openai"));
    for i in 0..4 {
        sc = sc.with_pod(pod(
            super::stage::Slot::Generate(i),
            0,
            "Succeeded",
            Some(0),
        ));
    }
    let action = sc.reconcile().await;
    let reqs = sc.server().requests();
    assert!(
        !reqs.iter().any(|r| r.method == "POST"),
        "no judge pod without its key: {:?}",
        sc.server().lines()
    );
    let st = &reqs.last().unwrap().body["status"];
    assert_eq!(st["phase"], "Judging");
    let conds = st["conditions"].as_array().unwrap();
    let c = conds.iter().find(|c| c["type"] == "SecretsReady").unwrap();
    assert_eq!(c["status"], "False");
    assert_eq!(c["reason"], "SecretNotFound");
    assert!(c["message"].as_str().unwrap().contains("openai"));
    assert!(sc
        .server()
        .events()
        .contains(&("SecretNotFound".to_string(), "Warning".to_string())));
    assert_eq!(
        action,
        Action::requeue(super::stage::SECRET_RECHECK + std::time::Duration::from_millis(100))
    );
}

#[tokio::test]
async fn the_judge_pod_exiting_zero_mirrors_its_scores_and_succeeds() {
    let mut status = generating(PodPhase::Succeeded);
    status.phase = Some(EvalPhase::Judging);
    status.judge = Some(JudgeStatus::default());
    let mut judge = pod(super::stage::Slot::Judge, 0, "Succeeded", Some(0));
    judge.metadata.annotations = Some(BTreeMap::from([(
        "janus.dev/eval-progress".to_string(),
        json!({"stage": "score", "itemsDone": 921, "itemsTotal": 921, "callsDone": 2763, "callsTotal": 2763,
               "parseFailures": 4, "updatedAt": "2026-01-01T12:00:00Z",
               "scores": {"mean": 3.91, "std": 0.02, "perDimension": {"style": 4.1},
                          "versusBaseline": {"win": 0.55, "tie": 0.2, "lose": 0.25, "winPlusTie": 0.75}}})
        .to_string(),
    )]));
    let sc = Scenario::new(job_with(Some(status))).with_pod(judge);
    sc.reconcile().await;
    let reqs = sc.server().requests();
    assert_eq!(
        sc.server().lines(),
        vec![
            format!("GET {JOB_PATH}"),
            format!("GET /api/v1/namespaces/{NS}/secrets/s3-credentials"),
            format!("GET /api/v1/namespaces/{NS}/secrets/openai"),
            format!("PATCH {JOB_PATH}/status{APPLY}"),
        ],
        "cleanPodPolicy Running keeps finished pods"
    );
    let st = &reqs[3].body["status"];
    assert_eq!(st["phase"], "Succeeded");
    assert_eq!(st["scores"]["mean"], 3.91);
    assert_eq!(st["scores"]["versusBaseline"]["winPlusTie"], 0.75);
    assert_eq!(st["progress"]["callsJudged"], 2763);
    assert_eq!(st["progress"]["judgeFailures"], 4);
    assert!(sc
        .server()
        .events()
        .contains(&("ScoresReported".to_string(), "Normal".to_string())));
}

#[tokio::test]
async fn a_job_whose_training_job_does_not_exist_writes_the_condition_and_creates_nothing() {
    let mut job = job_with(None);
    job.spec.model.url = None;
    job.spec.model.training_job = Some("janus-7b-orpo".into());
    let sc = Scenario::new(job);
    let action = sc.reconcile().await;
    let reqs = sc.server().requests();
    assert_eq!(
        sc.server().lines(),
        vec![
            format!("GET {JOB_PATH}"),
            format!("GET /api/v1/namespaces/{NS}/secrets/s3-credentials"),
            format!("GET /api/v1/namespaces/{NS}/secrets/openai"),
            format!("PATCH {JOB_PATH}/status{APPLY}"),
        ],
        "no config, no RBAC, no pods before the model exists"
    );
    let st = &reqs[3].body["status"];
    assert_eq!(st["phase"], "Pending");
    assert!(st.get("modelUrl").is_none() && st.get("startTime").is_none());
    let c = st["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "ModelReady")
        .unwrap()
        .clone();
    assert_eq!(
        (c["status"].as_str(), c["reason"].as_str()),
        (Some("False"), Some("TrainingJobNotFound"))
    );
    assert!(sc
        .server()
        .events()
        .contains(&("TrainingJobNotFound".to_string(), "Warning".to_string())));
    // The training job's watch brings the next reconcile: no polling.
    assert_eq!(action, Action::requeue(std::time::Duration::from_secs(300)));
}

#[tokio::test]
async fn a_finished_job_past_its_ttl_is_deleted() {
    let mut status = generating(PodPhase::Succeeded);
    status.phase = Some(EvalPhase::Succeeded);
    status.completion_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        "2026-01-01T00:00:00Z".parse().unwrap(),
    ));
    let mut job = job_with(Some(status));
    job.spec.run_policy.ttl_seconds_after_finished = Some(60);
    let sc = Scenario::new(job);
    let action = sc.reconcile().await;
    let reqs = sc.server().requests();
    assert_eq!(
        sc.server().lines(),
        vec![format!("GET {JOB_PATH}"), format!("DELETE {JOB_PATH}?")],
        "no Secret read for a finished job"
    );
    assert_eq!(reqs[1].body["propagationPolicy"], "Background");
    // This evaluation, not one created since under its name.
    assert_eq!(
        reqs[1].body["preconditions"]["uid"],
        "7e1c2d7e-0000-4000-8000-000000000002"
    );
    assert_eq!(action, Action::await_change());
}

#[tokio::test]
async fn a_refused_create_is_running_false_quoting_the_api_server_with_one_warning() {
    let sc = Scenario::new(job_with(None));
    let ns = format!("/api/v1/namespaces/{NS}");
    let quota = "pods \"janus-7b-orpo-bench-generate-0\" is forbidden: exceeded quota: no-pods";
    sc.server()
        .refuse("POST", &format!("{ns}/pods"), 403, quota);
    let err = sc
        .try_reconcile()
        .await
        .expect_err("the create fails the reconcile (retried with the backoff)");
    assert!(err.to_string().contains("exceeded quota"), "{err}");
    let mut expected = vec![
        format!("GET {JOB_PATH}"),
        format!("GET {ns}/secrets/s3-credentials"),
        format!("GET {ns}/secrets/openai"),
        format!("POST {ns}/serviceaccounts{CREATE}"),
        format!("POST {ns}/configmaps{CREATE}"),
        format!("PATCH {JOB_PATH}/status{APPLY}"),
    ];
    expected.extend(vec![format!("POST {ns}/pods?"); 4]);
    expected.push(format!("PATCH {JOB_PATH}/status{APPLY}"));
    assert_eq!(sc.server().lines(), expected);
    assert!(
        sc.server()
            .requests()
            .last()
            .unwrap()
            .path
            .contains("/status"),
        "the status comes last"
    );
    let (status, why, msg) = sc.server().last_condition("Running");
    assert_eq!((status.as_str(), why.as_str()), ("False", "FailedCreate"));
    assert!(
        msg.starts_with(&format!("creating pod {JOB}-generate-")) && msg.contains("exceeded quota"),
        "{msg}"
    );
    assert!(sc
        .server()
        .events()
        .contains(&("FailedCreate".to_string(), "Warning".to_string())));
}
