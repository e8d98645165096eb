//! The operator's Event recorder: kube-runtime's [`kube::runtime::events::Recorder`]
//! with the note in the series key.
//!
//! kube-runtime folds an Event into the series of an earlier one (a PATCH of its
//! `series.count`, the earlier note kept) whenever the object, type, reason and action
//! match within six minutes, whatever the new note says. The operator's notes carry the
//! news: a second restart's "the new gang starts in 3s", the pod whose failure a rule
//! judged, the other object a child's name is taken by. Folded, that news never reached
//! `kubectl describe` or an Event watch, only the first note's count went up. Here a
//! repeat of the same note still joins its series (a stuck pod's Warning is counted,
//! not repeated), and a new note is an Event of its own, as client-go's core/v1
//! correlator keys repeats on the message.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

pub use kube::runtime::events::{Event, EventType, Reporter};

/// How long a published Event takes repeats into its series (kube-runtime's window).
const SERIES_WINDOW: SignedDuration = SignedDuration::from_mins(6);

/// Most series remembered at once: each distinct note of each object is one, and a
/// burst of distinct notes must not grow the operator without bound.
const MAX_SERIES: usize = 4096;

/// The object an Event is about, as far as a series is concerned (its resourceVersion
/// changes with every write and must not start a new series).
type Regarding = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

fn regarding(r: &ObjectReference) -> Regarding {
    (
        r.api_version.clone(),
        r.kind.clone(),
        r.namespace.clone(),
        r.name.clone(),
        r.uid.clone(),
    )
}

/// What makes two Events one series: kube-runtime's key and the note.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SeriesKey {
    type_: EventType,
    action: String,
    reason: String,
    note: Option<String>,
    regarding: Regarding,
    related: Option<Regarding>,
}

/// The last Event of a series: its name and count, when it was last seen.
#[derive(Debug, Clone)]
struct Series {
    name: String,
    count: i32,
    last: Timestamp,
}

/// Publishes Events for any object, reporting as one controller instance.
#[derive(Clone)]
pub struct Recorder {
    client: Client,
    reporter: Reporter,
    series: Arc<Mutex<HashMap<SeriesKey, Series>>>,
}

impl Recorder {
    pub fn new(client: Client, reporter: Reporter) -> Self {
        Self {
            client,
            reporter,
            series: Default::default(),
        }
    }

    /// Publish `ev` about `reference`: a repeat of an Event published in the last six
    /// minutes (same note included) bumps that Event's `series`; anything else is
    /// created. The Event is created in the object's namespace ("default" without one).
    pub async fn publish(
        &self,
        ev: &Event,
        reference: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let key = SeriesKey {
            type_: ev.type_,
            action: ev.action.clone(),
            reason: ev.reason.clone(),
            note: ev.note.clone(),
            regarding: regarding(reference),
            related: ev.secondary.as_ref().map(regarding),
        };
        let earlier = self.earlier(&key, now);
        let events: Api<K8sEvent> = Api::namespaced(
            self.client.clone(),
            reference.namespace.as_deref().unwrap_or("default"),
        );
        let series = match earlier {
            Some(mut s) => {
                s.count += 1;
                s.last = now;
                let patch = json!({"series": {
                    "count": s.count,
                    "lastObservedTime": MicroTime(now),
                }});
                match events
                    .patch(&s.name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => s,
                    // The API server dropped the Event (its own TTL, or deleted by
                    // someone): the repeat is announced afresh.
                    Err(kube::Error::Api(e)) if e.code == 404 => {
                        self.create(&events, ev, reference, now).await?
                    }
                    Err(e) => return Err(e),
                }
            }
            None => self.create(&events, ev, reference, now).await?,
        };
        self.series.lock().unwrap().insert(key, series);
        Ok(())
    }

