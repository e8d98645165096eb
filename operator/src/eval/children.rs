//! Pure builders of an evaluation's child objects: the ConfigMap with the eval config,
//! the ServiceAccount (the pods' identity when they report progress; it holds no
//! permission), the generation pods and the judge pod. Names are deterministic, so
//! creating an object twice is a harmless conflict.
//!
//! Names and labels differ from a training job's (`J-eval-settings`, `J-eval`,
//! `janus.dev/eval-job`), so a training job and an evaluation may share a name.

use std::collections::BTreeMap;

use janus_crds::{annotations, defaults, env, labels, JanusEvalJob};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, EnvVar, EnvVarSource, Pod, PodSpec, ResourceRequirements,
    SecretKeySelector, ServiceAccount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;

use super::gates::Resolved;
use super::stage::Slot;
use crate::controller::children::{self as layer, *};
pub use crate::controller::children::{CONFIG_KEY, GPU_RESOURCE};
use crate::controller::template::apply_template_override;
use crate::error::{Error, Result};
use crate::security;
/// Container of a generation pod (`janus eval generate`).
pub const GENERATE_CONTAINER: &str = "generate";
/// Init container of the judge pod (`janus eval judge`).
pub const JUDGE_CONTAINER: &str = "judge";
/// Container of the judge pod, after the judge (`janus eval score`).
pub const SCORE_CONTAINER: &str = "score";
/// Values of the `janus.dev/stage` label.
pub const STAGE_GENERATE: &str = "generate";
pub const STAGE_JUDGE: &str = "judge";

pub fn config_map_name(job: &str) -> String {
    format!("{job}-eval-settings")
}
/// ServiceAccount of the pods.
pub fn rbac_name(job: &str) -> String {
    format!("{job}-eval")
}
/// The evaluation whose pods' ServiceAccount this is ([`rbac_name`] backwards).
pub fn job_of_service_account(sa: &str) -> Option<&str> {
    sa.strip_suffix("-eval").filter(|j| !j.is_empty())
}
/// Whether `pod` is named as a generation or the judge pod of evaluation `job`.
pub fn is_pod_name(job: &str, pod: &str) -> bool {
    let Some(rest) = pod.strip_prefix(job).and_then(|r| r.strip_prefix('-')) else {
        return false;
    };
    let shard = rest.strip_prefix("generate-");
    rest == "judge"
        || shard.is_some_and(|i| {
            i.parse::<i32>()
                .is_ok_and(|i| i >= 0 && Slot::Generate(i).pod_name(job) == pod)
        })
}

/// Labels of every child: the job name (selector of the pod watch).
pub fn job_labels(job: &str) -> BTreeMap<String, String> {
    layer::job_labels::<JanusEvalJob>(job)
}

/// ConfigMap `J-eval-settings` with the rendered eval config.
pub fn config_map(job: &JanusEvalJob, resolved: &Resolved) -> Result<ConfigMap> {
    let rendered = super::config_render::render(job, resolved)?;
    layer::config_map(job, config_map_name(&job.name_any()), rendered)
}

pub fn service_account(job: &JanusEvalJob) -> Result<ServiceAccount> {
    layer::service_account(
        job,
        rbac_name(&job.name_any()),
        &job.spec.worker.image_pull_secrets,
    )
}

/// Environment of every container: the job, the attempt, the config, the pod itself.
fn common_env(job: &JanusEvalJob, attempt: i32) -> Vec<EnvVar> {
    let mut vars = vec![
        plain(env::JOB, job.name_any()),
        plain(env::ATTEMPT, attempt.to_string()),
        plain(env::CONFIG, defaults::CONFIG_PATH.to_string()),
        field(env::POD_NAME, "metadata.name"),
        field(env::POD_NAMESPACE, "metadata.namespace"),
    ];
    vars.extend(security::scratch_env());
    vars
}

/// A `janus eval <stage>` container reading the mounted config.
fn container(
    job: &JanusEvalJob,
    name: &str,
    stage: &str,
    env_vars: Vec<EnvVar>,
    resources: Option<ResourceRequirements>,
) -> Container {
    Container {
        name: name.into(),
        image: Some(job.spec.worker.image.clone()),
        image_pull_policy: job.spec.worker.image_pull_policy.clone(),
        command: Some(vec!["janus".into(), "eval".into(), stage.into()]),
        env: Some(env_vars),
        env_from: storage_env(job.spec.storage_secret_ref.as_ref()),
        resources,
        // The operator quotes the error `janus` printed last when the pod fails.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        volume_mounts: Some(vec![config_mount(), security::scratch_mount()]),
        security_context: Some(security::container_security_context()),
        ..Default::default()
    }
}

