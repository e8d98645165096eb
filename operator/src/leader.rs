//! Leader election on a `coordination.k8s.io/v1` Lease, so two replicas never both
//! reconcile. Acquire and renew are compare-and-swap writes (`replace` with the
//! resourceVersion we read); a candidate takes the lease over only after it has seen
//! the same record unchanged for `leaseDurationSeconds` on its own clock (no clock
//! skew assumptions), as client-go does.

use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::ResourceExt;

use crate::error::is_status;

#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub name: String,
    pub identity: String,
    pub lease_duration: Duration,
    /// A leader that could not renew for this long steps down.
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

pub struct LeaderElector {
    api: Api<Lease>,
    cfg: LeaseConfig,
    /// resourceVersion of the last lease record seen, and when it was first seen.
    observed: Option<(String, Instant)>,
    /// When the last successful acquire or renew request was sent: the renewTime it
    /// wrote is no earlier, so leading until this + `renew_deadline` is safe.
    renewed_at: Option<Instant>,
}

/// Why a bounded acquire / renew attempt did not get the lease.
#[derive(Debug)]
enum Attempt {
    Held,
    NotHeld,
    Failed(String),
}

impl LeaderElector {
    pub fn new(api: Api<Lease>, cfg: LeaseConfig) -> Self {
        LeaderElector {
            api,
            cfg,
            observed: None,
            renewed_at: None,
        }
    }

    pub fn identity(&self) -> &str {
        &self.cfg.identity
    }

