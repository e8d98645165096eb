//! Pure builders of a job's child objects: the headless Service, the ConfigMap with
//! the trainer config, the per-job ServiceAccount (the workers' identity when rank 0
//! reports progress; it holds no permission), and the worker pods. Names are deterministic, so creating an
//! object twice is a harmless conflict.

use std::collections::BTreeMap;

use janus_crds::training::PodGroupProvider;
use janus_crds::{annotations, defaults, env, labels, JanusTrainingJob};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, ContainerPort, Pod, PodSpec, Service, ServiceAccount, ServicePort,
    ServiceSpec,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::DynamicObject;
use kube::core::{ApiResource, GroupVersionKind};
use kube::ResourceExt;
use serde_json::json;

use crate::controller::children::{self as layer, *};
pub use crate::controller::children::{CONFIG_KEY, GPU_RESOURCE};
use crate::controller::template::apply_template_override;
use crate::error::{Error, Result};
use crate::security;
/// Name of the trainer's `/metrics` container port.
pub const METRICS_PORT_NAME: &str = "metrics";
/// Volcano's pod annotation naming the PodGroup.
pub const VOLCANO_GROUP_ANNOTATION: &str = "scheduling.k8s.io/group-name";
/// scheduler-plugins coscheduling's pod label naming the PodGroup.
pub const COSCHEDULING_GROUP_LABEL: &str = "scheduling.x-k8s.io/pod-group";

pub fn worker_name(job: &str, rank: i32) -> String {
    format!("{job}-worker-{rank}")
}
pub fn config_map_name(job: &str) -> String {
    format!("{job}-config")
}
/// ServiceAccount of the workers.
pub fn rbac_name(job: &str) -> String {
    format!("{job}-worker")
}
/// The job whose workers' ServiceAccount this is ([`rbac_name`] backwards).
pub fn job_of_service_account(sa: &str) -> Option<&str> {
    sa.strip_suffix("-worker").filter(|j| !j.is_empty())
}
/// `J-worker-0.J.N.svc`: rank 0 through the headless Service.
pub fn master_addr(job: &str, namespace: &str) -> String {
    format!("{}.{job}.{namespace}.svc", worker_name(job, 0))
}

/// Labels of every child: the job name (selector of the Service and of the pod watch).
pub fn job_labels(job: &str) -> BTreeMap<String, String> {
    layer::job_labels::<JanusTrainingJob>(job)
}

fn meta(job: &JanusTrainingJob, name: String) -> Result<ObjectMeta> {
    child_meta(job, name)
}

