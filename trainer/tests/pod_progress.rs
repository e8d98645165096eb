//! In a pod, rank 0 sends its progress to the operator (`JANUS_REPORT_URL`) with the
//! pod's projected token; the operator checks the sender and writes the annotation
//! (its side runs on the real control plane in the operator's tests). Here the real
//! trainer reports to a recording endpoint, and a refusing one does not fail training.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

/// Requests received, as (head, body); every one answered with `status`.
type Seen = Arc<Mutex<Vec<(String, String)>>>;

fn endpoint(status: &'static str) -> (String, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1/report", listener.local_addr().unwrap());
    let seen: Seen = Arc::default();
    let record = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let mut r = BufReader::new(conn.try_clone().unwrap());
            let (mut head, mut len) = (String::new(), 0usize);
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
                head.push_str(&line);
            }
            let mut body = vec![0; len];
            if r.read_exact(&mut body).is_err() {
                continue;
            }
            record
                .lock()
                .unwrap()
                .push((head, String::from_utf8_lossy(&body).into_owned()));
            let mut w = conn;
            let _ = write!(
                w,
                "HTTP/1.1 {status}\r\ncontent-length: 9\r\nconnection: close\r\n\r\nrefused!\n"
            );
        }
    });
    (url, seen)
}

fn train(dir: &std::path::Path, url: &str, token: &std::path::Path) -> String {
    let (data, model) = common::tiny_setup(dir, 8);
    let mut cmd = common::janus();
    cmd.args(["train", "--preset", "tiny"]);
    let overrides = common::tiny_overrides(
        dir,
        &model,
        &data.join("sft.parquet"),
        &["hyperparameters.max_steps=6", "checkpoint.every_steps=3"],
    );
    for o in overrides {
        cmd.args(["--set", &o]);
    }
    cmd.env("JANUS_REPORT_URL", url)
        .env("JANUS_REPORT_TOKEN_FILE", token);
    common::run_ok(cmd)
}

#[test]
fn rank_0_reports_its_progress_to_the_operator_with_the_pods_token() {
    let tmp = tempfile::tempdir().unwrap();
    let token = tmp.path().join("token");
    std::fs::write(&token, "projected-token\n").unwrap();
    let (url, seen) = endpoint("204 No Content");
    let log = train(tmp.path(), &url, &token);
    assert!(log.contains("reporting progress to the operator"), "{log}");
    assert!(!log.contains("could not publish progress"), "{log}");

    let seen = seen.lock().unwrap();
    let (head, body) = seen.last().expect("at least the final report");
    assert!(head.starts_with("POST /v1/report HTTP/1.1\r\n"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("authorization: bearer projected-token\r\n"),
        "{head}"
    );
    let r: janus_crds::progress::publish::Report = serde_json::from_str(body).unwrap();
    assert_eq!(r.annotation, janus_crds::annotations::PROGRESS);
    let p = janus_crds::Progress::from_annotation(&r.value)
        .unwrap_or_else(|| panic!("not a progress document: {}", r.value));
    assert_eq!((p.step, p.total_steps), (6, 6), "{}", r.value);
    assert!(p.loss.is_some_and(f64::is_finite), "{}", r.value);
    assert!(p.tokens_per_second.is_some_and(|t| t > 0.0), "{}", r.value);
    assert!(
        p.last_checkpoint
            .as_deref()
            .is_some_and(|c| c.ends_with("/tiny/step-6")),
        "{}",
        r.value
    );
    assert!(p.updated_at.ends_with('Z'), "{}", r.value);
}

#[test]
fn a_refused_report_is_logged_with_the_operators_reason_and_training_finishes() {
    let tmp = tempfile::tempdir().unwrap();
    let token = tmp.path().join("token");
    std::fs::write(&token, "t").unwrap();
    let (url, seen) = endpoint("403 Forbidden");
    let log = train(tmp.path(), &url, &token);
    assert!(
        log.contains("could not publish progress")
            && log.contains("HTTP 403")
            && log.contains("refused!"),
        "{log}"
    );
    assert!(!seen.lock().unwrap().is_empty());
}