    /// The series `key` continues, if one is still open; series past their window are
    /// forgotten, and the oldest when too many are open.
    fn earlier(&self, key: &SeriesKey, now: Timestamp) -> Option<Series> {
        let mut all = self.series.lock().unwrap();
        all.retain(|_, s| s.last + SERIES_WINDOW > now);
        if all.len() >= MAX_SERIES && !all.contains_key(key) {
            let oldest = all
                .iter()
                .min_by_key(|(_, s)| s.last)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                all.remove(&k);
            }
        }
        all.get(key).cloned()
    }

    async fn create(
        &self,
        events: &Api<K8sEvent>,
        ev: &Event,
        reference: &ObjectReference,
        now: Timestamp,
    ) -> Result<Series, kube::Error> {
        let event = K8sEvent {
            action: Some(ev.action.clone()),
            reason: Some(ev.reason.clone()),
            event_time: Some(MicroTime(now)),
            regarding: Some(reference.clone()),
            related: ev.secondary.clone(),
            note: ev.note.clone(),
            metadata: ObjectMeta {
                namespace: reference.namespace.clone(),
                // Unique per Event, as kube-runtime names them.
                name: Some(format!(
                    "{}.{:x}",
                    reference
                        .name
                        .as_deref()
                        .unwrap_or(&self.reporter.controller),
                    now.as_nanosecond()
                )),
                ..Default::default()
            },
            reporting_controller: Some(self.reporter.controller.clone()),
            reporting_instance: Some(
                self.reporter
                    .instance
                    .clone()
                    .unwrap_or_else(|| self.reporter.controller.clone()),
            ),
            type_: Some(
                match ev.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .into(),
            ),
            ..Default::default()
        };
        let created = events.create(&PostParams::default(), &event).await?;
        Ok(Series {
            name: created.name_any(),
            count: 1,
            last: now,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::fixtures::{client, ApiServer};

    fn warning(reason: &str, note: &str) -> Event {
        Event {
            type_: EventType::Warning,
            reason: reason.into(),
            note: Some(note.into()),
            action: "Reconcile".into(),
            secondary: None,
        }
    }

    #[tokio::test]
    async fn a_new_note_under_the_same_reason_is_an_event_of_its_own() {
        let server = Arc::new(ApiServer::default());
        let recorder = Recorder::new(
            client(server.clone()),
            Reporter {
                controller: "janus-operator".into(),
                instance: Some("test".into()),
            },
        );
        let job = ObjectReference {
            kind: Some("JanusTrainingJob".into()),
            namespace: Some("ns".into()),
            name: Some("r".into()),
            uid: Some("u1".into()),
            ..Default::default()
        };
        let first = warning("Restarting", "restart 1: the new gang starts now");
        let second = warning("Restarting", "restart 2: the new gang starts in 3s");
        for ev in [&first, &first, &second] {
            recorder.publish(ev, &job).await.unwrap();
        }
        let reqs = server.event_requests();
        let seen: Vec<(&str, &str)> = reqs
            .iter()
            .map(|r| (r.method.as_str(), r.path.as_str()))
            .collect();
        let created = reqs[0].body["metadata"]["name"].as_str().unwrap();
        assert!(created.starts_with("r."), "{created}");
        let patched = format!("/apis/events.k8s.io/v1/namespaces/ns/events/{created}?");
        assert_eq!(
            seen,
            [
                ("POST", "/apis/events.k8s.io/v1/namespaces/ns/events?"),
                ("PATCH", patched.as_str()),
                ("POST", "/apis/events.k8s.io/v1/namespaces/ns/events?"),
            ]
        );
        assert_eq!(reqs[0].body["note"], "restart 1: the new gang starts now");
        assert_eq!(reqs[0].body["reportingInstance"], "test");
        assert_eq!(reqs[1].body["series"]["count"], 2, "the same note counted");
        assert_eq!(reqs[2].body["note"], "restart 2: the new gang starts in 3s");
        assert_eq!(reqs[2].body["reason"], "Restarting");
    }

    #[tokio::test]
    async fn a_series_whose_event_is_gone_starts_again() {
        let server = Arc::new(ApiServer::default());
        let recorder = Recorder::new(client(server.clone()), "janus-operator".into());
        let pod = ObjectReference {
            kind: Some("Pod".into()),
            namespace: Some("ns".into()),
            name: Some("p".into()),
            ..Default::default()
        };
        let ev = warning("Stuck", "unschedulable");
        recorder.publish(&ev, &pod).await.unwrap();
        server.refuse(
            "PATCH",
            "/apis/events.k8s.io/v1/namespaces/ns/events/",
            404,
            "gone",
        );
        recorder.publish(&ev, &pod).await.unwrap();
        let methods: Vec<String> = server
            .event_requests()
            .into_iter()
            .map(|r| r.method)
            .collect();
        assert_eq!(methods, ["POST", "PATCH", "POST"]);
    }
}
