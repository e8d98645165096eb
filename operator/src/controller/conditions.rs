//! Conditions and their Events, written together: a status's conditions change through
//! [`Transitions`], which publishes an Event for a transition by the rule its caller
//! names (a new status, a new reason, or each distinct cause once), so a kind never
//! sets a condition and forgets its Event, nor repeats a Warning for the same cause.

use crate::events::{Event, EventType, Recorder};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use std::fmt::Debug;

use kube::core::object::HasStatus;
use kube::Resource;
use serde::Serialize;

/// A kind's status, written whole.
pub trait JobStatus: Serialize + Clone + PartialEq + Default + Debug + Send + Sync {
    fn conditions(&self) -> &[Condition];
    fn conditions_mut(&mut self) -> &mut Vec<Condition>;
    /// `status.observedGeneration`.
    fn observed_generation_mut(&mut self) -> &mut Option<i64>;
}

/// [`JobStatus`] for a kind's status type with the usual `conditions` and
/// `observed_generation` fields.
#[macro_export]
macro_rules! job_status {
    ($status:ty) => {
        impl $crate::controller::conditions::JobStatus for $status {
            fn conditions(&self) -> &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition] {
                &self.conditions
            }

            fn conditions_mut(
                &mut self,
            ) -> &mut Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
                &mut self.conditions
            }

            fn observed_generation_mut(&mut self) -> &mut Option<i64> {
                &mut self.observed_generation
            }
        }
    };
}

/// An Event to publish: (warning?, reason, note).
#[derive(Debug, Clone, PartialEq)]
pub struct EventSpec {
    pub warning: bool,
    pub reason: &'static str,
    pub note: String,
}

/// Set condition `type_` (keeping `lastTransitionTime` when its status is unchanged).
pub fn set_condition(
    conds: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    now: Timestamp,
) {
    let status = if status { "True" } else { "False" }.to_string();
    match conds.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = Time(now);
            }
            c.status = status;
            c.reason = reason.into();
            c.message = message.into();
        }
        None => conds.push(Condition {
            type_: type_.into(),
            status,
            reason: reason.into(),
            message: message.into(),
            last_transition_time: Time(now),
            observed_generation: None,
        }),
    }
}

/// Set `type_` to False only where it exists (conditions that never happened stay absent).
pub fn clear_condition(
    conds: &mut [Condition],
    type_: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
) {
    if let Some(c) = conds.iter_mut().find(|c| c.type_ == type_) {
        if c.status != "False" {
            c.status = "False".into();
            c.last_transition_time = Time(now);
            c.reason = reason.into();
            c.message = message.into();
        }
    }
}

pub fn has_condition(conds: &[Condition], type_: &str, status: &str) -> bool {
    conds.iter().any(|c| c.type_ == type_ && c.status == status)
}

/// When a condition's transition is worth an Event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// Always (each occurrence is news: a restart).
    Always,
    /// When the condition is new or its status changed.
    OnStatus,
    /// When the condition is new, or its status or reason changed.
    OnReason,
    /// Once per distinct cause: when its reason or message is new (a stuck pod's
    /// Warning is not repeated while the scheduler says the same).
    OnCause,
}

/// One condition as it is to be.
#[derive(Debug, Clone, Copy)]
pub struct Cond<'a> {
    pub type_: &'a str,
    pub status: bool,
    pub reason: &'static str,
    pub message: &'a str,
}

impl<'a> Cond<'a> {
    pub fn new(type_: &'a str, status: bool, reason: &'static str, message: &'a str) -> Self {
        Self {
            type_,
            status,
            reason,
            message,
        }
    }
}

/// The transitions of a status being made: the conditions it had (as read), and the
/// Events of the changes made since.
#[derive(Debug)]
pub struct Transitions {
    old: Vec<Condition>,
    now: Timestamp,
    pub events: Vec<EventSpec>,
}

impl Transitions {
    /// Transitions from the conditions `old` (the status as read), at `now`.
    pub fn new(old: &[Condition], now: Timestamp) -> Self {
        Self {
            old: old.to_vec(),
            now,
            events: vec![],
        }
    }

    pub fn now(&self) -> Timestamp {
        self.now
    }

    /// Whether the status as read had condition `type_` at `status`.
    pub fn had(&self, type_: &str, status: &str) -> bool {
        has_condition(&self.old, type_, status)
    }

    /// Condition `type_` of the status as read.
    pub fn old(&self, type_: &str) -> Option<&Condition> {
        self.old.iter().find(|c| c.type_ == type_)
    }

    /// Set `c` in `conds`, with no Event.
    pub fn set(&self, conds: &mut Vec<Condition>, c: Cond) {
        set_condition(conds, c.type_, c.status, c.reason, c.message, self.now);
    }

    /// Set `c` in `conds`, and publish an Event of its reason and message when `when`
    /// says the change from the status as read is news. Returns whether it was.
    pub fn announce(
        &mut self,
        conds: &mut Vec<Condition>,
        c: Cond,
        when: When,
        warning: bool,
    ) -> bool {
        self.announce_as(conds, c, when, warning, c.message)
    }

    /// The same with an Event note of its own.
    pub fn announce_as(
        &mut self,
        conds: &mut Vec<Condition>,
        c: Cond,
        when: When,
        warning: bool,
        note: &str,
    ) -> bool {
        let news = self.is_news(&c, when);
        self.set(conds, c);
        if news {
            self.event(warning, c.reason, note);
        }
        news
    }

