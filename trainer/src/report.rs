//! Progress for the operator: in a pod, rank 0 writes a `janus.dev/progress`
//! annotation (step, total, loss, tokens/s, last checkpoint) on its own pod, which the
//! operator mirrors into the job's status. The pod's service account may only get and
//! patch that one pod.
//!
//! Reporting never slows or fails training: a background thread sends the newest
//! report at most once per interval; failures are logged and the next report retried.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use janus_crds::{annotations, env, Progress};

const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Where and how to reach the API server for the pod's own object.
#[derive(Debug, Clone)]
struct Target {
    url: String,
    token_file: String,
    ca_file: Option<String>,
}

impl Target {
    /// From the pod's environment: the downward API names the pod; the API server and
    /// credentials are the in-cluster ones (`JANUS_KUBE_API`, `JANUS_KUBE_TOKEN_FILE`,
    /// `JANUS_KUBE_CA_FILE` override them, for tests and out-of-cluster runs).
    fn from_env() -> Option<Self> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let (pod, ns) = (var(env::POD_NAME)?, var(env::POD_NAMESPACE)?);
        let api = var("JANUS_KUBE_API").or_else(|| {
            let host = var("KUBERNETES_SERVICE_HOST")?;
            let port = var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|| "443".into());
            let host = if host.contains(':') {
                format!("[{host}]")
            } else {
                host
            };
            Some(format!("https://{host}:{port}"))
        })?;
        let token_file = var("JANUS_KUBE_TOKEN_FILE").unwrap_or_else(|| format!("{SA_DIR}/token"));
        let ca_file = var("JANUS_KUBE_CA_FILE").or_else(|| {
            let f = format!("{SA_DIR}/ca.crt");
            std::path::Path::new(&f).exists().then_some(f)
        });
        Some(Self {
            url: format!(
                "{}/api/v1/namespaces/{ns}/pods/{pod}",
                api.trim_end_matches('/')
            ),
            token_file,
            ca_file,
        })
    }

    fn client(&self) -> Result<reqwest::Client, String> {
        let mut b = reqwest::Client::builder().timeout(Duration::from_secs(10));
        if let Some(ca) = &self.ca_file {
            let pem = std::fs::read(ca).map_err(|e| format!("{ca}: {e}"))?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| format!("{ca}: {e}"))?;
            b = b.add_root_certificate(cert);
        }
        b.build().map_err(|e| e.to_string())
    }

    /// Set annotation `key` to `value` on the pod.
    async fn patch(
        &self,
        client: &reqwest::Client,
        (key, value): &(&'static str, String),
    ) -> Result<(), String> {
        // Read each time: projected service-account tokens are rotated.
        let token = std::fs::read_to_string(&self.token_file)
            .map_err(|e| format!("{}: {e}", self.token_file))?;
        let mut annotation = serde_json::Map::new();
        annotation.insert(key.to_string(), serde_json::Value::from(value.as_str()));
        let body = serde_json::json!({"metadata": {"annotations": annotation}});
        let resp = client
            .patch(&self.url)
            .bearer_auth(token.trim())
            .header("Content-Type", "application/merge-patch+json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| format!("PATCH {}: {e}", self.url))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!("PATCH {}: HTTP {}", self.url, resp.status()))
        }
    }
}

