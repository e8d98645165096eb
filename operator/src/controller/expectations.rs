//! What this operator has written that its caches may not show yet (controller-runtime's
//! and Kubeflow's "expectations"). A reconcile that runs before the watches deliver its
//! own last writes would otherwise see ranks missing and create them again (each a 409,
//! and the static children applied again with them), or would need the job read fresh
//! from the API server every time something changes.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

/// How long created pods are expected before the cache is trusted again (a pod deleted
/// before its watch event arrived, or a watch that restarted, never shows up).
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Per job (`namespace/name`): the pods created and not yet seen, and the
/// resourceVersion of the job's last status write.
#[derive(Default)]
pub struct Expectations {
    jobs: Mutex<HashMap<String, Expected>>,
}

#[derive(Default)]
struct Expected {
    pods: HashSet<String>,
    since: Option<Instant>,
    written: Option<String>,
}

impl Expectations {
    /// `pods` were created (or found existing) for the job `key`.
    pub fn created(&self, key: &str, pods: impl IntoIterator<Item = String>, now: Instant) {
        let mut jobs = self.jobs.lock().unwrap();
        let e = jobs.entry(key.to_string()).or_default();
        e.pods.extend(pods);
        e.since = Some(now);
    }

    /// How long to wait for the cache still, when some created pod of the job is not in
    /// `cached` yet; forgets those it shows.
    pub fn pods_pending(&self, key: &str, cached: &[Arc<Pod>], now: Instant) -> Option<Duration> {
        let mut jobs = self.jobs.lock().unwrap();
        let e = jobs.get_mut(key)?;
        for p in cached {
            e.pods.remove(&p.name_any());
        }
        let left = e
            .since
            .and_then(|t| TIMEOUT.checked_sub(now.duration_since(t)))
            .filter(|l| !l.is_zero());
        match left {
            Some(left) if !e.pods.is_empty() => Some(left),
            _ => {
                e.pods.clear();
                e.since = None;
                None
            }
        }
    }

    /// The job's status was written; the API server answered with `resource_version`.
    pub fn wrote_status(&self, key: &str, resource_version: Option<String>) {
        let mut jobs = self.jobs.lock().unwrap();
        jobs.entry(key.to_string()).or_default().written = resource_version;
    }

    /// Whether a cached job at `resource_version` shows this process's last status
    /// write (then it is as fresh as a read would be, for what decisions depend on).
    /// Without a write yet it does: the cache was listed after this process started,
    /// so it shows every write made before.
    pub fn shows_last_write(&self, key: &str, resource_version: Option<&str>) -> bool {
        let jobs = self.jobs.lock().unwrap();
        match jobs.get(key).and_then(|e| e.written.as_deref()) {
            None => true,
            written => written == resource_version,
        }
    }

    /// The job is gone.
    pub fn forget(&self, key: &str) {
        self.jobs.lock().unwrap().remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str) -> Arc<Pod> {
        Arc::new(serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap())
    }

    #[test]
    fn created_pods_are_pending_until_the_cache_shows_them_or_the_timeout() {
        let e = Expectations::default();
        let t0 = Instant::now();
        assert_eq!(e.pods_pending("ns/j", &[], t0), None);
        e.created("ns/j", ["j-worker-0".into(), "j-worker-1".into()], t0);
        assert_eq!(
            e.pods_pending("ns/j", &[pod("j-worker-0")], t0),
            Some(TIMEOUT)
        );
        assert_eq!(e.pods_pending("ns/other", &[], t0), None);
        // Seen once is enough: a later cache without it (deleted) does not wait again.
        assert_eq!(e.pods_pending("ns/j", &[pod("j-worker-1")], t0), None);
        assert_eq!(e.pods_pending("ns/j", &[], t0), None);

        e.created("ns/j", ["j-worker-2".into()], t0);
        let later = t0 + TIMEOUT - Duration::from_secs(1);
        assert_eq!(
            e.pods_pending("ns/j", &[], later),
            Some(Duration::from_secs(1))
        );
        assert_eq!(e.pods_pending("ns/j", &[], t0 + TIMEOUT), None);
        assert_eq!(
            e.pods_pending("ns/j", &[], t0),
            None,
            "forgotten after the timeout"
        );
    }

    #[test]
    fn a_cached_job_is_fresh_only_at_the_resource_version_last_written() {
        let e = Expectations::default();
        assert!(
            e.shows_last_write("ns/j", Some("10")),
            "nothing written by this process yet"
        );
        e.wrote_status("ns/j", Some("11".into()));
        assert!(!e.shows_last_write("ns/j", Some("10")));
        assert!(e.shows_last_write("ns/j", Some("11")));
        assert!(
            !e.shows_last_write("ns/j", Some("12")),
            "someone else wrote since"
        );
        assert!(!e.shows_last_write("ns/j", None));
        e.forget("ns/j");
        assert!(e.shows_last_write("ns/j", Some("10")));
    }
}
