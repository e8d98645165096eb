//! Every pod the operator creates passes the `restricted` Pod Security Standard, so a
//! namespace labelled `pod-security.kubernetes.io/enforce: restricted` admits it: no root,
//! the runtime's default seccomp profile, no capabilities, no privilege escalation.
//! Beyond that level, as manifest scanners ask of a batch pod: a read-only root
//! filesystem (the trainer writes only to its scratch volume, `/dev/shm`, the
//! termination log and object storage; [`scratch_env`] points HOME, TMPDIR and caches
//! at the scratch volume) and a high uid/gid ([`POD_UID`], whatever user the image
//! names), the volumes group-owned by it. A template override may still loosen this
//! where a namespace allows it. One exception is asked for in the spec: a
//! training job with `spec.workers.rdma` adds `IPC_LOCK` ([`IPC_LOCK`]), which only the
//! `privileged` level admits.

use janus_crds::progress::publish;
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvVar, PodSecurityContext, PodSpec,
    ProjectedVolumeSource, SeccompProfile, SecurityContext, ServiceAccountTokenProjection, Volume,
    VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// Where the scratch volume is mounted: the trainer's `TMPDIR` and `HOME` (model and
/// dataset downloads, tokenizer caches), so a 7B download does not fill the node's
/// container layer and is counted against the pod's ephemeral storage.
pub const SCRATCH_PATH: &str = "/tmp";
const SCRATCH_VOLUME: &str = "scratch";
const SHM_VOLUME: &str = "dshm";
const REPORT_TOKEN_VOLUME: &str = "janus-report-token";

/// The uid, gid and fsGroup of every pod: above the ranges of the node's own users
/// (scanners flag uids under 10000, which may collide with a host user's), and the
/// conventional "nonroot" id of distroless images.
pub const POD_UID: i64 = 65532;

pub fn pod_security_context() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(POD_UID),
        run_as_group: Some(POD_UID),
        fs_group: Some(POD_UID),
        // A volume a template mounts (a dataset PVC) is chowned only when its top
        // directory is not the group's yet, not file by file at every start.
        fs_group_change_policy: Some("OnRootMismatch".into()),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn container_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        run_as_non_root: Some(true),
        run_as_user: Some(POD_UID),
        run_as_group: Some(POD_UID),
        read_only_root_filesystem: Some(true),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The environment that keeps every write of `janus` (and of the libraries it loads:
/// libtorch's and CUDA's caches, NCCL's debug files) on the scratch volume under a
/// read-only root filesystem, whatever the image sets: HOME, TMPDIR and the XDG cache.
pub fn scratch_env() -> Vec<EnvVar> {
    [
        ("HOME", SCRATCH_PATH.to_string()),
        ("TMPDIR", SCRATCH_PATH.to_string()),
        ("XDG_CACHE_HOME", format!("{SCRATCH_PATH}/.cache")),
    ]
    .into_iter()
    .map(|(name, value)| EnvVar {
        name: name.into(),
        value: Some(value),
        ..Default::default()
    })
    .collect()
}

/// `/dev/shm` of a pod: a memory-backed `emptyDir` of at most `size` (NCCL's
/// shared-memory transport), mounted by [`shm_mount`].
pub fn shm_volume(size: Quantity) -> Volume {
    Volume {
        name: SHM_VOLUME.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: Some("Memory".into()),
            size_limit: Some(size),
        }),
        ..Default::default()
    }
}

pub fn shm_mount() -> VolumeMount {
    VolumeMount {
        name: SHM_VOLUME.into(),
        mount_path: "/dev/shm".into(),
        ..Default::default()
    }
}

/// The capability RDMA needs to pin (mlock) NCCL's registered buffers beyond the
/// container's memlock limit. Adding it leaves the `restricted` and the `baseline` Pod
/// Security Standards (baseline allows only the runtime's default capabilities): a job
/// asking for RDMA (`spec.workers.rdma`) needs a namespace that allows `privileged`.
pub const IPC_LOCK: &str = "IPC_LOCK";