    fn is_news(&self, c: &Cond, when: When) -> bool {
        let status = if c.status { "True" } else { "False" };
        let old = self.old(c.type_);
        match when {
            When::Always => true,
            When::OnStatus => old.is_none_or(|o| o.status != status),
            When::OnReason => old.is_none_or(|o| o.status != status || o.reason != c.reason),
            When::OnCause => old.is_none_or(|o| o.reason != c.reason || o.message != c.message),
        }
    }

    /// Set `type_` False only where it exists, with no Event.
    pub fn clear(&self, conds: &mut [Condition], type_: &str, reason: &str, message: &str) {
        clear_condition(conds, type_, reason, message, self.now);
    }

    /// Publish an Event.
    pub fn event(&mut self, warning: bool, reason: &'static str, note: impl Into<String>) {
        self.events.push(EventSpec {
            warning,
            reason,
            note: note.into(),
        });
    }

    /// The terminal condition `c` (True) with its Event; the conditions of a job under
    /// way in `clears` False where they exist, with its reason and message.
    pub fn finish(&mut self, conds: &mut Vec<Condition>, c: Cond, warning: bool, clears: &[&str]) {
        self.set(conds, c);
        for type_ in clears {
            self.clear(conds, type_, c.reason, c.message);
        }
        self.event(warning, c.reason, c.message);
    }
}

/// The start of a kind's next status: the status as read, the one made from it (which
/// observes the job's generation), and the transitions between them.
pub fn begin<K>(job: &K, now: Timestamp) -> (K::Status, K::Status, Transitions)
where
    K: Resource + HasStatus<Status: JobStatus>,
{
    let old = job.status().cloned().unwrap_or_default();
    let mut s = old.clone();
    *s.observed_generation_mut() = job.meta().generation;
    let t = Transitions::new(old.conditions(), now);
    (old, s, t)
}

/// The Events API refuses a note over 1 KiB (the whole Event would be lost): a
/// condition message quoting a container's termination message can be longer.
pub fn event_note(note: &str) -> String {
    const MAX: usize = 1024;
    if note.len() <= MAX {
        return note.to_string();
    }
    let mut end = MAX - '…'.len_utf8();
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &note[..end])
}

/// Publish `ev` about `reference`; a failure is logged, never the reconcile's.
pub async fn publish(recorder: &Recorder, reference: &ObjectReference, ev: &EventSpec) {
    let event = Event {
        type_: if ev.warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: ev.reason.into(),
        note: Some(event_note(&ev.note)),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, reference).await {
        tracing::warn!(object = ?reference.name, error = %e, "could not publish an event");
    }
}

/// Publish `events` in order, in a task of their own: best effort, without holding up
/// the reconcile.
pub fn publish_all(recorder: &Recorder, reference: ObjectReference, events: Vec<EventSpec>) {
    if events.is_empty() {
        return;
    }
    let recorder = recorder.clone();
    tokio::spawn(async move {
        for ev in &events {
            publish(&recorder, &reference, ev).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        "2026-01-01T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn event_notes_fit_the_events_api_limit_on_a_char_boundary() {
        assert_eq!(event_note("short"), "short");
        let long = "é".repeat(700);
        let n = event_note(&long);
        assert!(n.len() <= 1024, "{}", n.len());
        assert!(n.ends_with('…'));
        assert!(long.starts_with(n.trim_end_matches('…')));
    }

    #[test]
    fn a_cause_is_announced_once_and_a_new_one_again() {
        let mut conds = vec![];
        let mut t = Transitions::new(&conds, now());
        let stuck = |r, m| Cond::new("Running", false, r, m);
        assert!(t.announce(
            &mut conds,
            stuck("WorkersPending", "a"),
            When::OnCause,
            true
        ));
        let mut t = Transitions::new(&conds, now());
        assert!(!t.announce(
            &mut conds,
            stuck("WorkersPending", "a"),
            When::OnCause,
            true
        ));
        assert!(t.events.is_empty(), "the same cause again");
        t.announce(&mut conds, stuck("ErrImagePull", "b"), When::OnCause, true);
        assert_eq!(
            t.events,
            [EventSpec {
                warning: true,
                reason: "ErrImagePull",
                note: "b".into()
            }]
        );
    }

    #[test]
    fn on_status_and_on_reason_announce_their_transitions_only() {
        let mut conds = vec![];
        set_condition(&mut conds, "Suspended", true, "JobSuspended", "m", now());
        let mut t = Transitions::new(&conds, now());
        let held = Cond::new("Suspended", true, "Evicted", "m2");
        assert!(
            !t.announce(&mut conds, held, When::OnStatus, false),
            "same status"
        );
        assert!(
            t.announce(&mut conds, held, When::OnReason, false),
            "a new reason"
        );
        let resumed = Cond::new("Suspended", false, "JobResumed", "r");
        t.announce_as(&mut conds, resumed, When::OnStatus, false, "note");
        assert_eq!(t.events[1].note, "note");
        assert_eq!(conds[0].reason, "JobResumed");
    }

    #[test]
    fn finishing_clears_only_the_conditions_that_exist() {
        let mut conds = vec![];
        set_condition(&mut conds, "Running", true, "AllWorkersRunning", "m", now());
        let mut t = Transitions::new(&conds, now());
        let failed = Cond::new("Failed", true, "DeadlineExceeded", "late");
        t.finish(&mut conds, failed, true, &["Running", "Restarting"]);
        let types: Vec<(&str, &str)> = conds
            .iter()
            .map(|c| (c.type_.as_str(), c.status.as_str()))
            .collect();
        assert_eq!(types, [("Running", "False"), ("Failed", "True")]);
        assert_eq!(
            t.events,
            [EventSpec {
                warning: true,
                reason: "DeadlineExceeded",
                note: "late".into()
            }]
        );
    }
}
