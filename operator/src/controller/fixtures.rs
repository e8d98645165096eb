//! The request-sequence harness of every kind's fixture tests (controller-rs's
//! `fixtures.rs`): the kube `Client` runs over a scripted API server (a tower service
//! answering from a map of objects, refusing what a test tells it to) that records
//! every request; a kind's tests run one reconcile through the real run loop and assert
//! the method, path and body of each request, in order. Events are asserted apart
//! (they are best effort, published from a task of their own).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use crate::events::{Recorder, Reporter};
use http::{Request, Response};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::{json, Value};

use super::run::reconcile;
use super::{Context, Kind};
use crate::health::Health;
use crate::metrics::Metrics;

/// The query of every server-side apply.
pub const APPLY: &str = "?&force=true&fieldManager=janus-operator";
/// The query of a child's create (a new job's children are created, never applied over
/// an object of another owner).
pub const CREATE: &str = "?&fieldManager=janus-operator";
/// What the operator tells pods (the chart's in-cluster Service address).
pub const REPORT_URL: &str = "http://janus-operator.janus-system.svc:8080/v1/report";

#[derive(Debug, Clone)]
pub struct Req {
    pub method: String,
    pub path: String,
    pub body: Value,
}

/// A refusal the server answers a request with: (method, path prefix, code, message).
type Refusal = (String, String, u16, String);

#[derive(Default)]
pub struct ApiServer {
    /// Objects by API path; GET answers from here, 404 otherwise.
    objects: Mutex<BTreeMap<String, Value>>,
    refusals: Mutex<Vec<Refusal>>,
    log: Mutex<Vec<Req>>,
}

fn status(code: u16, reason: &str, message: String) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

impl ApiServer {
    pub fn insert(&self, path: impl Into<String>, object: Value) {
        self.objects.lock().unwrap().insert(path.into(), object);
    }

    pub fn remove(&self, path: &str) {
        self.objects.lock().unwrap().remove(path);
    }

    /// Answer `method` on paths starting with `path` with `code` and `message`.
    pub fn refuse(&self, method: &str, path: &str, code: u16, message: &str) {
        self.refusals
            .lock()
            .unwrap()
            .push((method.into(), path.into(), code, message.into()));
    }

