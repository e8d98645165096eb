//! `janus serve` through the official `openai` Python client (chat, streaming with
//! usage, n > 1, stop, max_tokens, completions, models) and plain HTTP (OpenAI-shaped
//! 400s naming the field, an over-long prompt, the API key, /health 503 until the
//! model is loaded, /metrics), and the Files and Batch API subset batch judging uses.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const KEY: &str = "sk-janus-test";
const NAME: &str = "janus-tiny";

struct Server {
    port: u16,
    _child: std::process::Child,
    _dir: PathBuf,
}

fn serve_cmd(model: &Path, port: u16) -> std::process::Command {
    let mut c = common::janus();
    c.args(["serve", "--model", model.to_str().unwrap()])
        .args([
            "--port",
            &port.to_string(),
            "--dtype",
            "float32",
            "--device",
            "cpu",
        ])
        .args([
            "--served-model-name",
            NAME,
            "--max-batch",
            "4",
            "--max-model-len",
            "256",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    c
}

/// One server (with an API key) for the tests of this file.
fn server() -> &'static Server {
    static S: OnceLock<Server> = OnceLock::new();
    S.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let (_, model) = common::tiny_setup(&dir, 16);
        let port = janus::dist::launch::free_port().unwrap();
        let mut cmd = serve_cmd(&model, port);
        cmd.env("JANUS_TEST_KEY", KEY)
            .args(["--api-key-env", "JANUS_TEST_KEY"]);
        let child = common::spawn_tied(cmd);
        common::wait_for_status(port, "/health", 200, 120);
        Server {
            port,
            _child: child,
            _dir: dir,
        }
    })
}

fn check(name: &str) -> serde_json::Value {
    let s = server();
    let url = format!("http://127.0.0.1:{}/v1", s.port);
    let out = common::run_python(
        "openai_check.py",
        &[name, "--base-url", &url, "--model", NAME, "--api-key", KEY],
    );
    eprintln!("{out}");
    serde_json::from_str(out.trim().lines().last().unwrap()).unwrap()
}

#[test]
fn openai_client_chat_with_usage() {
    let v = check("chat");
    assert!(v["saw"]["usage"]["prompt_tokens"].as_u64().unwrap() > 10);
}

#[test]
fn openai_client_stream_sse_with_include_usage_and_done() {
    check("stream");
}

#[test]
fn openai_client_n_choices() {
    check("n");
}

#[test]
fn openai_client_stop_strings() {
    check("stop");
}

#[test]
fn openai_client_max_tokens_and_max_completion_tokens() {
    check("max-tokens");
}

#[test]
fn openai_client_files_and_batches() {
    let v = check("batches");
    assert_eq!(
        (v["saw"]["output"].as_u64(), v["saw"]["errors"].as_u64()),
        (Some(3), Some(1))
    );
}

#[test]
fn openai_client_completions_and_models() {
    check("completions");
    check("models");
}

#[test]
fn bad_requests_are_openai_shaped_400s_naming_the_field() {
    let v = check("errors");
    assert!(v["saw"]["errors"].as_array().unwrap().len() >= 10);
}

#[test]
fn api_key_is_required_when_set() {
    check("auth");
}

#[test]
fn health_is_503_until_the_model_is_loaded_and_metrics_count() {
    let dir = tempfile::tempdir().unwrap();
    let (_, model) = common::tiny_setup(dir.path(), 16);
    // config.json as a named pipe: loading blocks until the test writes it.
    let config = std::fs::read(model.join("config.json")).unwrap();
    std::fs::remove_file(model.join("config.json")).unwrap();
    let fifo = std::ffi::CString::new(model.join("config.json").to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    let port = janus::dist::launch::free_port().unwrap();
    let mut child = common::spawn_tied(serve_cmd(&model, port));
    common::wait_for_status(port, "/health", 503, 60);
    let (status, body) = common::http_get(port, "/v1/models").unwrap();
    assert_eq!(status, 200, "models are listed while loading: {body}");
    std::fs::write(model.join("config.json"), &config).unwrap();
    common::wait_for_status(port, "/health", 200, 60);
    // Two requests, then the metrics count them.
    for _ in 0..2 {
        let out = std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg(format!("http://127.0.0.1:{port}/v1/chat/completions"))
            .args(["-d", &format!(r#"{{"model":"{NAME}","messages":[{{"role":"user","content":"Explain tides."}}],"max_tokens":3,"ignore_eos":true}}"#)])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    }
    let (status, metrics) = common::http_get(port, "/metrics").unwrap();
    assert_eq!(status, 200);
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from\n{metrics}"))
    };
    assert_eq!(
        value(&format!(
            "{}{{endpoint=\"chat_completions\",status=\"200\"}}",
            janus::serve::REQUESTS_TOTAL
        )),
        2.0
    );
    assert_eq!(value(janus::serve::GENERATED_TOKENS_TOTAL), 6.0);
    assert_eq!(
        value(&format!(
            "{}_count",
            janus::serve::TIME_TO_FIRST_TOKEN_SECONDS
        )),
        2.0
    );
    assert_eq!(value(janus::serve::QUEUE_DEPTH), 0.0);
    let _ = child.kill();
    let _ = child.wait();
}