#[derive(Default)]
struct Slot {
    /// The annotation and its value.
    pending: Option<(&'static str, String)>,
    closed: bool,
}

/// Publishes progress reports (newest wins) from a background thread.
pub struct Reporter {
    slot: Arc<(Mutex<Slot>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Reporter {
    /// A reporter for this pod, or None outside Kubernetes (or on ranks other than 0).
    pub fn for_pod(rank: usize, interval: Duration) -> Option<Self> {
        if rank != 0 {
            return None;
        }
        let target = Target::from_env()?;
        crate::storage::install_crypto_provider();
        let client = match target.client() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "progress reporting disabled");
                return None;
            }
        };
        let rt = crate::storage::runtime().ok()?;
        let url = target.url.clone();
        let slot = Arc::new((Mutex::new(Slot::default()), Condvar::new()));
        let shared = slot.clone();
        let thread = std::thread::Builder::new()
            .name("janus-progress".into())
            .spawn(move || {
                let mut failing = false;
                loop {
                    let (next, closed) = {
                        let (m, cv) = &*shared;
                        let mut s = cv
                            .wait_while(m.lock().expect("lock"), |s| {
                                s.pending.is_none() && !s.closed
                            })
                            .expect("lock");
                        (s.pending.take(), s.closed)
                    };
                    if let Some(p) = next {
                        match rt.block_on(target.patch(&client, &p)) {
                            Ok(()) if failing => {
                                failing = false;
                                tracing::info!("progress reporting works again");
                            }
                            Ok(()) => {}
                            Err(e) if !failing => {
                                failing = true;
                                tracing::warn!(error = %e, "could not publish progress (retrying with the next report)");
                            }
                            Err(_) => {}
                        }
                    }
                    if closed {
                        return;
                    }
                    // At most one report per interval, but do not hold up the end.
                    let (m, cv) = &*shared;
                    let _ = cv
                        .wait_timeout_while(m.lock().expect("lock"), interval, |s| !s.closed)
                        .expect("lock");
                }
            })
            .ok()?;
        tracing::info!(pod = %url, "publishing progress on the pod");
        Some(Self {
            slot,
            thread: Some(thread),
        })
    }

    /// Queue a report (replacing one not yet sent).
    pub fn report(&self, p: Progress) {
        self.send(annotations::PROGRESS, p.to_annotation());
    }

    /// Queue an evaluation pod's report (`janus.dev/eval-progress`).
    pub fn report_eval(&self, r: janus_crds::progress::EvalReport) {
        self.send(annotations::EVAL_PROGRESS, r.to_annotation());
    }

    fn send(&self, key: &'static str, value: String) {
        let (m, cv) = &*self.slot;
        m.lock().expect("lock").pending = Some((key, value));
        cv.notify_one();
    }
}

impl Drop for Reporter {
    /// Send what is pending, then stop.
    fn drop(&mut self) {
        let (m, cv) = &*self.slot;
        m.lock().expect("lock").closed = true;
        cv.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Where Kubernetes reads a container's termination message (the container's
/// default `terminationMessagePath`); `JANUS_TERMINATION_LOG` overrides it.
pub const TERMINATION_LOG: &str = "/dev/termination-log";

/// In a pod, leave `message` (the error that ends the process) where the kubelet
/// copies it into the container status (`state.terminated.message`, at most 4 KiB),
/// so the operator can quote the trainer's own words in the job's condition. Outside
/// a pod the file does not exist and nothing is written.
pub fn write_termination_message(message: &str) {
    let path = std::env::var("JANUS_TERMINATION_LOG").unwrap_or_else(|_| TERMINATION_LOG.into());
    if !std::path::Path::new(&path).exists() {
        return;
    }
    // The kubelet truncates to 4096 bytes; keep the start, on a char boundary.
    let mut end = message.len().min(4000);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    if let Err(e) = std::fs::write(&path, &message[..end]) {
        tracing::warn!(path, error = %e, "could not write the termination message");
    }
}

/// Now as RFC 3339 UTC (`2026-11-27T01:02:03Z`).
pub fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_termination_message_is_written_only_where_the_file_exists() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("termination-log");
        std::env::set_var("JANUS_TERMINATION_LOG", &f);
        super::write_termination_message("nothing here");
        assert!(!f.exists());
        std::fs::write(&f, "").unwrap();
        let long = "é".repeat(3000);
        super::write_termination_message(&long);
        std::env::remove_var("JANUS_TERMINATION_LOG");
        let got = std::fs::read_to_string(&f).unwrap();
        assert!(got.len() <= 4000 && got.starts_with("éé"), "{}", got.len());
    }

    #[test]
    fn rfc3339_is_well_formed() {
        let s = super::now_rfc3339();
        assert_eq!(s.len(), 20, "{s}");
        assert!(
            s.starts_with("20") && s.ends_with('Z') && &s[10..11] == "T",
            "{s}"
        );
    }
}
