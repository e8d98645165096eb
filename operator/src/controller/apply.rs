//! Every write of the operator's own objects is a server-side apply under one field
//! manager: children (applying them again is a no-op) and the status subresource,
//! written whole. A child is never taken over: an object that merely has its name is
//! left alone ([`apply_child`]).

use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
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

/// `Kind namespace/name` of `obj`, as a conflict names it.
pub fn describe<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    format!(
        "{} {}/{}",
        K::kind(&()),
        obj.meta().namespace.as_deref().unwrap_or_default(),
        obj.name_any()
    )
}

/// The UID of `obj`'s controller owner reference.
fn controller_uid<K: Resource>(obj: &K) -> Option<&str> {
    obj.meta()
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.as_str())
}

/// Who controls `obj`, in a conflict's words.
pub fn holder<K: Resource>(obj: &K) -> String {
    match obj
        .meta()
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
    {
        Some(o) => format!("is controlled by {} {}", o.kind, o.name),
        None => "has no controller".to_string(),
    }
}

/// Whether `existing` is the child `wanted` describes: controlled by the same job (the
/// UID of `wanted`'s controller owner reference).
pub fn is_ours<K: Resource>(existing: &K, wanted: &K) -> bool {
    let ours = controller_uid(wanted);
    ours.is_some() && controller_uid(existing) == ours
}

/// Server-side apply of child `obj` (its controller owner reference names the job),
/// never taking over an object of its name the job does not control: a forced apply
/// would add the job's owner reference and the garbage collector would later delete
/// that object with the job. `fresh` (a job that made no child yet): create first, one
/// request when nothing is in the way; otherwise read first. An object of the job's is
/// applied with its UID as precondition (replaced since the read: a 409).
pub async fn apply_child<K>(client: &Client, ns: &str, obj: &K, fresh: bool) -> Result<()>
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
    let create = PostParams {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    };
    if fresh {
        match api.create(&create, obj).await {
            Ok(_) => return Ok(()),
            Err(e) if is_status(&e, 409) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let Some(existing) = api.get_opt(&name).await? else {
        api.create(&create, obj).await?;
        return Ok(());
    };
    if !is_ours(&existing, obj) {
        return Err(Error::ChildConflict {
            object: describe(obj),
            holder: holder(&existing),
        });
    }
    let mut obj = obj.clone();
    obj.meta_mut().uid = existing.meta().uid.clone();
    apply(client, ns, &obj).await
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
