//! The job's PodGroup (gang scheduling by Volcano or the coscheduling plugin), applied
//! before its pods. Without its scheduler's CRD (404) the job says so and waits.

use janus_crds::training::reason;
use janus_crds::{JanusTrainingJob, JanusTrainingJobStatus};
use jiff::Timestamp;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::ResourceExt;

use super::children;
use crate::controller::apply::MANAGER;
use crate::controller::Context;
use crate::error::{Error, Result};

pub async fn ensure(
    ctx: &Context<JanusTrainingJob>,
    jobs: &Api<JanusTrainingJob>,
    job: &JanusTrainingJob,
    st: &JanusTrainingJobStatus,
    now: Timestamp,
) -> Result<()> {
    let Some((ar, pg)) = children::pod_group(job)? else {
        return Ok(());
    };
    let ns = job
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ns, &ar);
    let applied = api
        .patch(
            &job.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&pg),
        )
        .await;
    match applied {
        Err(kube::Error::Api(e)) if e.code == 404 => {
            let msg = format!(
                "the PodGroup API {}/{} is not installed (its scheduler's CRD): install it, or remove spec.scheduling.podGroup ({})",
                ar.group, ar.version, e.message
            );
            ctx.blocked(
                jobs,
                job,
                st.clone(),
                reason::POD_GROUP_NOT_INSTALLED,
                msg,
                now,
            )
            .await?;
            Err(kube::Error::Api(e).into())
        }
        r => r.map(|_| ()).map_err(Error::from),
    }
}