fn pod(
    job: &JanusEvalJob,
    slot: Slot,
    attempt: i32,
    init: Vec<Container>,
    main: Container,
) -> Result<Pod> {
    let name = job.name_any();
    let w = &job.spec.worker;
    let mut pod_labels = job_labels(&name);
    pod_labels.insert(labels::ATTEMPT.into(), attempt.to_string());
    let (stage, node_selector, affinity) = match slot {
        Slot::Generate(i) => {
            pod_labels.insert(labels::SHARD.into(), i.to_string());
            (STAGE_GENERATE, w.node_selector.clone(), w.affinity.clone())
        }
        Slot::Judge => (STAGE_JUDGE, job.spec.judge.node_selector.clone(), None),
    };
    pod_labels.insert(labels::STAGE.into(), stage.into());
    let spec = PodSpec {
        restart_policy: Some("Never".into()),
        service_account_name: Some(rbac_name(&name)),
        image_pull_secrets: pull_secrets(&w.image_pull_secrets),
        priority_class_name: w.priority_class_name.clone(),
        node_selector,
        affinity,
        tolerations: w.tolerations.clone(),
        init_containers: (!init.is_empty()).then_some(init),
        containers: vec![main],
        security_context: Some(security::pod_security_context()),
        volumes: Some(vec![
            config_volume(config_map_name(&name)),
            security::scratch_volume(None),
        ]),
        ..Default::default()
    };
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some(slot.pod_name(&name)),
            namespace: Some(namespace(job)?),
            labels: Some(pod_labels),
            owner_references: Some(vec![owner(job)?]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    };
    let mut pod = match &w.template {
        None => pod,
        Some(over) => apply_template_override(pod, &for_stage(over, stage))
            .map_err(|message| Error::TemplateOverride { job: name, message })?,
    };
    // After the override, which may not undo it.
    if let Some(spec) = pod.spec.as_mut() {
        security::report_identity(spec, None);
    }
    Ok(pod)
}

/// The template override as it applies to a pod of `stage`: one template serves every
/// pod of the job, so its entries for the other stage's containers (`generate` in a
/// judge pod, `judge` and `score` in a generation pod) are left out rather than added
/// as containers; any other name is a sidecar of every pod.
fn for_stage(over: &serde_json::Value, stage: &str) -> serde_json::Value {
    let others: &[&str] = if stage == STAGE_GENERATE {
        &[JUDGE_CONTAINER, SCORE_CONTAINER]
    } else {
        &[GENERATE_CONTAINER]
    };
    let mut over = over.clone();
    for list in ["containers", "initContainers"] {
        if let Some(serde_json::Value::Array(items)) = over.pointer_mut(&format!("/spec/{list}")) {
            items.retain(|c| {
                !c.get("name")
                    .and_then(serde_json::Value::as_str)
                    .is_some_and(|n| others.contains(&n))
            });
        }
    }
    over
}

/// Generation pod `J-generate-<shard>`: shard `shard` of `replicas`, `janus eval generate`.
pub fn generation_pod(job: &JanusEvalJob, shard: i32, attempt: i32) -> Result<Pod> {
    let w = &job.spec.worker;
    let mut env_vars = common_env(job, attempt);
    env_vars.extend([
        plain(env::NODE_RANK, shard.to_string()),
        plain(env::NNODES, w.replicas.to_string()),
        plain(env::NPROC_PER_NODE, w.gpus_per_worker.max(1).to_string()),
    ]);
    let resources = with_gpus(w.resources.clone(), w.gpus_per_worker);
    let main = container(job, GENERATE_CONTAINER, "generate", env_vars, resources);
    pod(job, Slot::Generate(shard), attempt, vec![], main)
}