/// Headless Service `J`: gives pod `J-worker-i` the DNS name `J-worker-i.J.N.svc`.
pub fn service(job: &JanusTrainingJob) -> Result<Service> {
    let name = job.name_any();
    Ok(Service {
        metadata: meta(job, name.clone())?,
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(job_labels(&name)),
            publish_not_ready_addresses: Some(true),
            ports: Some(vec![ServicePort {
                name: Some("rendezvous".into()),
                port: job.spec.workers.master_port,
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// ConfigMap `J-config` with the rendered trainer config.
pub fn config_map(job: &JanusTrainingJob) -> Result<ConfigMap> {
    let rendered = super::config_render::render(job).map_err(|e| Error::ConfigRender {
        job: job.name_any(),
        message: e.to_string(),
    })?;
    layer::config_map(job, config_map_name(&job.name_any()), rendered)
}

pub fn service_account(job: &JanusTrainingJob) -> Result<ServiceAccount> {
    layer::service_account(
        job,
        rbac_name(&job.name_any()),
        &job.spec.workers.image_pull_secrets,
    )
}

/// `spec.workers.shmSizeLimit`, else 1Gi per GPU (at least 1Gi): NCCL's shared-memory
/// transport keeps a few buffers per pair of local ranks there.
pub fn shm_size_limit(w: &janus_crds::training::WorkersSpec) -> Quantity {
    w.shm_size_limit
        .clone()
        .unwrap_or_else(|| Quantity(format!("{}Gi", w.gpus_per_worker.max(1))))
}

/// NetworkPolicy `J-workers` (with `spec.networkPolicy`): the job's pods admit only
/// each other, on every port (rendezvous, NCCL and the CPU ring open ports of their
/// own), and the metrics port from `metricsFrom` (left out: from anywhere).
pub fn network_policy(job: &JanusTrainingJob) -> Result<Option<NetworkPolicy>> {
    let Some(np) = &job.spec.network_policy else {
        return Ok(None);
    };
    let own = job_labels(&job.name_any());
    let selector = k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
        match_labels: Some(own),
        ..Default::default()
    };
    let peers = NetworkPolicyIngressRule {
        from: Some(vec![NetworkPolicyPeer {
            pod_selector: Some(selector.clone()),
            ..Default::default()
        }]),
        ports: None,
    };
    let metrics = NetworkPolicyIngressRule {
        from: np.metrics_from.clone(),
        ports: Some(vec![NetworkPolicyPort {
            port: Some(
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(
                    defaults::METRICS_PORT,
                ),
            ),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
    };
    Ok(Some(NetworkPolicy {
        metadata: meta(job, network_policy_name(&job.name_any()))?,
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(selector),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![peers, metrics]),
            egress: None,
        }),
    }))
}

pub fn network_policy_name(job: &str) -> String {
    format!("{job}-workers")
}

/// The PodGroup of the gang scheduler named in `spec.scheduling.podGroup` (name `J`).
pub fn pod_group(job: &JanusTrainingJob) -> Result<Option<(ApiResource, DynamicObject)>> {
    let Some(pg) = &job.spec.scheduling.pod_group else {
        return Ok(None);
    };
    let min_member = pg.min_member.unwrap_or(job.spec.workers.replicas);
    let (gvk, spec) = match pg.provider {
        PodGroupProvider::Volcano => {
            let mut spec = json!({ "minMember": min_member });
            if let Some(q) = &pg.queue {
                spec["queue"] = json!(q);
            }
            if let Some(p) = &job.spec.workers.priority_class_name {
                spec["priorityClassName"] = json!(p);
            }
            (
                GroupVersionKind::gvk("scheduling.volcano.sh", "v1beta1", "PodGroup"),
                spec,
            )
        }
        PodGroupProvider::Coscheduling => {
            let mut spec = json!({ "minMember": min_member });
            if let Some(t) = pg.schedule_timeout_seconds {
                spec["scheduleTimeoutSeconds"] = json!(t);
            }
            (
                GroupVersionKind::gvk("scheduling.x-k8s.io", "v1alpha1", "PodGroup"),
                spec,
            )
        }
    };
    let ar = ApiResource::from_gvk(&gvk);
    let mut obj = DynamicObject::new(&job.name_any(), &ar);
    obj.metadata = meta(job, job.name_any())?;
    obj.data = json!({ "spec": spec });
    Ok(Some((ar, obj)))
}

/// Worker pod `J-worker-<rank>` of gang attempt `attempt`.
pub fn worker_pod(job: &JanusTrainingJob, rank: i32, attempt: i32) -> Result<Pod> {
    let name = job.name_any();
    let ns = namespace(job)?;
    let w = &job.spec.workers;
    let pod_name = worker_name(&name, rank);

    let mut pod_labels = job_labels(&name);
    pod_labels.insert(labels::RANK.into(), rank.to_string());
    pod_labels.insert(labels::ATTEMPT.into(), attempt.to_string());
    // The Kueue queue label stays on the job (its Workload is admitted, see `kueue.rs`);
    // copied onto pods it would make Kueue's pod integration gate them a second time.
    let mut pod_annotations = BTreeMap::new();
    if let Some(pg) = &job.spec.scheduling.pod_group {
        match pg.provider {
            PodGroupProvider::Volcano => {
                pod_annotations.insert(VOLCANO_GROUP_ANNOTATION.into(), name.clone());
            }
            PodGroupProvider::Coscheduling => {
                pod_labels.insert(COSCHEDULING_GROUP_LABEL.into(), name.clone());
            }
        }
    }

    janus_crds::training::check_fabric_env(&w.env).map_err(|message| Error::TemplateOverride {
        job: name.clone(),
        message,
    })?;
    let container = trainer_container(job, rank, attempt, &ns);

    let pod = Pod {
        metadata: ObjectMeta {
            name: Some(pod_name.clone()),
            namespace: Some(ns),
            labels: Some(pod_labels),
            annotations: (!pod_annotations.is_empty()).then_some(pod_annotations),
            owner_references: Some(vec![crate::controller::children::owner(job)?]),
            ..Default::default()
        },
        spec: Some(PodSpec {
            hostname: Some(pod_name),
            subdomain: Some(name.clone()),
            restart_policy: Some("Never".into()),
            termination_grace_period_seconds: Some(
                w.termination_grace_period_seconds
                    .unwrap_or(defaults::TERMINATION_GRACE_SECONDS),
            ),
            service_account_name: Some(rbac_name(&name)),
            scheduler_name: job.spec.scheduling.scheduler_name.clone(),
            priority_class_name: w.priority_class_name.clone(),
            node_selector: w.node_selector.clone(),
            tolerations: w.tolerations.clone(),
            affinity: w.affinity.clone(),
            containers: vec![container],
            image_pull_secrets: pull_secrets(&w.image_pull_secrets),
            volumes: Some(vec![
                config_volume(config_map_name(&name)),
                security::shm_volume(shm_size_limit(w)),
                security::scratch_volume(w.scratch_size_limit.as_ref()),
            ]),
            security_context: Some(security::pod_security_context()),
            ..Default::default()
        }),
        status: None,
    };
    let mut pod = match &w.template {
        None => pod,
        Some(over) => apply_template_override(pod, over)
            .map_err(|message| Error::TemplateOverride { job: name, message })?,
    };
    tell_grace_period(&mut pod);
    if let Some(spec) = pod.spec.as_mut() {
        security::tell_scratch_limit(spec, defaults::CONTAINER_NAME);
        security::report_identity(spec, Some(defaults::CONTAINER_NAME));
    }
    Ok(pod)
}

/// The trainer container of worker `rank` at `attempt`: the contract environment, the
/// rendezvous and metrics ports, the mounted config.
fn trainer_container(job: &JanusTrainingJob, rank: i32, attempt: i32, ns: &str) -> Container {
    let name = job.name_any();
    let w = &job.spec.workers;
    let nproc = w.gpus_per_worker.max(1);
    let mut env_vars = vec![
        plain(env::JOB, name.clone()),
        plain(env::NODE_RANK, rank.to_string()),
        plain(env::NNODES, w.replicas.to_string()),
        plain(env::NPROC_PER_NODE, nproc.to_string()),
        plain(env::MASTER_ADDR, master_addr(&name, ns)),
        plain(env::MASTER_PORT, w.master_port.to_string()),
        plain(env::ATTEMPT, attempt.to_string()),
        plain(env::CONFIG, defaults::CONFIG_PATH.to_string()),
        plain(env::METRICS_PORT, defaults::METRICS_PORT.to_string()),
        field(env::POD_NAME, "metadata.name"),
        field(env::POD_NAMESPACE, "metadata.namespace"),
    ];
    env_vars.extend(security::scratch_env());
    // NCCL/UCX settings cannot shadow the contract's variables (their prefixes differ).
    env_vars.extend(w.env.iter().map(|v| plain(&v.name, v.value.clone())));

    let resources = with_rdma(
        with_gpus(w.resources.clone(), w.gpus_per_worker),
        w.rdma.as_ref(),
    );
    let mut security_context = security::container_security_context();
    if w.rdma.is_some() {
        security::add_capability(&mut security_context, security::IPC_LOCK);
    }
    Container {
        name: defaults::CONTAINER_NAME.into(),
        image: Some(w.image.clone()),
        image_pull_policy: w.image_pull_policy.clone(),
        command: Some(vec![
            "janus".into(),
            "train".into(),
            "--config".into(),
            defaults::CONFIG_PATH.into(),
        ]),
        env: Some(env_vars),
        env_from: storage_env(job.spec.storage_secret_ref.as_ref()),
        ports: Some(vec![
            ContainerPort {
                name: Some("rendezvous".into()),
                container_port: w.master_port,
                ..Default::default()
            },
            // Scraped by Prometheus (the chart's PodMonitor selects this port name).
            ContainerPort {
                name: Some(METRICS_PORT_NAME.into()),
                container_port: defaults::METRICS_PORT,
                ..Default::default()
            },
        ]),
        // The trainer writes its fatal error to the termination log; a process killed
        // before it could still leaves the tail of its log there.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        resources,
        volume_mounts: Some(vec![
            config_mount(),
            security::shm_mount(),
            security::scratch_mount(),
        ]),
        security_context: Some(security_context),
        ..Default::default()
    }
}

/// `resources` with `rdma.count` of the RDMA resource requested and limited (extended
/// resources must be both, and equal).
fn with_rdma(
    resources: Option<k8s_openapi::api::core::v1::ResourceRequirements>,
    rdma: Option<&janus_crds::training::RdmaSpec>,
) -> Option<k8s_openapi::api::core::v1::ResourceRequirements> {
    let Some(rdma) = rdma else {
        return resources;
    };
    let mut r = resources.unwrap_or_default();
    let n = k8s_openapi::apimachinery::pkg::api::resource::Quantity(rdma.count.to_string());
    for side in [&mut r.limits, &mut r.requests] {
        side.get_or_insert_with(Default::default)
            .insert(rdma.resource_name.clone(), n.clone());
    }
    Some(r)
}

/// The trainer's budget for a checkpoint on SIGTERM is the grace period the pod ends up
/// with, a template override's included.
fn tell_grace_period(pod: &mut Pod) {
    let Some(spec) = pod.spec.as_mut() else {
        return;
    };
    let Some(grace) = spec.termination_grace_period_seconds else {
        return;
    };
    security::set_env(
        spec,
        defaults::CONTAINER_NAME,
        env::TERMINATION_GRACE_SECONDS,
        Some(grace.to_string()),
    );
}

/// The progress annotation value of a pod, if any.
pub fn progress_annotation(pod: &Pod) -> Option<&String> {
    pod.annotations().get(annotations::PROGRESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::testing;
    use crate::training::config_render::tests::representative_job;

    fn env_of(pod: &Pod) -> BTreeMap<String, String> {
        testing::env_of(&pod.spec.as_ref().unwrap().containers[0])
    }

    #[test]
    fn the_trainer_is_told_the_grace_period_the_pod_ends_up_with() {
        let mut job = representative_job();
        job.spec.workers.termination_grace_period_seconds = Some(900);
        let pod = worker_pod(&job, 0, 0).unwrap();
        assert_eq!(
            pod.spec.as_ref().unwrap().termination_grace_period_seconds,
            Some(900)
        );
        assert_eq!(env_of(&pod)["JANUS_TERMINATION_GRACE_SECONDS"], "900");
        // A template override's value wins, and the trainer hears that one.
        job.spec.workers.template = Some(serde_json::json!({
            "spec": {"terminationGracePeriodSeconds": 45}
        }));
        let pod = worker_pod(&job, 0, 0).unwrap();
        assert_eq!(
            pod.spec.as_ref().unwrap().termination_grace_period_seconds,
            Some(45)
        );
        assert_eq!(env_of(&pod)["JANUS_TERMINATION_GRACE_SECONDS"], "45");
    }

    #[test]
    fn rdma_asks_for_the_devices_and_ipc_lock_and_the_nccl_settings_reach_the_trainer() {
        let mut job = representative_job();
        let plain = worker_pod(&job, 0, 0).unwrap();
        let caps = |p: &Pod| {
            p.spec.as_ref().unwrap().containers[0]
                .security_context
                .as_ref()
                .unwrap()
                .capabilities
                .clone()
                .unwrap()
        };
        assert_eq!(caps(&plain).add, None, "nothing added without rdma");
        job.spec.workers.rdma = Some(
            serde_json::from_value(serde_json::json!({"resourceName": "rdma/hca", "count": 2}))
                .unwrap(),
        );
        job.spec.workers.env = serde_json::from_value(serde_json::json!([
            {"name": "NCCL_SOCKET_IFNAME", "value": "eth0"},
            {"name": "NCCL_IB_HCA", "value": "mlx5_0,mlx5_1"},
            {"name": "UCX_NET_DEVICES", "value": "mlx5_0:1"}
        ]))
        .unwrap();
        let pod = worker_pod(&job, 1, 0).unwrap();
        let c = &pod.spec.as_ref().unwrap().containers[0];
        let r = c.resources.as_ref().unwrap();
        for side in [&r.limits, &r.requests] {
            let side = side.as_ref().unwrap();
            assert_eq!(side["rdma/hca"].0, "2");
            assert_eq!(side[GPU_RESOURCE].0, "8", "the GPUs stay");
        }
        let caps = caps(&pod);
        assert_eq!(caps.add, Some(vec!["IPC_LOCK".to_string()]));
        assert_eq!(
            caps.drop,
            Some(vec!["ALL".to_string()]),
            "all others dropped"
        );
        let env = env_of(&pod);
        assert_eq!(env["NCCL_SOCKET_IFNAME"], "eth0");
        assert_eq!(env["NCCL_IB_HCA"], "mlx5_0,mlx5_1");
        assert_eq!(env["UCX_NET_DEVICES"], "mlx5_0:1");
        assert_eq!(env["JANUS_NODE_RANK"], "1", "the contract's variables stay");
    }

    #[test]
    fn workers_pull_with_the_jobs_secrets_get_a_sized_shm_and_a_read_only_root_as_a_high_uid() {
        let mut job = representative_job();
        let pod = worker_pod(&job, 0, 0).unwrap();
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.image_pull_secrets, None, "none named, none set");
        let shm = |spec: &PodSpec| {
            let v = spec
                .volumes
                .iter()
                .flatten()
                .find(|v| v.name == "dshm")
                .unwrap();
            let e = v.empty_dir.clone().unwrap();
            (e.medium.unwrap(), e.size_limit.unwrap().0)
        };
        assert_eq!(shm(spec), ("Memory".into(), "8Gi".into()), "1Gi per GPU");
        assert!(spec.containers[0]
            .volume_mounts
            .iter()
            .flatten()
            .any(|m| m.name == "dshm" && m.mount_path == "/dev/shm"));
        let psc = spec.security_context.as_ref().unwrap();
        assert_eq!(
            (psc.run_as_user, psc.run_as_group, psc.fs_group),
            (Some(65532), Some(65532), Some(65532))
        );
        let sc = spec.containers[0].security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(
            (sc.run_as_user, sc.run_as_group),
            (Some(65532), Some(65532))
        );
        // Every write lands on the scratch volume.
        let e = env_of(&pod);
        assert_eq!(
            (
                e["HOME"].as_str(),
                e["TMPDIR"].as_str(),
                e["XDG_CACHE_HOME"].as_str()
            ),
            ("/tmp", "/tmp", "/tmp/.cache")
        );

        job.spec.workers.image_pull_secrets =
            serde_json::from_value(json!([{"name": "registry"}])).unwrap();
        job.spec.workers.shm_size_limit = Some(Quantity("2Gi".into()));
        job.spec.workers.gpus_per_worker = 0;
        let spec = worker_pod(&job, 0, 0).unwrap().spec.unwrap();
        let names = |s: Option<Vec<k8s_openapi::api::core::v1::LocalObjectReference>>| {
            s.unwrap().into_iter().map(|r| r.name).collect::<Vec<_>>()
        };
        assert_eq!(names(spec.image_pull_secrets.clone()), ["registry"]);
        assert_eq!(shm(&spec).1, "2Gi", "the spec's size");
        let sa = service_account(&job).unwrap();
        assert_eq!(
            names(sa.image_pull_secrets),
            ["registry"],
            "the account carries them"
        );
        job.spec.workers.shm_size_limit = None;
        let spec = worker_pod(&job, 0, 0).unwrap().spec.unwrap();
        assert_eq!(shm(&spec).1, "1Gi", "at least 1Gi on CPU");
    }

    #[test]
    fn a_worker_env_outside_nccl_and_ucx_is_refused_naming_the_field() {
        let mut job = representative_job();
        for (env, want) in [
            (
                serde_json::json!([{"name": "NCCL_DEBUG", "value": "INFO"}, {"name": "JANUS_MASTER_ADDR", "value": "x"}]),
                "spec.workers.env[1].name: `JANUS_MASTER_ADDR` is not an NCCL_* or UCX_* variable",
            ),
            (
                serde_json::json!([{"name": "nccl_debug", "value": "INFO"}]),
                "spec.workers.env[0].name: `nccl_debug`",
            ),
            (
                serde_json::json!([{"name": "NCCL_", "value": ""}]),
                "spec.workers.env[0].name: `NCCL_`",
            ),
            (
                serde_json::json!([{"name": "NCCL_DEBUG", "value": "INFO"}, {"name": "NCCL_DEBUG", "value": "WARN"}]),
                "spec.workers.env[1].name: `NCCL_DEBUG` is already set by spec.workers.env[0]",
            ),
        ] {
            job.spec.workers.env = serde_json::from_value(env).unwrap();
            let e = worker_pod(&job, 0, 0).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn worker_pod_follows_the_design_contract() {
        let mut job = representative_job();
        job.metadata.labels = Some(BTreeMap::from([(
            labels::KUEUE_QUEUE_NAME.to_string(),
            "team-a".to_string(),
        )]));
        let pod = worker_pod(&job, 2, 1).unwrap();
        assert_eq!(pod.metadata.name.as_deref(), Some("janus-7b-sft-worker-2"));
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.hostname.as_deref(), Some("janus-7b-sft-worker-2"));
        assert_eq!(spec.subdomain.as_deref(), Some("janus-7b-sft"));
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        assert_eq!(
            spec.service_account_name.as_deref(),
            Some("janus-7b-sft-worker")
        );
        // No API token: only the report token, which the API server refuses.
        assert_eq!(spec.automount_service_account_token, Some(false));
        assert!(spec
            .volumes
            .iter()
            .flatten()
            .any(|v| v
                .projected
                .as_ref()
                .is_some_and(|p| p.sources.iter().flatten().any(|s| s
                    .service_account_token
                    .as_ref()
                    .is_some_and(|t| t.audience.as_deref() == Some("janus.dev/operator"))))));
        let l = pod.metadata.labels.as_ref().unwrap();
        assert_eq!(l["janus.dev/job"], "janus-7b-sft");
        assert_eq!(l["janus.dev/rank"], "2");
        assert_eq!(l["janus.dev/attempt"], "1");
        assert!(!l.contains_key(labels::KUEUE_QUEUE_NAME));
        let e = env_of(&pod);
        assert_eq!(e["JANUS_JOB"], "janus-7b-sft");
        assert_eq!(e["JANUS_NODE_RANK"], "2");
        assert_eq!(e["JANUS_NNODES"], "4");
        assert_eq!(e["JANUS_NPROC_PER_NODE"], "8");
        assert_eq!(
            e["JANUS_MASTER_ADDR"],
            "janus-7b-sft-worker-0.janus-7b-sft.research.svc"
        );
        assert_eq!(e["JANUS_MASTER_PORT"], "29500");
        assert_eq!(e["JANUS_ATTEMPT"], "1");
        assert_eq!(e["JANUS_CONFIG"], "/etc/janus/config.yaml");
        assert_eq!(e["JANUS_METRICS_PORT"], "9400");
        // Time for a checkpoint on SIGTERM, and the trainer told how much.
        assert_eq!(spec.termination_grace_period_seconds, Some(30));
        // The restricted Pod Security Standard, and scratch space for downloads.
        let psc = spec.security_context.as_ref().unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(
            psc.seccomp_profile.as_ref().unwrap().type_,
            "RuntimeDefault"
        );
        let sc = spec.containers[0].security_context.as_ref().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop,
            Some(vec!["ALL".into()])
        );
        let scratch = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "scratch")
            .unwrap();
        assert_eq!(
            scratch.empty_dir.as_ref().unwrap().size_limit,
            job.spec.workers.scratch_size_limit
        );
        assert!(spec.containers[0]
            .volume_mounts
            .iter()
            .flatten()
            .any(|m| m.name == "scratch" && m.mount_path == "/tmp"));
        assert_eq!(e["JANUS_TERMINATION_GRACE_SECONDS"], "30");
        let c = &spec.containers[0];
        let ports: Vec<(&str, i32)> = c
            .ports
            .iter()
            .flatten()
            .map(|p| (p.name.as_deref().unwrap(), p.container_port))
            .collect();
        assert_eq!(ports, vec![("rendezvous", 29500), ("metrics", 9400)]);
        assert_eq!(
            c.termination_message_policy.as_deref(),
            Some("FallbackToLogsOnError")
        );
        assert_eq!(testing::gpus(c), "8");
        assert_eq!(testing::storage_secret(c), "s3-credentials");
        assert_eq!(
            testing::owner(&pod.metadata),
            ("JanusTrainingJob", Some(true))
        );
        let o = &pod.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(o.uid, "4f1c2d7e-0000-4000-8000-000000000001");
    }

    #[test]
    fn scheduling_fields_pass_through() {
        let mut job = representative_job();
        job.spec.workers.node_selector = Some(BTreeMap::from([("gpu".into(), "h100".into())]));
        job.spec.workers.priority_class_name = Some("high".into());
        job.spec.workers.tolerations = Some(vec![k8s_openapi::api::core::v1::Toleration {
            key: Some("kwok.x-k8s.io/node".into()),
            operator: Some("Exists".into()),
            ..Default::default()
        }]);
        job.spec.scheduling.scheduler_name = Some("volcano".into());
        let spec = worker_pod(&job, 0, 0).unwrap().spec.unwrap();
        assert_eq!(spec.node_selector.unwrap()["gpu"], "h100");
        assert_eq!(spec.priority_class_name.as_deref(), Some("high"));
        assert_eq!(spec.scheduler_name.as_deref(), Some("volcano"));
        assert_eq!(spec.tolerations.unwrap().len(), 1);
    }

    #[test]
    fn template_override_merges_by_name_and_keeps_the_contract() {
        let mut job = representative_job();
        job.spec.workers.template = Some(json!({
            "metadata": {"labels": {"team": "alignment", "janus.dev/rank": "9"}, "name": "evil"},
            "spec": {
                "restartPolicy": "Always",
                "containers": [{"name": "trainer", "env": [{"name": "NCCL_DEBUG", "value": "INFO"}]},
                               {"name": "sidecar", "image": "busybox"}],
                "volumes": [{"name": "scratch", "emptyDir": {}}]
            }
        }));
        let pod = worker_pod(&job, 1, 0).unwrap();
        assert_eq!(pod.metadata.name.as_deref(), Some("janus-7b-sft-worker-1"));
        let l = pod.metadata.labels.as_ref().unwrap();
        assert_eq!(
            (l["team"].as_str(), l["janus.dev/rank"].as_str()),
            ("alignment", "1")
        );
        let spec = pod.spec.unwrap();
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        assert_eq!(spec.containers.len(), 2);
        let trainer = &spec.containers[0];
        let env = trainer.env.as_ref().unwrap();
        assert!(env.iter().any(|e| e.name == "NCCL_DEBUG"));
        assert!(env.iter().any(|e| e.name == "JANUS_NODE_RANK"));
        assert_eq!(
            trainer.image.as_deref(),
            Some("ghcr.io/janus/trainer:0.1.0")
        );
        // config, dshm, scratch (replaced by the template's), the report token.
        assert_eq!(spec.volumes.unwrap().len(), 4);
        assert!(
            spec.containers[1].volume_mounts.is_none(),
            "the sidecar has no token"
        );
    }

    #[test]
    fn a_template_override_with_unknown_keys_is_an_error_naming_them() {
        let mut job = representative_job();
        job.spec.workers.template = Some(json!({"specc": {}}));
        let e = worker_pod(&job, 0, 0).unwrap_err().to_string();
        assert!(e.contains("specc"), "{e}");
    }

    #[test]
    fn the_network_policy_admits_the_jobs_pods_and_metrics_from_the_named_peers() {
        let mut j = representative_job();
        assert!(
            network_policy(&j).unwrap().is_none(),
            "no policy unless asked"
        );
        j.spec.network_policy = Some(serde_json::from_value(json!({"metricsFrom": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
        ]})).unwrap());
        let np = serde_json::to_value(network_policy(&j).unwrap().unwrap()).unwrap();
        let name = j.name_any();
        assert_eq!(np["metadata"]["name"], format!("{name}-workers"));
        assert_eq!(
            np["metadata"]["ownerReferences"][0]["kind"],
            "JanusTrainingJob"
        );
        assert_eq!(
            np["spec"],
            json!({
                "podSelector": {"matchLabels": {"janus.dev/job": name}},
                "policyTypes": ["Ingress"],
                "ingress": [
                    {"from": [{"podSelector": {"matchLabels": {"janus.dev/job": name}}}]},
                    {"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
                     "ports": [{"port": 9400, "protocol": "TCP"}]}
                ]
            })
        );
    }

    #[test]
    fn the_workers_service_account_names_its_job() {
        assert_eq!(job_of_service_account(&rbac_name("a-eval")), Some("a-eval"));
        assert_eq!(job_of_service_account("worker"), None);
        assert_eq!(job_of_service_account("-worker"), None);
        assert_eq!(job_of_service_account("a-eval"), None);
    }

    #[test]
    fn headless_service_selects_the_job_pods() {
        let s = service(&representative_job()).unwrap().spec.unwrap();
        assert_eq!(s.cluster_ip.as_deref(), Some("None"));
        assert_eq!(s.selector.unwrap()["janus.dev/job"], "janus-7b-sft");
        assert_eq!(s.publish_not_ready_addresses, Some(true));
    }

    #[test]
    fn pod_groups_for_volcano_and_coscheduling() {
        use janus_crds::training::PodGroupSpec;
        let mut job = representative_job();
        assert!(pod_group(&job).unwrap().is_none());
        job.spec.scheduling.pod_group = Some(PodGroupSpec {
            provider: PodGroupProvider::Volcano,
            min_member: None,
            queue: Some("research".into()),
            schedule_timeout_seconds: None,
        });
        let (ar, pg) = pod_group(&job).unwrap().unwrap();
        assert_eq!(ar.group, "scheduling.volcano.sh");
        assert_eq!(pg.data["spec"]["minMember"], 4);
        assert_eq!(pg.data["spec"]["queue"], "research");
        let pod = worker_pod(&job, 0, 0).unwrap();
        assert_eq!(pod.annotations()[VOLCANO_GROUP_ANNOTATION], "janus-7b-sft");
        job.spec.scheduling.pod_group.as_mut().unwrap().provider = PodGroupProvider::Coscheduling;
        let (ar, _) = pod_group(&job).unwrap().unwrap();
        assert_eq!(ar.group, "scheduling.x-k8s.io");
        let pod = worker_pod(&job, 0, 0).unwrap();
        assert_eq!(pod.labels()[COSCHEDULING_GROUP_LABEL], "janus-7b-sft");
    }

    #[test]
    fn the_config_map_carries_the_rendered_config() {
        let cm = config_map(&representative_job()).unwrap();
        assert_eq!(cm.metadata.name.as_deref(), Some("janus-7b-sft-config"));
        assert!(cm.data.unwrap()[CONFIG_KEY].contains("learning_rate: 0.00001"));
    }
}
