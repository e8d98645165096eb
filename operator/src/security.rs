//! Every pod the operator creates passes the `restricted` Pod Security Standard, so a
//! namespace labelled `pod-security.kubernetes.io/enforce: restricted` admits it: no root,
//! the runtime's default seccomp profile, no capabilities, no privilege escalation. The
//! images run as uid 1000 (images/trainer.Dockerfile); a template override may still
//! loosen this where a namespace allows it.

use k8s_openapi::api::core::v1::{
    Capabilities, EmptyDirVolumeSource, PodSecurityContext, SeccompProfile, SecurityContext,
    Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// Where the scratch volume is mounted: the trainer's `TMPDIR` and `HOME` (model and
/// dataset downloads, tokenizer caches), so a 7B download does not fill the node's
/// container layer and is counted against the pod's ephemeral storage.
pub const SCRATCH_PATH: &str = "/tmp";
const SCRATCH_VOLUME: &str = "scratch";

pub fn pod_security_context() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
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
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
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

pub fn scratch_mount() -> VolumeMount {
    VolumeMount {
        name: SCRATCH_VOLUME.into(),
        mount_path: SCRATCH_PATH.into(),
        ..Default::default()
    }
}