/// The judge pod `J-judge`: `janus eval judge` (an init container: it must finish
/// first), then `janus eval score`. Only the judge gets the API key.
pub fn judge_pod(job: &JanusEvalJob, attempt: i32) -> Result<Pod> {
    let mut judge_env = common_env(job, attempt);
    if let Some(k) = &job.spec.judge.api_key_secret_ref {
        judge_env.push(EnvVar {
            name: env::JUDGE_API_KEY.into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: k.name.clone(),
                    key: k.key.clone(),
                    optional: Some(false),
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    let resources = job.spec.judge.resources.clone();
    let judge = container(job, JUDGE_CONTAINER, "judge", judge_env, resources.clone());
    let score = container(
        job,
        SCORE_CONTAINER,
        "score",
        common_env(job, attempt),
        resources,
    );
    pod(job, Slot::Judge, attempt, vec![judge], score)
}

/// The pod of `slot` at `attempt`.
pub fn slot_pod(job: &JanusEvalJob, slot: Slot, attempt: i32) -> Result<Pod> {
    match slot {
        Slot::Generate(i) => generation_pod(job, i, attempt),
        Slot::Judge => judge_pod(job, attempt),
    }
}

/// The eval progress annotation value of a pod, if any.
pub fn progress_annotation(pod: &Pod) -> Option<&String> {
    pod.annotations().get(annotations::EVAL_PROGRESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::testing;
    use crate::eval::config_render::tests::{representative_job, resolved};

    use crate::controller::testing::env_of;

    #[test]
    fn generation_pods_carry_their_shard_and_the_contract_env() {
        let mut job = representative_job();
        job.spec.worker.tolerations = Some(vec![k8s_openapi::api::core::v1::Toleration {
            key: Some("kwok.x-k8s.io/node".into()),
            operator: Some("Exists".into()),
            ..Default::default()
        }]);
        let pod = generation_pod(&job, 2, 1).unwrap();
        assert_eq!(
            pod.metadata.name.as_deref(),
            Some("janus-7b-orpo-bench-generate-2")
        );
        let l = pod.metadata.labels.as_ref().unwrap();
        assert_eq!(l["janus.dev/eval-job"], "janus-7b-orpo-bench");
        assert_eq!(l["janus.dev/stage"], "generate");
        assert_eq!(l["janus.dev/shard"], "2");
        assert_eq!(l["janus.dev/attempt"], "1");
        assert!(!l.contains_key("janus.dev/job"), "not a training job's pod");
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        assert_eq!(
            spec.service_account_name.as_deref(),
            Some("janus-7b-orpo-bench-eval")
        );
        assert_eq!(spec.tolerations.as_ref().unwrap().len(), 1);
        let c = &spec.containers[0];
        assert_eq!(c.name, "generate");
        assert_eq!(
            c.command.as_ref().unwrap(),
            &vec!["janus".to_string(), "eval".into(), "generate".into()]
        );
        let e = env_of(c);
        assert_eq!(e["JANUS_JOB"], "janus-7b-orpo-bench");
        assert_eq!(e["JANUS_NODE_RANK"], "2");
        assert_eq!(e["JANUS_NNODES"], "4");
        assert_eq!(e["JANUS_ATTEMPT"], "1");
        assert_eq!(e["JANUS_CONFIG"], "/etc/janus/config.yaml");
        let names: Vec<&str> = c
            .env
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        assert!(names.contains(&"JANUS_POD_NAME") && names.contains(&"JANUS_POD_NAMESPACE"));
        assert!(
            !names.contains(&"JANUS_JUDGE_API_KEY"),
            "no key in generation pods"
        );
        assert_eq!(testing::gpus(c), "1");
        assert_eq!(testing::storage_secret(c), "s3-credentials");
        assert_eq!(testing::owner(&pod.metadata), ("JanusEvalJob", Some(true)));
    }

    #[test]
    fn the_judge_pod_judges_then_scores_without_gpus_with_the_key() {
        let mut job = representative_job();
        job.spec.worker.node_selector = Some(BTreeMap::from([("gpu".into(), "h100".into())]));
        let pod = judge_pod(&job, 0).unwrap();
        assert_eq!(
            pod.metadata.name.as_deref(),
            Some("janus-7b-orpo-bench-judge")
        );
        assert_eq!(pod.labels()["janus.dev/stage"], "judge");
        assert!(!pod.labels().contains_key("janus.dev/shard"));
        let spec = pod.spec.unwrap();
        assert_eq!(
            spec.node_selector, None,
            "the judge need not run on a GPU node"
        );
        let init = spec.init_containers.unwrap();
        assert_eq!(init.len(), 1);
        assert_eq!(init[0].name, "judge");
        assert_eq!(init[0].command.as_ref().unwrap()[2], "judge");
        let key = init[0]
            .env
            .as_ref()
            .unwrap()
            .iter()
            .find(|e| e.name == "JANUS_JUDGE_API_KEY")
            .expect("the judge gets the API key");
        let sel = key
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!((sel.name.as_str(), sel.key.as_str()), ("openai", "api-key"));
        assert_eq!(spec.containers[0].name, "score");
        assert_eq!(spec.containers[0].command.as_ref().unwrap()[2], "score");
        assert!(spec.containers[0].resources.is_none(), "no GPUs");
        assert!(!env_of(&spec.containers[0]).contains_key("JANUS_JUDGE_API_KEY"));
    }

    #[test]
    fn a_template_pull_secrets_and_a_read_only_root_reach_every_pod_of_the_evaluation() {
        let mut job = representative_job();
        job.spec.worker.image_pull_secrets =
            serde_json::from_value(serde_json::json!([{"name": "registry"}])).unwrap();
        job.spec.worker.template = Some(serde_json::json!({
            "metadata": {"labels": {"team": "eval", "janus.dev/stage": "x"}, "annotations": {"a": "b"}},
            "spec": {
                "restartPolicy": "Always",
                "nodeSelector": {"pool": "eval"},
                "containers": [{"name": "generate", "env": [{"name": "RUST_LOG", "value": "debug"}]},
                               {"name": "score", "env": [{"name": "RUST_LOG", "value": "info"}]}]
            }
        }));
        for pod in [
            generation_pod(&job, 1, 0).unwrap(),
            judge_pod(&job, 0).unwrap(),
        ] {
            let l = pod.labels();
            assert_eq!(l["team"], "eval");
            assert_ne!(l["janus.dev/stage"], "x", "the contract's labels stay");
            assert_eq!(pod.annotations()["a"], "b");
            let spec = pod.spec.as_ref().unwrap();
            assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
            assert_eq!(spec.node_selector.as_ref().unwrap()["pool"], "eval");
            assert_eq!(
                spec.image_pull_secrets.as_ref().unwrap()[0].name,
                "registry"
            );
            assert_eq!(spec.automount_service_account_token, Some(false));
            let psc = spec.security_context.as_ref().unwrap();
            assert_eq!((psc.run_as_user, psc.fs_group), (Some(65532), Some(65532)));
            let ours = spec
                .containers
                .iter()
                .chain(spec.init_containers.iter().flatten());
            for c in ours {
                let sc = c.security_context.as_ref().unwrap();
                assert_eq!(sc.read_only_root_filesystem, Some(true), "{}", c.name);
                assert_eq!(env_of(c)["HOME"], "/tmp", "{}", c.name);
                // The report token is mounted after the override.
                assert!(c
                    .volume_mounts
                    .iter()
                    .flatten()
                    .any(|m| m.name == "janus-report-token"));
            }
        }
        let gen = generation_pod(&job, 1, 0).unwrap().spec.unwrap();
        assert_eq!(env_of(&gen.containers[0])["RUST_LOG"], "debug");
        assert_eq!(
            gen.containers.len(),
            1,
            "no score container in a generation pod"
        );
        let judge = judge_pod(&job, 0).unwrap().spec.unwrap();
        assert_eq!(env_of(&judge.containers[0])["RUST_LOG"], "info");
        let sa = service_account(&job).unwrap();
        assert_eq!(sa.image_pull_secrets.unwrap()[0].name, "registry");
        job.spec.worker.template = Some(serde_json::json!({"spec": {"containers": "x"}}));
        let e = generation_pod(&job, 0, 0).unwrap_err().to_string();
        assert!(e.contains("template override"), "{e}");
    }

    #[test]
    fn pod_names_and_the_service_account_name_their_evaluation() {
        let job = representative_job();
        let name = job.name_any();
        assert_eq!(
            job_of_service_account(&rbac_name(&name)),
            Some(name.as_str())
        );
        for slot in [Slot::Generate(0), Slot::Generate(3), Slot::Judge] {
            assert!(is_pod_name(&name, &slot.pod_name(&name)), "{slot:?}");
        }
        for pod in [
            "x-judge",
            "janus-7b-orpo-bench-generate-01",
            "janus-7b-orpo-bench-generate--1",
        ] {
            assert!(!is_pod_name(&name, pod), "{pod}");
        }
    }

    #[test]
    fn the_config_map_carries_the_rendered_config() {
        let job = representative_job();
        let cm = config_map(&job, &resolved(&job)).unwrap();
        assert_eq!(
            cm.metadata.name.as_deref(),
            Some("janus-7b-orpo-bench-eval-settings")
        );
        let text = &cm.data.unwrap()[CONFIG_KEY];
        assert!(
            text.contains("output_dir: s3://eval-results/research/janus-7b-orpo-bench"),
            "{text}"
        );
    }
}
