//! Stuck states, detected once for every kind: a pod the API server refuses to create
//! (quoting it), a pending pod the scheduler cannot place or the kubelet cannot start
//! (quoting them), pods not running within `schedulingTimeoutSeconds`, and pods on a
//! node down past `unreachableNodeTolerationSeconds`: force-deleted where no kubelet
//! would confirm their deletion (unreachable, or out of service), deleted with their
//! grace period and waited for where the kubelet still reports (`Ready=False`: the old
//! containers may still run, and a new pod of the same name beside them would be a
//! second writer). A training worker and an evaluation's pod in the same state
//! get the same condition (`Running`), reason and Events.

use std::time::Duration;

use janus_crds::pods::{condition, reason};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use super::conditions::{Cond, Transitions, When};
use super::lifecycle::secs;
use super::nodes::Kubelet;
use super::pods::{waiting_text, PodFacts};

/// Refusals of a pod create that only a change elsewhere (the namespace's Pod Security
/// level or quota, a missing namespace or ServiceAccount, the job's template) can lift:
/// the job says so (`FailedCreate`) and the create is retried with the backoff.
pub const REFUSALS: [u16; 4] = [400, 403, 404, 422];

/// The Running=False message of a refused create of `pod`.
pub fn refused(noun: &str, pod: &str, message: &str) -> String {
    let what = if noun == "pod" {
        "pod".to_string()
    } else {
        format!("{noun} pod")
    };
    format!("creating {what} {pod} was refused: {message}")
}

/// Reasons of a Running=False condition that hold only until a pod exists.
const UNTIL_CREATED: [&str; 3] = [
    reason::FAILED_CREATE,
    reason::POD_GROUP_NOT_INSTALLED,
    reason::CHILD_CONFLICT,
];

/// The first pod of `current` (the pods of the current attempt) that waits makes
/// Running=False with its reason and the underlying message, with a Warning Event once
/// per cause. With none waiting, a stuck condition's old words would mislead: it says
/// the pods are pending (a refused create holds until one of these pods exists).
pub fn running<R>(
    t: &mut Transitions,
    conds: &mut Vec<Condition>,
    current: &[&PodFacts<R>],
    noun: &str,
) {
    let waits = current.iter().filter(|p| !p.terminating).find_map(|p| {
        let (r, m) = p.waiting.as_ref()?;
        Some((*r, waiting_text(noun, &p.name, r, m)))
    });
    if let Some((why, msg)) = waits {
        t.announce(
            conds,
            Cond::new(condition::RUNNING, false, why, &msg),
            When::OnCause,
            true,
        );
        return;
    }
    let Some(c) = conds
        .iter_mut()
        .find(|c| c.type_ == condition::RUNNING && c.status == "False")
    else {
        return;
    };
    if c.reason == reason::WORKERS_PENDING
        || reason::CONTAINER_WAITING.contains(&c.reason.as_str())
        || (UNTIL_CREATED.contains(&c.reason.as_str()) && !current.is_empty())
    {
        c.reason = reason::WORKERS_PENDING.into();
        c.message = format!("waiting for the {noun}s to start");
    }
}

/// Where a group of pods that must run stands with `schedulingTimeoutSeconds`.
#[derive(Debug, Clone, PartialEq)]
pub enum Timeout {
    /// No timeout, no pod yet, or they run.
    None,
    /// This long left (reconcile then).
    Left(Duration),
    /// Passed; `why` quotes the first pod that waits (`": <noun> <pod> <reason>:
    /// <message>"`, empty when none says why).
    Passed { timeout: i64, why: String },
}

/// `group` (not all running) must run within `timeout` seconds of its first pod's
/// creation.
pub fn scheduling<R>(
    timeout: Option<i64>,
    group: &[&PodFacts<R>],
    running: bool,
    noun: &str,
    now: Timestamp,
) -> Timeout {
    let first = group.iter().filter_map(|p| p.created_at).min();
    let (false, Some(timeout), Some(first)) = (running, timeout, first) else {
        return Timeout::None;
    };
    let left = timeout - now.duration_since(first).as_secs();
    if left > 0 {
        return Timeout::Left(secs(left));
    }
    let why = group
        .iter()
        .find_map(|p| {
            p.waiting
                .as_ref()
                .map(|(r, m)| format!(": {noun} {} {r}: {m}", p.name))
        })
        .unwrap_or_default();
    Timeout::Passed { timeout, why }
}