    fn my_spec(&self, transitions: i32) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        LeaseSpec {
            holder_identity: Some(self.cfg.identity.clone()),
            lease_duration_seconds: Some(self.cfg.lease_duration.as_secs() as i32),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// One attempt: `Ok(true)` when this replica holds the lease afterwards.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.cfg.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.cfg.name.clone()),
                    ..Default::default()
                },
                spec: Some(self.my_spec(0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if is_status(&e, 409) => Ok(false),
                Err(e) => Err(e),
            };
        };
        let rv = lease.resource_version().unwrap_or_default();
        if self.observed.as_ref().map(|(r, _)| r) != Some(&rv) {
            self.observed = Some((rv, Instant::now()));
        }
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let duration = Duration::from_secs(
            spec.lease_duration_seconds
                .unwrap_or(self.cfg.lease_duration.as_secs() as i32)
                .max(1) as u64,
        );
        let seen_for = self
            .observed
            .as_ref()
            .map(|(_, t)| t.elapsed())
            .unwrap_or_default();
        let new_spec = if holder.as_deref() == Some(self.cfg.identity.as_str()) {
            LeaseSpec {
                renew_time: Some(MicroTime(Timestamp::now())),
                lease_duration_seconds: Some(self.cfg.lease_duration.as_secs() as i32),
                ..spec
            }
        } else if holder.is_none() || seen_for > duration {
            self.my_spec(spec.lease_transitions.unwrap_or(0) + 1)
        } else {
            return Ok(false);
        };
        lease.spec = Some(new_spec);
        // `lease` carries the resourceVersion we read: the write fails if anyone wrote since.
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await
        {
            Ok(written) => {
                self.observed = Some((
                    written.resource_version().unwrap_or_default(),
                    Instant::now(),
                ));
                Ok(true)
            }
            Err(e) if is_status(&e, 409) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// One attempt that gives up after `limit`: a request that hangs (kube's read
    /// timeout is minutes) must not keep a leader reconciling past its renew deadline.
    async fn attempt_within(&mut self, limit: Duration) -> Attempt {
        let sent = Instant::now();
        match tokio::time::timeout(limit, self.try_acquire_or_renew()).await {
            Ok(Ok(true)) => {
                self.renewed_at = Some(sent);
                Attempt::Held
            }
            Ok(Ok(false)) => Attempt::NotHeld,
            Ok(Err(e)) => Attempt::Failed(e.to_string()),
            Err(_) => Attempt::Failed(format!("no answer within {limit:?}")),
        }
    }

    /// How much longer this replica may lead without another successful renewal.
    fn lead_left(&self) -> Duration {
        let since = self
            .renewed_at
            .map(|t| t.elapsed())
            .unwrap_or(Duration::MAX);
        self.cfg.renew_deadline.saturating_sub(since)
    }

    /// Wait until this replica holds the lease.
    pub async fn acquire(&mut self) {
        loop {
            match self.attempt_within(self.cfg.renew_deadline).await {
                Attempt::Held => {
                    tracing::info!(lease = %self.cfg.name, identity = %self.cfg.identity, "acquired the leader lease");
                    return;
                }
                Attempt::NotHeld => {}
                Attempt::Failed(e) => {
                    tracing::warn!(error = %e, "leader election: lease request failed")
                }
            }
            tokio::time::sleep(self.cfg.retry_period).await;
        }
    }

    /// Keep renewing; returns when leadership is lost (another holder, or no successful
    /// renewal within `renew_deadline` of the last one), at the latest at that deadline,
    /// so the caller can stop reconciling before a standby may take the lease over.
    pub async fn hold(&mut self) {
        loop {
            tokio::time::sleep(self.cfg.retry_period.min(self.lead_left())).await;
            let left = self.lead_left();
            if left.is_zero() {
                tracing::error!("could not renew the leader lease in time");
                return;
            }
            match self.attempt_within(left).await {
                Attempt::Held => {}
                Attempt::NotHeld => {
                    tracing::error!("leader lease taken by another replica");
                    return;
                }
                Attempt::Failed(e) => {
                    tracing::warn!(error = %e, "leader election: renewal failed")
                }
            }
        }
    }

    /// Give the lease up (on shutdown) so a standby takes over at once.
    pub async fn release(&mut self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.cfg.name).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(self.cfg.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        if let Err(e) = self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await
        {
            tracing::warn!(error = %e, "could not release the leader lease");
        } else {
            tracing::info!("released the leader lease");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use http::{Method, Request, Response};
    use kube::client::Body;

    use super::*;

    const ME: &str = "me";

    fn lease(holder: &str, rv: usize) -> Body {
        let l = serde_json::json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": "l", "namespace": "default", "resourceVersion": rv.to_string()},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 2}
        });
        Body::from(serde_json::to_vec(&l).unwrap())
    }

    /// An API server whose lease is held by `holder`; it answers the first `hanging`
    /// writes never (a request stuck until kube's read timeout), later ones at once.
    fn elector(holder: &'static str, hanging: usize) -> LeaderElector {
        let writes = Arc::new(AtomicUsize::new(0));
        let svc = tower::service_fn(move |req: Request<Body>| {
            let writes = writes.clone();
            async move {
                if req.method() == Method::GET {
                    return Ok::<_, Infallible>(Response::new(lease(holder, 1)));
                }
                let n = writes.fetch_add(1, Ordering::SeqCst);
                if n < hanging {
                    futures::future::pending::<()>().await;
                }
                Ok(Response::new(lease(ME, n + 2)))
            }
        });
        let api = Api::namespaced(kube::Client::new(svc, "default"), "default");
        LeaderElector::new(
            api,
            LeaseConfig {
                name: "l".into(),
                identity: ME.into(),
                lease_duration: Duration::from_secs(2),
                renew_deadline: Duration::from_millis(500),
                retry_period: Duration::from_millis(100),
            },
        )
    }

    #[tokio::test]
    async fn a_hanging_renewal_stops_leading_at_the_renew_deadline() {
        let mut el = elector(ME, usize::MAX);
        el.renewed_at = Some(Instant::now());
        let t = Instant::now();
        tokio::time::timeout(Duration::from_secs(5), el.hold())
            .await
            .expect("hold() returns although the renewal never answers");
        let took = t.elapsed();
        // Before a standby may take over (leaseDuration 2 s after the last renewal).
        assert!(
            took >= Duration::from_millis(450) && took < Duration::from_millis(1500),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn a_hanging_acquire_request_is_retried() {
        let mut el = elector("", 1);
        tokio::time::timeout(Duration::from_secs(5), el.acquire())
            .await
            .expect("acquire() retries after a request that never answers");
        assert!(el.lead_left() > Duration::ZERO);
    }

    #[tokio::test]
    async fn successful_renewals_keep_leading() {
        let mut el = elector(ME, 0);
        el.acquire().await;
        assert!(
            tokio::time::timeout(Duration::from_millis(1500), el.hold())
                .await
                .is_err(),
            "stepped down although every renewal succeeded"
        );
    }
}