/// `ctx` with capability `cap` added (every other one stays dropped).
pub fn add_capability(ctx: &mut SecurityContext, cap: &str) {
    let caps = ctx.capabilities.get_or_insert_with(Default::default);
    let add = caps.add.get_or_insert_with(Vec::new);
    if !add.iter().any(|c| c == cap) {
        add.push(cap.into());
    }
}

/// The scratch `emptyDir`, limited to `size` when given.
pub fn scratch_volume(size: Option<&Quantity>) -> Volume {
    Volume {
        name: SCRATCH_VOLUME.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: size.cloned(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Tell `container` the scratch volume's size limit in bytes (`JANUS_SCRATCH_LIMIT_BYTES`),
/// as the pod ends up with it (a template override's included): the trainer checks each
/// download fits in what is left before starting it. No limit, nothing to tell.
pub fn tell_scratch_limit(spec: &mut PodSpec, container: &str) {
    let limit = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == SCRATCH_VOLUME)
        .and_then(|v| v.empty_dir.as_ref()?.size_limit.as_ref())
        .and_then(|q| quantity_bytes(&q.0));
    set_env(
        spec,
        container,
        janus_crds::env::SCRATCH_LIMIT_BYTES,
        limit.map(|b| b.to_string()),
    );
}

/// Set (or, with None, remove) variable `name` of `container` (a container or an init
/// container), replacing what the pod had: for values read off the pod as it ends up,
/// after a template override.
pub fn set_env(spec: &mut PodSpec, container: &str, name: &str, value: Option<String>) {
    for c in all_containers(spec).filter(|c| c.name == container) {
        set_container_env(c, name, value.clone());
    }
}

fn set_container_env(c: &mut Container, name: &str, value: Option<String>) {
    let env = c.env.get_or_insert_with(Vec::new);
    env.retain(|e| e.name != name);
    if let Some(value) = value {
        env.push(EnvVar {
            name: name.into(),
            value: Some(value),
            ..Default::default()
        });
    }
}

/// Bytes of a Kubernetes quantity (`20Gi`, `500M`, `1e9`, `1.5Ti`), rounded up; None for
/// what is not one.
pub fn quantity_bytes(q: &str) -> Option<u64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let n: f64 = number.parse().ok()?;
    let scale = match suffix {
        "" => 1.0,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        e if e.starts_with(['e', 'E']) => 10f64.powi(e[1..].parse().ok()?),
        _ => return None,
    };
    let bytes = (n * scale).ceil();
    (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

/// Pods prove who they are to the operator's report endpoint with a projected token of
/// audience [`publish::AUDIENCE`], bound to the pod, in place of the automounted API
/// token: they need no Kubernetes API access, and the API server refuses this token.
/// Mounted into container `only` (the operator's, not a template's sidecars), or with
/// None into every container; applied after a template override, which may not undo it.
pub fn report_identity(spec: &mut PodSpec, only: Option<&str>) {
    spec.automount_service_account_token = Some(false);
    let volumes = spec.volumes.get_or_insert_with(Vec::new);
    volumes.retain(|v| v.name != REPORT_TOKEN_VOLUME);
    volumes.push(Volume {
        name: REPORT_TOKEN_VOLUME.into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(vec![VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    audience: Some(publish::AUDIENCE.into()),
                    expiration_seconds: Some(publish::TOKEN_EXPIRATION_SECONDS),
                    path: publish::TOKEN_NAME.into(),
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    });
    let ours = all_containers(spec).filter(|c| only.is_none_or(|n| c.name == n));
    for c in ours {
        let mounts = c.volume_mounts.get_or_insert_with(Vec::new);
        mounts.retain(|m| m.name != REPORT_TOKEN_VOLUME);
        mounts.push(VolumeMount {
            name: REPORT_TOKEN_VOLUME.into(),
            mount_path: publish::TOKEN_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
    }
}

/// Tell the containers that hold the report token ([`report_identity`]) where to report
/// (`JANUS_REPORT_URL`); None: not at all (the operator does not know its address).
pub fn tell_report_url(spec: &mut PodSpec, url: Option<&str>) {
    let reporting = all_containers(spec).filter(|c| {
        c.volume_mounts
            .iter()
            .flatten()
            .any(|m| m.name == REPORT_TOKEN_VOLUME)
    });
    for c in reporting {
        set_container_env(c, janus_crds::env::REPORT_URL, url.map(String::from));
    }
}

/// The containers and init containers of a pod (names are unique across both).
fn all_containers(spec: &mut PodSpec) -> impl Iterator<Item = &mut Container> {
    spec.containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten())
}

pub fn scratch_mount() -> VolumeMount {
    VolumeMount {
        name: SCRATCH_VOLUME.into(),
        mount_path: SCRATCH_PATH.into(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_container_gets_the_report_token_and_url_and_no_api_token() {
        let c = |n: &str| Container {
            name: n.into(),
            ..Default::default()
        };
        let mut spec = PodSpec {
            automount_service_account_token: Some(true),
            containers: vec![c("score")],
            init_containers: Some(vec![c("judge")]),
            ..Default::default()
        };
        report_identity(&mut spec, None);
        report_identity(&mut spec, None);
        spec.containers.push(c("sidecar"));
        tell_report_url(&mut spec, Some("http://op.ns.svc:8080/v1/report"));
        assert_eq!(spec.automount_service_account_token, Some(false));
        let vols = spec.volumes.as_ref().unwrap();
        assert_eq!(vols.len(), 1, "applied twice, mounted once");
        let t = vols[0]
            .projected
            .as_ref()
            .unwrap()
            .sources
            .as_ref()
            .unwrap()[0]
            .service_account_token
            .as_ref()
            .unwrap();
        assert_eq!(t.audience.as_deref(), Some("janus.dev/operator"));
        assert_eq!(t.path, "token");
        let sidecar = spec.containers.pop().unwrap();
        assert!(
            sidecar.volume_mounts.is_none() && sidecar.env.is_none(),
            "not a sidecar's"
        );
        for c in spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
        {
            let m = c.volume_mounts.as_ref().unwrap();
            assert_eq!(m.len(), 1, "{}", c.name);
            assert_eq!(m[0].mount_path, publish::TOKEN_DIR);
            assert_eq!(m[0].read_only, Some(true));
            let env = c.env.as_ref().unwrap();
            assert_eq!(env[0].name, "JANUS_REPORT_URL", "{}", c.name);
            assert_eq!(
                env[0].value.as_deref(),
                Some("http://op.ns.svc:8080/v1/report")
            );
        }
        tell_report_url(&mut spec, None);
        assert!(spec.containers[0].env.as_ref().unwrap().is_empty());
    }

    #[test]
    fn quantities_are_read_as_bytes() {
        for (q, b) in [
            ("20Gi", Some(20u64 << 30)),
            ("1.5Ki", Some(1536)),
            ("500M", Some(500_000_000)),
            ("1e9", Some(1_000_000_000)),
            ("1E3", Some(1000)),
            ("123", Some(123)),
            ("1500m", Some(2)),
            ("Gi", None),
            ("20GB", None),
            ("-1Gi", None),
        ] {
            assert_eq!(quantity_bytes(q), b, "{q}");
        }
    }

    #[test]
    fn the_trainer_is_told_the_scratch_limit_the_pod_ends_up_with() {
        let mut spec = PodSpec {
            containers: vec![k8s_openapi::api::core::v1::Container {
                name: "trainer".into(),
                ..Default::default()
            }],
            volumes: Some(vec![scratch_volume(Some(&Quantity("64Gi".into())))]),
            ..Default::default()
        };
        tell_scratch_limit(&mut spec, "trainer");
        let env = spec.containers[0].env.clone().unwrap();
        assert_eq!(env.len(), 1);
        assert_eq!(
            (env[0].name.as_str(), env[0].value.as_deref()),
            ("JANUS_SCRATCH_LIMIT_BYTES", Some("68719476736"))
        );
        spec.volumes = Some(vec![scratch_volume(None)]);
        tell_scratch_limit(&mut spec, "trainer");
        assert_eq!(
            spec.containers[0].env.as_ref().unwrap().len(),
            0,
            "no limit, nothing told"
        );
    }
}