/// Seconds left of the toleration (`toleration` seconds) of `p`'s node being down
/// (<= 0: past it), counted from when the node went down or the pod was created,
/// whichever is later (a pod placed on a node long down, tolerating its taints, gets
/// the whole toleration too). None for a node out of service: nothing to wait for.
pub fn toleration_left<R>(toleration: i64, p: &PodFacts<R>, now: Timestamp) -> Option<i64> {
    let d = p.node_down.as_ref()?;
    if d.kubelet == Kubelet::OutOfService {
        return Some(0);
    }
    let since = p.created_at.map_or(d.since, |c| c.max(d.since));
    Some(toleration - now.duration_since(since).as_secs())
}

pub fn past_toleration<R>(toleration: i64, p: &PodFacts<R>, now: Timestamp) -> bool {
    toleration_left(toleration, p, now).is_some_and(|l| l <= 0)
}

/// Pods to delete with grace period 0: those on a node unreachable for longer than
/// the toleration, or out of service, that are being deleted already (by anyone: a
/// Terminating pod there never goes) or that `delete` deletes now. Pods of another
/// owner are included only when already terminating: their deletion was asked for, it
/// only never completes. Never a pod on a node whose kubelet reports (`Ready=False`):
/// its containers may still run, and the kubelet confirms the deletion once they stop.
pub fn force_delete<R>(
    toleration: i64,
    pods: &[PodFacts<R>],
    delete: &[String],
    now: Timestamp,
) -> Vec<String> {
    pods.iter()
        .filter(|p| past_toleration(toleration, p, now))
        .filter(|p| {
            p.node_down
                .as_ref()
                .is_some_and(|d| d.kubelet != Kubelet::Alive)
        })
        .filter(|p| p.terminating || (!p.foreign && delete.contains(&p.name)))
        .map(|p| p.name.clone())
        .collect()
}

/// When a toleration of a down node ends next (reconcile then).
pub fn next_toleration_end<R>(
    toleration: i64,
    pods: &[PodFacts<R>],
    now: Timestamp,
) -> Option<Duration> {
    pods.iter()
        .filter_map(|p| toleration_left(toleration, p, now))
        .filter(|l| *l > 0)
        .min()
        .map(secs)
}

/// A pod's node down past the toleration, or out of service (and the pod not
/// finished): its reason (`NodeUnreachable`, or `NodeNotReady` where the kubelet still
/// reports) and words.
pub fn unreachable<R>(
    toleration: i64,
    noun: &str,
    p: &PodFacts<R>,
    now: Timestamp,
) -> Option<(&'static str, String)> {
    let d = p
        .node_down
        .as_ref()
        .filter(|_| past_toleration(toleration, p, now) && !p.finished())?;
    let (node, pod, why) = (&d.node, &p.name, &d.why);
    let since = now.duration_since(d.since).as_secs();
    Some(match d.kubelet {
        Kubelet::OutOfService => (
            reason::NODE_UNREACHABLE,
            format!("node {node} of {noun} {pod} is out of service: {why}; its pods are force-deleted"),
        ),
        Kubelet::Silent => (
            reason::NODE_UNREACHABLE,
            format!(
                "node {node} of {noun} {pod} has been unavailable for {since}s, longer than runPolicy.unreachableNodeTolerationSeconds ({toleration}s): {why}; its pods are force-deleted"
            ),
        ),
        Kubelet::Alive => (
            reason::NODE_NOT_READY,
            format!(
                "node {node} of {noun} {pod} has been NotReady for {since}s, longer than runPolicy.unreachableNodeTolerationSeconds ({toleration}s): {why}; its kubelet still reports, so its pods are deleted with their grace period, never forced, and made again once it confirms them gone"
            ),
        ),
    })
}
