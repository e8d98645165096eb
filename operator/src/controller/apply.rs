//! Every write of the operator's own objects is a server-side apply under one field
//! manager: children (applying them again is a no-op) and the status subresource,
//! written whole.

use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{is_status, Error, Result};

/// Field manager of everything the operator applies.
pub const MANAGER: &str = "janus-operator";

/// Server-side apply of `obj` in `ns`.
pub async fn apply<K>(client: &Client, ns: &str, obj: &K) -> Result<()>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + Serialize
        + DeserializeOwned,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let name = obj
        .meta()
        .name
        .clone()
        .ok_or(Error::MissingField("metadata.name"))?;
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await?;
    Ok(())
}

/// Server-side apply of `job`'s whole status. The uid makes it a precondition: a job
/// deleted and created again under the name since the decision (which may be the
/// cached job's) refuses it with a 409.
pub async fn write_status<K, S>(jobs: &Api<K>, job: &K, status: &S) -> Result<K>
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + DeserializeOwned,
    S: Serialize,
{
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": {"uid": job.meta().uid},
        "status": status,
    });
    let written = jobs
        .patch_status(
            &job.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    Ok(written)
}

/// Delete `job` itself (its TTL passed): this job, not one created since under its
/// name (the decision may be the cached job's). Gone already is done.
pub async fn delete_job<K>(jobs: &Api<K>, job: &K) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + DeserializeOwned,
{
    let this = DeleteParams {
        preconditions: Some(Preconditions {
            uid: job.meta().uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::background()
    };
    match jobs.delete(&job.name_any(), &this).await {
        Err(e) if !is_status(&e, 404) => Err(e.into()),
        _ => Ok(()),
    }
}
