//! Progress for the operator: in a pod, rank 0 sends a `janus.dev/progress` report
//! (step, total, loss, tokens/s, last checkpoint) to the operator, which checks the
//! sender through its pod-bound token and writes it on the sender's pod; the job's
//! status mirrors it. Pods hold no Kubernetes API permission
//! ([`janus_crds::progress::publish`]).
//!
//! Reporting never slows or fails training: a background thread sends the newest
//! report at most once per interval; failures are logged and the next report retried.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use janus_crds::progress::publish;
use janus_crds::{annotations, env, Progress};

/// Where the reports go and the token that proves which pod sends them.
#[derive(Debug, Clone)]
struct Target {
    url: String,
    token_file: String,
}

impl Target {
    /// From the pod's environment: `JANUS_REPORT_URL` (set by the operator) and the
    /// projected token (`JANUS_REPORT_TOKEN_FILE` overrides its path, for tests).
    fn from_env() -> Option<Self> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let url = var(env::REPORT_URL)?;
        let token_file =
            var("JANUS_REPORT_TOKEN_FILE").unwrap_or_else(|| publish::TOKEN_FILE.into());
        Some(Self { url, token_file })
    }

    fn client(&self) -> Result<reqwest::Client, String> {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| e.to_string())
    }

    /// Send one report; the operator's refusal comes back with its reason.
    async fn send(
        &self,
        client: &reqwest::Client,
        (key, value): &(&'static str, String),
    ) -> Result<(), String> {
        // Read each time: the kubelet rotates projected tokens.
        let token = std::fs::read_to_string(&self.token_file)
            .map_err(|e| format!("{}: {e}", self.token_file))?;
        let body = publish::Report {
            annotation: key.to_string(),
            value: value.clone(),
        };
        let resp = client
            .post(&self.url)
            .bearer_auth(token.trim())
            .header("Content-Type", "application/json")
            .body(serde_json::to_string(&body).expect("report serializes"))
            .send()
            .await
            .map_err(|e| format!("POST {}: {e}", self.url))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let why = resp.text().await.unwrap_or_default();
        Err(format!("POST {}: HTTP {status}: {}", self.url, why.trim()))
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
    /// A reporter for this pod, or None outside Kubernetes, without a report URL, or on
    /// ranks other than 0.
    pub fn for_pod(rank: usize, interval: Duration) -> Option<Self> {
        if rank != 0 {
            return None;
        }
        Self::start(Target::from_env()?, interval)
    }

    fn start(target: Target, interval: Duration) -> Option<Self> {
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
                        match rt.block_on(target.send(&client, &p)) {
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
        tracing::info!(to = %url, "reporting progress to the operator");
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
    use std::io::{BufRead, BufReader, Read, Write};

    /// One HTTP request read off `listener`, answered with `status`: (head, body).
    fn serve_one(
        listener: std::net::TcpListener,
        status: &'static str,
    ) -> std::thread::JoinHandle<(String, String)> {
        std::thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            let mut r = BufReader::new(conn.try_clone().unwrap());
            let (mut head, mut len) = (String::new(), 0usize);
            loop {
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                if line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
                head.push_str(&line);
            }
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            let mut w = conn;
            write!(
                w,
                "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            )
            .unwrap();
            (head, String::from_utf8(body).unwrap())
        })
    }

    #[test]
    fn a_report_is_posted_with_the_pods_token_and_flushed_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "pod-bound-token\n").unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!(
            "http://{}{}",
            listener.local_addr().unwrap(),
            super::publish::PATH
        );
        let server = serve_one(listener, "204 No Content");
        let target = super::Target {
            url,
            token_file: token.to_string_lossy().into(),
        };
        let reporter = super::Reporter::start(target, std::time::Duration::from_secs(60)).unwrap();
        let p = super::Progress {
            step: 7,
            total_steps: 9,
            loss: Some(1.5),
            tokens_per_second: None,
            last_checkpoint: None,
            updated_at: "2026-12-02T00:00:00Z".into(),
            fabric: None,
        };
        reporter.report(p.clone());
        drop(reporter);
        let (head, body) = server.join().unwrap();
        assert!(head.starts_with("POST /v1/report HTTP/1.1\r\n"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("authorization: bearer pod-bound-token\r\n"),
            "{head}"
        );
        let r: super::publish::Report = serde_json::from_str(&body).unwrap();
        assert_eq!(r.annotation, "janus.dev/progress");
        assert_eq!(super::Progress::from_annotation(&r.value), Some(p));
    }

    #[tokio::test]
    async fn a_refusal_comes_back_with_its_status() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "t").unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1/report", listener.local_addr().unwrap());
        let server = serve_one(listener, "403 Forbidden");
        let target = super::Target {
            url,
            token_file: token.to_string_lossy().into(),
        };
        let client = target.client().unwrap();
        let e = target
            .send(&client, &("janus.dev/progress", "{}".into()))
            .await
            .unwrap_err();
        server.join().unwrap();
        assert!(e.contains("HTTP 403"), "{e}");
    }

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
