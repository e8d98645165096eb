//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use janus::model::ModelConfig;
use janus::sample::{self, TokenizerSource};

pub fn repo() -> PathBuf {
    Path::new(
        &std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into()),
    )
    .parent()
    .expect("workspace root")
    .to_path_buf()
}

/// The project venv's Python (or `JANUS_PYTHON`), which has torch and transformers.
pub fn python() -> PathBuf {
    let p = std::env::var_os("JANUS_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".venv/bin/python"));
    assert!(
        p.exists(),
        "{} not found: run the tests with `make test`, which creates the venv",
        p.display()
    );
    p
}

/// Run a script under tests/python; returns stdout, panics with stderr on failure.
pub fn run_python(script: &str, args: &[&str]) -> String {
    let out = Command::new(python())
        .arg(repo().join("tests/python").join(script))
        .args(args)
        .output()
        .expect("python starts");
    assert!(
        out.status.success(),
        "{script} {args:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// Run a command to success; returns its stderr (the log), panicking with it otherwise.
pub fn run_ok(mut cmd: Command) -> String {
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{cmd:?} failed:\n{err}");
    err
}

/// Start a command with its stderr (the JSON log) captured line by line.
pub fn spawn_logged(
    mut cmd: Command,
) -> (
    std::process::Child,
    std::io::Lines<std::io::BufReader<std::process::ChildStderr>>,
) {
    use std::io::BufRead;
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("command starts");
    let lines = std::io::BufReader::new(child.stderr.take().expect("piped")).lines();
    (child, lines)
}

/// Read log lines up to and including the first containing `needle`; panics with
/// everything read when the log ends first.
pub fn read_until(
    lines: &mut impl Iterator<Item = std::io::Result<String>>,
    needle: &str,
) -> Vec<String> {
    let mut seen = Vec::new();
    for l in lines.by_ref() {
        let l = l.expect("utf-8 log line");
        let found = l.contains(needle);
        seen.push(l);
        if found {
            return seen;
        }
    }
    panic!("the log ended before {needle:?}:\n{}", seen.join("\n"));
}

/// Pids of the ranks a launcher started, from its `started rank` log lines.
pub fn rank_pids(lines: &[String]) -> Vec<(u64, i32)> {
    lines
        .iter()
        .filter(|l| l.contains("\"started rank\""))
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("JSON log line");
            (
                v["rank"].as_u64().expect("rank"),
                v["pid"].as_i64().expect("pid") as i32,
            )
        })
        .collect()
}

pub fn janus() -> Command {
    Command::new(env!("CARGO_BIN_EXE_janus"))
}

/// Sample data and a tiny random model with a trained tokenizer under `dir`.
pub fn tiny_setup(dir: &Path, instructions: usize) -> (PathBuf, PathBuf) {
    setup_with(
        dir,
        instructions,
        ModelConfig::small("mistral", 512, 64, 136, 2, 4, 2),
    )
}

/// As `tiny_setup`, with a model of `cfg` (vocabulary 512).
pub fn setup_with(dir: &Path, instructions: usize, cfg: ModelConfig) -> (PathBuf, PathBuf) {
    let data = dir.join("data");
    sample::write_sample_data(&data, instructions, 0).unwrap();
    let model = dir.join("model");
    let values: Vec<serde_json::Value> = janus::data::read_rows(&data.join("sft.jsonl"))
        .unwrap()
        .into_iter()
        .map(|r| r.value.unwrap())
        .collect();
    let corpus = sample::tokenizer_corpus(&values);
    sample::init_model(
        &model,
        cfg,
        TokenizerSource::Train {
            corpus,
            vocab_size: 512,
        },
        tch::Kind::Float,
        0,
    )
    .unwrap();
    (data, model)
}

/// `key=value` overrides for a short tiny run in `dir`.
pub fn tiny_overrides(dir: &Path, model: &Path, train: &Path, extra: &[&str]) -> Vec<String> {
    let mut o = vec![
        format!("model.path={}", model.display()),
        format!("data.train=[{}]", train.display()),
        format!("checkpoint.dir={}", dir.join("ckpt").display()),
        format!("output_dir={}", dir.join("out").display()),
        "data.max_seq_len=128".into(),
    ];
    o.extend(extra.iter().map(|s| s.to_string()));
    o
}

pub fn read_bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A real S3 server (versitygw, posix backend) on a loopback port, with one bucket.
pub struct S3Server {
    pub port: u16,
    pub bucket: String,
    root: tempfile::TempDir,
    child: Option<std::process::Child>,
}

pub const S3_KEY: &str = "janus-test-key";
pub const S3_SECRET: &str = "janus-test-secret";

impl S3Server {
    /// The server binary: `JANUS_VERSITYGW`, set by the Makefile, which builds it.
    pub fn binary() -> PathBuf {
        let p = std::env::var_os("JANUS_VERSITYGW")
            .map(PathBuf::from)
            .unwrap_or_default();
        assert!(
            p.exists(),
            "S3 server `{}` not found: run the tests with `make test`, which builds it",
            p.display()
        );
        p
    }

    pub fn start() -> Self {
        let root = tempfile::tempdir().unwrap();
        let bucket = "janus-test".to_string();
        std::fs::create_dir_all(root.path().join(&bucket)).unwrap();
        let port = janus::dist::launch::free_port().unwrap();
        let mut s = Self {
            port,
            bucket,
            root,
            child: None,
        };
        s.restart();
        s
    }

    /// Start (again) on the same port and data.
    pub fn restart(&mut self) {
        let child = Command::new(Self::binary())
            .args(["--port", &format!("127.0.0.1:{}", self.port), "posix"])
            .arg(self.root.path())
            .env("ROOT_ACCESS_KEY", S3_KEY)
            .env("ROOT_SECRET_KEY", S3_SECRET)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("versitygw starts");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "S3 server did not listen on {}",
                self.port
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `s3://bucket/<path>`
    pub fn url(&self, path: &str) -> String {
        format!("s3://{}/{path}", self.bucket)
    }

    /// Where an object's bytes live on disk (the posix backend stores them as files).
    pub fn object_path(&self, key: &str) -> PathBuf {
        self.root.path().join(&self.bucket).join(key)
    }

    /// The standard variables that point a client at this server.
    pub fn apply_env(&self, cmd: &mut Command) {
        cmd.env("AWS_ACCESS_KEY_ID", S3_KEY)
            .env("AWS_SECRET_ACCESS_KEY", S3_SECRET)
            .env("AWS_ENDPOINT", format!("http://127.0.0.1:{}", self.port))
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_REGION", "us-east-1");
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Start a long-running helper (a server) that dies with the test process: it gets
/// SIGKILL when the thread that forked it exits, so it is forked from a thread that
/// lives as long as the process.
pub fn spawn_tied(mut cmd: Command) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        tx.send(cmd.spawn()).expect("the test waits for the child");
        loop {
            std::thread::park();
        }
    });
    rx.recv().expect("spawner thread").expect("helper starts")
}

/// `GET path` on 127.0.0.1:port: (status, body), or None when nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// Wait until `GET path` answers `status` (panics after `secs`).
pub fn wait_for_status(port: u16, path: &str, status: u16, secs: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if http_get(port, path).is_some_and(|(s, _)| s == status) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "GET {path} on port {port} did not answer {status} within {secs} s"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