    fn answer(&self, method: &str, path: &str, body: &Value) -> (u16, Value) {
        let bare = path.split('?').next().unwrap_or(path);
        let refused = self
            .refusals
            .lock()
            .unwrap()
            .iter()
            .find_map(|(m, p, code, msg)| {
                (m == method && bare.starts_with(p.as_str())).then(|| (*code, msg.clone()))
            });
        if let Some((code, message)) = refused {
            return (code, status(code, "Forbidden", message));
        }
        let objects = self.objects.lock().unwrap();
        match method {
            "GET" if bare.ends_with("/pods") => {
                let items: Vec<Value> = objects
                    .iter()
                    .filter(|(k, _)| k.starts_with(&format!("{bare}/")))
                    .map(|(_, v)| v.clone())
                    .collect();
                (
                    200,
                    json!({"kind": "PodList", "apiVersion": "v1",
                             "metadata": {"resourceVersion": "1"}, "items": items}),
                )
            }
            "GET" | "DELETE" => match objects.get(bare) {
                Some(v) => (200, v.clone()),
                None => (404, status(404, "NotFound", format!("{bare} not found"))),
            },
            "PATCH" if bare.ends_with("/status") => {
                let mut job = objects[bare.trim_end_matches("/status")].clone();
                job["status"] = body["status"].clone();
                (200, job)
            }
            "POST"
                if body["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| objects.contains_key(&format!("{bare}/{n}"))) =>
            {
                let name = body["metadata"]["name"].as_str().unwrap_or_default();
                (
                    409,
                    status(
                        409,
                        "AlreadyExists",
                        format!("{bare}/{name} already exists"),
                    ),
                )
            }
            // Server-side apply and creates answer with what they were sent.
            _ => (if method == "POST" { 201 } else { 200 }, body.clone()),
        }
    }

    /// The requests made, Events left out.
    pub fn requests(&self) -> Vec<Req> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|r| !r.path.contains("/events"))
            .cloned()
            .collect()
    }

    /// The Events' requests (creates and series patches).
    pub fn event_requests(&self) -> Vec<Req> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path.contains("/events"))
            .cloned()
            .collect()
    }

    /// `(reason, type)` of the Events posted.
    pub fn events(&self) -> Vec<(String, String)> {
        self.event_requests()
            .iter()
            .map(|r| {
                (
                    r.body["reason"].as_str().unwrap_or_default().to_string(),
                    r.body["type"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    /// Condition `type_` of the last status written: `(status, reason, message)`.
    pub fn last_condition(&self, type_: &str) -> (String, String, String) {
        let reqs = self.requests();
        let written = reqs
            .iter()
            .rev()
            .find(|r| r.path.contains("/status"))
            .expect("a status was written");
        let c = written.body["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == type_)
            .unwrap_or_else(|| panic!("no {type_} condition in {}", written.body));
        let text = |k: &str| c[k].as_str().unwrap_or_default().to_string();
        (text("status"), text("reason"), text("message"))
    }

    /// `"METHOD path"` of each request but Events.
    pub fn lines(&self) -> Vec<String> {
        self.requests()
            .iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect()
    }
}

/// The pods `reqs` create, each checked to report through the operator (its report URL
/// in the first container's environment, no API token); their names, sorted.
pub fn created_pods(reqs: &[Req]) -> Vec<String> {
    let mut names: Vec<String> = reqs
        .iter()
        .map(|r| {
            let spec = &r.body["spec"];
            assert_eq!(spec["automountServiceAccountToken"], false, "{spec}");
            let env = &spec["containers"][0]["env"];
            assert!(
                env.as_array()
                    .unwrap()
                    .iter()
                    .any(|e| e["name"] == "JANUS_REPORT_URL" && e["value"] == REPORT_URL),
                "{env}"
            );
            r.body["metadata"]["name"].as_str().unwrap().to_string()
        })
        .collect();
    names.sort();
    names
}

/// `<prefix>0` to `<prefix><n - 1>`.
pub fn numbered(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

/// A client whose every request `server` answers and logs.
pub fn client(server: Arc<ApiServer>) -> Client {
    let svc = tower::service_fn(move |req: Request<Body>| {
        let server = server.clone();
        async move {
            let (parts, body) = req.into_parts();
            let bytes = body.collect_bytes().await.unwrap();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let path = parts
                .uri
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default();
            let method = parts.method.to_string();
            let (code, answer) = server.answer(&method, &path, &body);
            server.log.lock().unwrap().push(Req { method, path, body });
            Ok::<_, Infallible>(
                Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                    .unwrap(),
            )
        }
    });
    Client::new(svc, "default")
}

/// A cache that has listed `objects`.
pub fn ready_store<K>(objects: Vec<K>) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    let (store, mut writer) = reflector::store::<K>();
    writer.apply_watcher_event(&watcher::Event::Init);
    for o in objects {
        writer.apply_watcher_event(&watcher::Event::InitApply(o));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    store
}

/// A scenario of kind `K`: the job, its cached pods and nodes, the API server.
pub struct Scenario<K: Kind> {
    pub job: K,
    pub pods: Vec<Pod>,
    pub nodes: Vec<Node>,
    pub server: Arc<ApiServer>,
}

impl<K: Kind> Scenario<K> {
    /// `job` as the API server and the cache hold it, at `path`.
    pub fn new(job: K, path: &str) -> Self {
        let server = Arc::new(ApiServer::default());
        server.insert(path, serde_json::to_value(&job).unwrap());
        Scenario {
            job,
            pods: vec![],
            nodes: vec![],
            server,
        }
    }

    /// `pod` in the cache and on the API server.
    pub fn with_pod(mut self, pod: Pod) -> Self {
        let ns = pod.namespace().unwrap_or_default();
        self.server.insert(
            format!("/api/v1/namespaces/{ns}/pods/{}", pod.name_any()),
            serde_json::to_value(&pod).unwrap(),
        );
        self.pods.push(pod);
        self
    }

    pub fn without(self, path: &str) -> Self {
        self.server.remove(path);
        self
    }

    /// One reconcile through the run loop, with the kind's own caches `own`; then the
    /// Events' task is let run.
    pub async fn reconcile_with(&self, own: K::Own) -> crate::error::Result<Action> {
        let client = client(self.server.clone());
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "janus-operator".into(),
                instance: Some("test".into()),
            },
        );
        let ctx = Arc::new(Context::<K>::new(
            client,
            recorder,
            Metrics::new(),
            Health::new(std::time::Duration::from_secs(60)),
            Some(REPORT_URL.into()),
            ready_store(self.pods.clone()),
            ready_store(self.nodes.clone()),
            own,
        ));
        let result = reconcile(Arc::new(self.job.clone()), ctx).await;
        self.settle().await;
        result
    }

    /// Let the tasks the reconcile spawned (its Events) finish.
    async fn settle(&self) {
        loop {
            let before = self.server.log.lock().unwrap().len();
            for _ in 0..50 {
                tokio::task::yield_now().await;
            }
            if self.server.log.lock().unwrap().len() == before {
                return;
            }
        }
    }
}
