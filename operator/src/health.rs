//! Liveness of the controller, for `/healthz` (the Deployment's liveness probe).
//!
//! A process that answers HTTP is not necessarily a controller that works. The
//! controller is *wedged*, and `/healthz` answers 503 naming why, when for longer than
//! the stall limit:
//! - a watch it depends on (jobs, pods, nodes) has failed without recovering (for
//!   example RBAC forbids the list, or the API server's watch cache is gone); the
//!   runtime retries with backoff forever, so nothing else would notice, or
//! - one reconcile has been running (a hung request, a deadlock).
//!
//! The kubelet then restarts the container; a standby replica takes the Lease. An
//! idle controller with no jobs is healthy: nothing here expects activity.
//!
//! Readiness (`/readyz`) is stricter and immediate: a replica that runs the controllers
//! is ready once every watch it started has listed its objects (the caches the
//! decisions read are complete) and while none is failing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The watches the controller runs.
pub const WATCHES: [&str; 8] = [
    "jobs",
    "pods",
    "nodes",
    "eval-jobs",
    "eval-pods",
    "eval-nodes",
    "eval-training-jobs",
    "eval-baselines",
];

#[derive(Default)]
struct State {
    /// Per watch: since when it has failed without an event in between.
    failing_since: HashMap<&'static str, (Instant, String)>,
    /// Per started watch: whether its cache has been filled by a complete list.
    synced: HashMap<&'static str, bool>,
    /// Reconciles in flight: id -> (job, start).
    in_flight: HashMap<u64, (String, Instant)>,
}

#[derive(Clone)]
pub struct Health {
    stall: Duration,
    state: Arc<Mutex<State>>,
    next_id: Arc<AtomicU64>,
}

/// Marks a reconcile in flight until dropped.
pub struct ReconcileGuard {
    health: Health,
    id: u64,
}

impl Drop for ReconcileGuard {
    fn drop(&mut self) {
        self.health.lock().in_flight.remove(&self.id);
    }
}

impl Health {
    pub fn new(stall: Duration) -> Self {
        Self {
            stall,
            state: Default::default(),
            next_id: Default::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere must not take the probe down with a poisoned lock.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A watch was started: not ready until its first list completes.
    pub fn watch_started(&self, watch: &'static str) {
        self.lock().synced.entry(watch).or_insert(false);
    }

    /// A watch delivered an event (it works again) ...
    pub fn watch_ok(&self, watch: &'static str) {
        self.lock().failing_since.remove(watch);
    }

    /// ... its first complete list (`InitDone`): its cache is complete.
    pub fn watch_synced(&self, watch: &'static str) {
        let mut s = self.lock();
        s.failing_since.remove(watch);
        s.synced.insert(watch, true);
    }

    /// Ok while every started watch has synced and none is failing, else why not.
    pub fn readiness(&self) -> Result<(), String> {
        let s = self.lock();
        let mut problems: Vec<String> = s
            .synced
            .iter()
            .filter(|(_, synced)| !**synced)
            .map(|(w, _)| format!("the {w} cache has not synced"))
            .chain(
                s.failing_since
                    .iter()
                    .map(|(w, (_, e))| format!("the {w} watch is failing: {e}")),
            )
            .collect();
        problems.sort();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// ... or failed; the first failure of a run of failures starts the clock.
    pub fn watch_failed(&self, watch: &'static str, error: &str, now: Instant) {
        self.lock()
            .failing_since
            .entry(watch)
            .or_insert_with(|| (now, error.to_string()));
    }

    pub fn reconcile_started(&self, job: String, now: Instant) -> ReconcileGuard {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().in_flight.insert(id, (job, now));
        ReconcileGuard {
            health: self.clone(),
            id,
        }
    }

    /// Ok, or why the controller is wedged.
    pub fn check(&self, now: Instant) -> Result<(), String> {
        let s = self.lock();
        let mut problems: Vec<String> = s
            .failing_since
            .iter()
            .filter(|(_, (since, _))| now.duration_since(*since) > self.stall)
            .map(|(w, (since, e))| {
                format!(
                    "the {w} watch has failed for {}s: {e}",
                    now.duration_since(*since).as_secs()
                )
            })
            .collect();
        problems.extend(
            s.in_flight
                .values()
                .filter(|(_, since)| now.duration_since(*since) > self.stall)
                .map(|(job, since)| {
                    format!(
                        "the reconcile of {job} has run for {}s",
                        now.duration_since(*since).as_secs()
                    )
                }),
        );
        problems.sort();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALL: Duration = Duration::from_secs(60);

    #[test]
    fn an_idle_controller_is_healthy() {
        let h = Health::new(STALL);
        assert!(h.check(Instant::now() + Duration::from_secs(3600)).is_ok());
    }

    #[test]
    fn a_watch_failing_past_the_stall_limit_is_wedged_until_it_recovers() {
        let h = Health::new(STALL);
        let t0 = Instant::now();
        h.watch_failed("pods", "pods is forbidden", t0);
        // Later failures do not restart the clock.
        h.watch_failed("pods", "again", t0 + Duration::from_secs(30));
        assert!(h.check(t0 + Duration::from_secs(59)).is_ok());
        let e = h.check(t0 + Duration::from_secs(61)).unwrap_err();
        assert!(
            e.contains("pods watch") && e.contains("forbidden") && e.contains("61s"),
            "{e}"
        );
        h.watch_ok("pods");
        assert!(h.check(t0 + Duration::from_secs(120)).is_ok());
    }

    #[test]
    fn ready_once_every_started_watch_synced_and_not_while_one_fails() {
        let h = Health::new(STALL);
        // A standby replica runs no watches.
        assert!(h.readiness().is_ok());
        h.watch_started("jobs");
        h.watch_started("pods");
        h.watch_synced("jobs");
        let e = h.readiness().unwrap_err();
        assert!(
            e.contains("pods cache has not synced") && !e.contains("jobs"),
            "{e}"
        );
        h.watch_synced("pods");
        assert!(h.readiness().is_ok());
        h.watch_failed("jobs", "jobs is forbidden", Instant::now());
        let e = h.readiness().unwrap_err();
        assert!(
            e.contains("jobs watch is failing: jobs is forbidden"),
            "{e}"
        );
        h.watch_ok("jobs");
        assert!(h.readiness().is_ok());
    }

    #[test]
    fn a_hung_reconcile_is_wedged_and_a_finished_one_is_forgotten() {
        let h = Health::new(STALL);
        let t0 = Instant::now();
        let done = h.reconcile_started("ns/a".into(), t0);
        drop(done);
        let _hung = h.reconcile_started("ns/b".into(), t0);
        let e = h.check(t0 + Duration::from_secs(90)).unwrap_err();
        assert!(e.contains("ns/b") && !e.contains("ns/a"), "{e}");
    }
}
