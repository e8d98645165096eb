//! Child metadata and the pieces of a pod spec every kind builds the same way: the
//! owner reference that makes a child the job's (garbage-collected with it, its
//! events triggering the job), the label naming the job, the contract environment,
//! GPU requests, the mounted config and the storage Secret.

use std::collections::BTreeMap;

use janus_crds::defaults;
use janus_crds::training::SecretRef;
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, EnvFromSource, EnvVar, EnvVarSource, LocalObjectReference,
    ObjectFieldSelector, ResourceRequirements, SecretEnvSource, ServiceAccount, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

use super::run::Kind;
use crate::error::{Error, Result};

/// Key of the rendered config in a job's ConfigMap.
pub const CONFIG_KEY: &str = "config.yaml";
/// GPU resource name.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";
/// Name of the config volume and its mount.
const CONFIG_VOLUME: &str = "config";

/// The controller owner reference of a child of `job`.
pub fn owner<K: Resource<DynamicType = ()>>(job: &K) -> Result<OwnerReference> {
    job.controller_owner_ref(&())
        .ok_or(Error::MissingField("metadata.uid"))
}

pub fn namespace<K: Resource>(job: &K) -> Result<String> {
    job.namespace()
        .ok_or(Error::MissingField("metadata.namespace"))
}

/// Labels of every child of job `name` of kind `K`: the job's name under the kind's
/// label (selector of its pod watch, and of a training job's Service).
pub fn job_labels<K: Kind>(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(K::POLICY.job_label.to_string(), name.to_string())])
}

/// Metadata of child `name` of `job`: its namespace, the job's label, owned by it.
pub fn child_meta<K: Kind>(job: &K, name: String) -> Result<ObjectMeta> {
    Ok(ObjectMeta {
        name: Some(name),
        namespace: Some(namespace(job)?),
        labels: Some(job_labels::<K>(&job.name_any())),
        owner_references: Some(vec![owner(job)?]),
        ..Default::default()
    })
}

/// ConfigMap `name` of `job` with its rendered config.
pub fn config_map<K: Kind>(job: &K, name: String, rendered: String) -> Result<ConfigMap> {
    Ok(ConfigMap {
        metadata: child_meta(job, name)?,
        data: Some(BTreeMap::from([(CONFIG_KEY.to_string(), rendered)])),
        ..Default::default()
    })
}

/// ServiceAccount `name` of `job`: its pods' identity when they report progress; it
/// holds no permission. It carries the job's image pull secrets too, as a namespace's
/// `default` account carries the namespace's, for whatever reads them from the account.
pub fn service_account<K: Kind>(
    job: &K,
    name: String,
    image_pull_secrets: &[LocalObjectReference],
) -> Result<ServiceAccount> {
    Ok(ServiceAccount {
        metadata: child_meta(job, name)?,
        image_pull_secrets: pull_secrets(image_pull_secrets),
        ..Default::default()
    })
}

/// A job's image pull secrets as a pod's or an account's `imagePullSecrets` (None when
/// there are none, so the field stays unset).
pub fn pull_secrets(secrets: &[LocalObjectReference]) -> Option<Vec<LocalObjectReference>> {
    (!secrets.is_empty()).then(|| secrets.to_vec())
}

/// A plain environment variable.
pub fn plain(k: &str, v: String) -> EnvVar {
    EnvVar {
        name: k.into(),
        value: Some(v),
        ..Default::default()
    }
}

/// An environment variable from the pod's own fields (downward API).
pub fn field(k: &str, path: &str) -> EnvVar {
    EnvVar {
        name: k.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `resources` with `gpus` GPUs requested and limited (none: as given); None when
/// that leaves nothing.
pub fn with_gpus(
    resources: Option<ResourceRequirements>,
    gpus: i32,
) -> Option<ResourceRequirements> {
    let mut resources = resources.unwrap_or_default();
    if gpus > 0 {
        let gpus = Quantity(gpus.to_string());
        resources
            .limits
            .get_or_insert_with(Default::default)
            .insert(GPU_RESOURCE.into(), gpus.clone());
        resources
            .requests
            .get_or_insert_with(Default::default)
            .insert(GPU_RESOURCE.into(), gpus);
    }
    (resources != ResourceRequirements::default()).then_some(resources)
}

/// The storage credentials Secret as the container's environment.
pub fn storage_env(secret: Option<&SecretRef>) -> Option<Vec<EnvFromSource>> {
    secret.map(|s| {
        vec![EnvFromSource {
            secret_ref: Some(SecretEnvSource {
                name: s.name.clone(),
                optional: Some(false),
            }),
            ..Default::default()
        }]
    })
}

/// The volume of ConfigMap `name`, mounted by [`config_mount`].
pub fn config_volume(name: String) -> Volume {
    Volume {
        name: CONFIG_VOLUME.into(),
        config_map: Some(ConfigMapVolumeSource {
            name,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The config, read-only at the directory of `JANUS_CONFIG`.
pub fn config_mount() -> VolumeMount {
    let config_dir = std::path::Path::new(defaults::CONFIG_PATH)
        .parent()
        .expect("config path has a directory")
        .to_string_lossy()
        .into_owned();
    VolumeMount {
        name: CONFIG_VOLUME.into(),
        mount_path: config_dir,
        read_only: Some(true),
        ..Default::default()
    }
}
