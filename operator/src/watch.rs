//! Watches of our own kinds that survive objects they cannot decode.
//!
//! A typed watch decodes every object of a list in one go: one object that does not
//! decode (stored before a CRD upgrade tightened the schema, or written through a
//! schema that a client's types do not match) fails the list, and with it every later
//! relist, for every job in every namespace. These watches read objects untyped and
//! decode each one alone: an object that does not decode is skipped and reported (a
//! warn log naming the field, `janus_operator_undecodable_objects_total{kind}` and a
//! Warning Event on the object), and the others are reconciled as usual.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use crate::events::{Event, EventType, Recorder};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::watcher::{self, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use crate::metrics::Metrics;

/// Reason of the Warning Event on an object the operator cannot decode.
pub const UNDECODABLE_OBJECT: &str = "UndecodableObject";

/// Longest note of an Event the API server accepts.
const MAX_NOTE: usize = 1024;

/// Reports each undecodable version of an object once (relists repeat them).
#[derive(Clone)]
pub struct DecodeReporter {
    metrics: Metrics,
    recorder: Recorder,
    /// uid -> the resourceVersion last reported.
    reported: Arc<Mutex<HashMap<String, String>>>,
}

/// Decode `obj` as `K`; the error names the field (`spec.runPolicy.backoffLimit: ...`).
pub fn decode<K: DeserializeOwned>(obj: &DynamicObject) -> Result<K, String> {
    let value = serde_json::to_value(obj).map_err(|e| e.to_string())?;
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        format!("{path}: {}", e.into_inner())
    })
}

impl DecodeReporter {
    pub fn new(metrics: Metrics, recorder: Recorder) -> Self {
        Self {
            metrics,
            recorder,
            reported: Default::default(),
        }
    }

    /// The object as `K`, or `None` after reporting why it is skipped.
    fn accept<K: DeserializeOwned>(
        &self,
        kind: &str,
        obj: DynamicObject,
        report: bool,
    ) -> Option<K> {
        let uid = obj.uid().unwrap_or_default();
        match decode::<K>(&obj) {
            Ok(k) => {
                self.reported.lock().unwrap().remove(&uid);
                Some(k)
            }
            Err(error) => {
                let rv = obj.resource_version().unwrap_or_default();
                let first = self.reported.lock().unwrap().insert(uid, rv.clone()) != Some(rv);
                if report && first {
                    self.report(kind, &obj, &error);
                }
                None
            }
        }
    }

    fn report(&self, kind: &str, obj: &DynamicObject, error: &str) {
        let (ns, name) = (obj.namespace().unwrap_or_default(), obj.name_any());
        tracing::warn!(kind, namespace = %ns, name = %name, %error, "cannot decode the object; skipping it until it is fixed");
        self.metrics
            .undecodable_objects_total
            .with_label_values(&[kind])
            .inc();
        let mut note =
            format!("the operator cannot read this {kind} and skips it until it is fixed: {error}");
        if note.len() > MAX_NOTE {
            let mut end = MAX_NOTE - 3;
            while !note.is_char_boundary(end) {
                end -= 1;
            }
            note.truncate(end);
            note.push_str("...");
        }
        let reference = ObjectReference {
            api_version: obj.types.as_ref().map(|t| t.api_version.clone()),
            kind: Some(kind.to_string()),
            name: Some(name),
            namespace: Some(ns),
            uid: obj.uid(),
            resource_version: obj.resource_version(),
            ..Default::default()
        };
        let recorder = self.recorder.clone();
        tokio::spawn(async move {
            let event = Event {
                type_: EventType::Warning,
                reason: UNDECODABLE_OBJECT.into(),
                note: Some(note),
                action: "Decode".into(),
                secondary: None,
            };
            if let Err(e) = recorder.publish(&event, &reference).await {
                tracing::warn!(object = ?reference.name, error = %e, "could not publish an event");
            }
        });
    }
}

/// The untyped API of `K` (all namespaces, or only `namespace`).
pub fn dynamic_api<K>(client: &Client, namespace: &Option<String>) -> Api<DynamicObject>
where
    K: Resource<DynamicType = ()>,
{
    resource_api(client, namespace, &ApiResource::erase::<K>(&()))
}

/// The untyped API of `ar` (all namespaces, or only `namespace`).
pub fn resource_api(
    client: &Client,
    namespace: &Option<String>,
    ar: &ApiResource,
) -> Api<DynamicObject> {
    match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, ar),
        None => Api::all_with(client.clone(), ar),
    }
}

/// A watch of `K` that skips (and reports) objects it cannot decode.
pub fn lenient_watcher<K>(
    api: Api<DynamicObject>,
    config: watcher::Config,
    reporter: DecodeReporter,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send
where
    K: Resource<DynamicType = ()> + DeserializeOwned + Clone + Debug + Send + 'static,
{
    let kind = K::kind(&()).to_string();
    watcher(api, config).filter_map(move |ev| {
        let (r, kind) = (reporter.clone(), kind.clone());
        async move {
            use watcher::Event as E;
            match ev {
                Err(e) => Some(Err(e)),
                Ok(E::Init) => Some(Ok(E::Init)),
                Ok(E::InitDone) => Some(Ok(E::InitDone)),
                Ok(E::InitApply(o)) => r.accept(&kind, o, true).map(|k| Ok(E::InitApply(k))),
                Ok(E::Apply(o)) => r.accept(&kind, o, true).map(|k| Ok(E::Apply(k))),
                // Gone: nothing left to fix (an older, decodable version leaves the
                // cache at the next relist; its reconcile finds it deleted).
                Ok(E::Delete(o)) => r.accept(&kind, o, false).map(|k| Ok(E::Delete(k))),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use janus_crds::JanusTrainingJob;

    fn object(backoff: serde_json::Value) -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "janus.dev/v1alpha1",
            "kind": "JanusTrainingJob",
            "metadata": {"name": "j", "namespace": "ns", "uid": "u1", "resourceVersion": "7"},
            "spec": {
                "method": "sft",
                "model": {"url": "s3://b/m"},
                "dataset": {"urls": ["s3://b/d.jsonl"]},
                "workers": {"image": "janus:dev"},
                "checkpoint": {"url": "s3://b/c"},
                "output": {"url": "s3://b/o"},
                "runPolicy": {"backoffLimit": backoff}
            }
        }))
        .unwrap()
    }

    #[test]
    fn a_decodable_object_decodes_and_an_undecodable_one_names_its_field() {
        let ok: JanusTrainingJob = decode(&object(3.into())).unwrap();
        assert_eq!(ok.spec.run_policy.backoff_limit, 3);
        let e = decode::<JanusTrainingJob>(&object(3_000_000_000u64.into())).unwrap_err();
        assert!(
            e.starts_with("spec.runPolicy.backoffLimit:") && e.contains("3000000000"),
            "{e}"
        );
    }
}
