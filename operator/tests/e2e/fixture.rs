//! The real world of the end-to-end tests, set up once per test binary:
//! - a cluster with one real node (tests/controlplane/node-up.sh: containerd, runc,
//!   CNI, kubelet, kube-proxy, CoreDNS) running the project's own images, built here
//!   without a Docker engine by images/build.py and imported into the node;
//! - the operator installed by `helm install` of charts/janus-operator (2 replicas,
//!   leader election, the chart's ServiceAccount and RBAC);
//! - a real S3 server (versitygw) on the node's bridge address, which pods reach;
//! - Debian's Prometheus scraping the operator and trainer pods with
//!   manifests/prometheus/scrape-config.yaml (what the chart's ServiceMonitor and
//!   PodMonitor select);
//! - a tiny model and sample data made by the `janus` binary, in S3.
//!
//! Everything is torn down by a watchdog when the test process exits, however it exits.
//! Nothing is skipped: a missing part fails every test with its log.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const S3_KEY: &str = "janus-e2e-key";
pub const S3_SECRET: &str = "janus-e2e-secret";
pub const BUCKET: &str = "janus-e2e";
pub const RELEASE_NS: &str = "janus-system";
/// The trainer's CPU test image (libtorch mounted from the venv).
pub const TRAINER_IMAGE_TAG: &str =
    concat!("ghcr.io/janus/trainer:", env!("CARGO_PKG_VERSION"), "-cpu");
/// Where the venv's site-packages is mounted in trainer pods (images/build.py).
pub const LIBTORCH_MOUNT: &str = "/opt/libtorch";

pub struct World {
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub kubectl: PathBuf,
    pub helm: PathBuf,
    pub janus: PathBuf,
    pub node_ip: String,
    pub s3_port: u16,
    pub s3_root: PathBuf,
    pub prometheus: String,
    /// The venv's site-packages (torch/ and nvidia/), mounted into trainer pods.
    pub site_packages: PathBuf,
    /// Seconds each phase of the set-up took (for the README's budget table).
    pub timings: Vec<(&'static str, f64)>,
    /// versitygw and prometheus: they live as long as the test process (the watchdog
    /// kills them, by the pids in DIR/extra-pids, when it exits).
    _servers: Vec<std::process::Child>,
}

pub fn repo() -> PathBuf {
    Path::new(
        &std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into()),
    )
    .join("..")
    .canonicalize()
    .unwrap()
}

fn controlplane() -> PathBuf {
    std::env::var_os("JANUS_CONTROLPLANE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("tests/controlplane"))
}

/// Run to success; stdout. Panics with both streams otherwise.
pub fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `janus` binary of the same cargo build (target/<profile>/janus).
fn janus_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let p = exe.parent().unwrap().parent().unwrap().join("janus");
    assert!(
        p.exists(),
        "{} not found: build the workspace first (`cargo build --release --workspace --bins`, as `make test` does)",
        p.display()
    );
    p
}

fn python() -> PathBuf {
    let p = std::env::var_os("JANUS_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".venv/bin/python"));
    assert!(
        p.exists(),
        "{}: no venv python (run through `make test`)",
        p.display()
    );
    p
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

impl World {
    pub fn get() -> &'static World {
        static WORLD: OnceLock<World> = OnceLock::new();
        WORLD.get_or_init(World::start)
    }

    fn start() -> World {
        assert!(
            is_root(),
            "the end-to-end tests run a real kubelet and need root (CI runs as root)"
        );
        let mut timings = vec![];
        let mut t = Instant::now();
        let mut lap = |name: &'static str, t: &mut Instant| {
            timings.push((name, t.elapsed().as_secs_f64()));
            *t = Instant::now();
        };
        let base = option_env!("CARGO_TARGET_TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let dir = base.join(format!("janus-e2e-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cp = controlplane();
        // Watchdog (detached on purpose): tears everything down once this process is gone.
        let me = std::process::id();
        #[allow(clippy::zombie_processes)]
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "while kill -0 {me} 2>/dev/null; do sleep 1; done; \
                 [ -f '{d}/extra-pids' ] && xargs -r kill -9 < '{d}/extra-pids' 2>/dev/null; \
                 '{down}' '{d}' >'{d}/teardown.log' 2>&1",
                d = dir.display(),
                down = cp.join("down.sh").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the teardown watchdog");

        // Images, built here without a Docker engine.
        let janus = janus_binary();
        let operator = PathBuf::from(env!("CARGO_BIN_EXE_janus-operator"));
        let build = |image: &str, tag: &str, binary: &Path| {
            let out = dir.join(format!("images/{image}.tar"));
            run(
                Command::new("python3")
                    .arg(repo().join("images/build.py"))
                    .args([image, "--tag", tag, "--binary"])
                    .arg(binary)
                    .arg("--out")
                    .arg(&out),
                &format!("images/build.py {image}"),
            );
            out
        };
        let operator_tar = build(
            "operator",
            concat!("ghcr.io/janus/janus-operator:", env!("CARGO_PKG_VERSION")),
            &operator,
        );
        let trainer_tar = build("trainer-cpu", TRAINER_IMAGE_TAG, &janus);
        lap("images (build.py)", &mut t);

        run(
            Command::new(cp.join("node-up.sh"))
                .arg(&dir)
                .arg(&operator_tar)
                .arg(&trainer_tar)
                .stderr(Stdio::inherit()),
            "tests/controlplane/node-up.sh (see its output above)",
        );
        lap(
            "node-up.sh (control plane, node, CoreDNS, image import)",
            &mut t,
        );
        let env = parse_env(&dir.join("env"));
        let kubeconfig = dir.join("kubeconfig");
        let kubectl = PathBuf::from(&env["JANUS_K8S_BIN"]).join("kubectl");
        let kubectl_path = kubectl.clone();
        let helm = PathBuf::from(&env["JANUS_HELM"]);
        let node_ip = env["JANUS_NODE_IP"].clone();

        // S3 on the node address: reachable from the host and from every pod.
        let s3_root = dir.join("s3");
        std::fs::create_dir_all(s3_root.join(BUCKET)).unwrap();
        let s3_port = free_port();
        let versitygw = std::env::var_os("JANUS_VERSITYGW")
            .map(PathBuf::from)
            .expect("JANUS_VERSITYGW (set by the Makefile, which builds versitygw)");
        let child = Command::new(&versitygw)
            .args(["--port", &format!("{node_ip}:{s3_port}"), "posix"])
            .arg(&s3_root)
            .env("ROOT_ACCESS_KEY", S3_KEY)
            .env("ROOT_SECRET_KEY", S3_SECRET)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("versitygw.log")).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("versitygw starts");
        record_pid(&dir, child.id());
        let mut servers = vec![child];
        wait_until("versitygw listening", Duration::from_secs(20), || {
            std::net::TcpStream::connect((node_ip.as_str(), s3_port)).ok()
        });

        // Prometheus (Debian's package), scraping every second. Debian builds it without
        // kubernetes_sd_configs ("field kubernetes_sd_configs not found in type
        // config.ScrapeConfig"), so the targets come from file_sd, written by a
        // discovery thread that selects exactly what manifests/prometheus/scrape-config.yaml
        // (and the chart's ServiceMonitor / PodMonitor) select.
        let prom_port = free_port();
        let sd = dir.join("prometheus-sd");
        std::fs::create_dir_all(&sd).unwrap();
        let prom_cfg = dir.join("prometheus.yml");
        std::fs::write(
            &prom_cfg,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                 scrape_configs:\n\
                 - job_name: janus-operator\n  file_sd_configs: [{{files: ['{op}'], refresh_interval: 1s}}]\n\
                 - job_name: janus-trainers\n  honor_labels: true\n  file_sd_configs: [{{files: ['{tr}'], refresh_interval: 1s}}]\n",
                op = sd.join("operator.json").display(),
                tr = sd.join("trainers.json").display(),
            ),
        )
        .unwrap();
        spawn_discovery(kubectl_path.clone(), dir.join("kubeconfig"), sd);
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", prom_cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("prometheus-data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus starts (Debian package `prometheus`; make node-deps installs it)");
        record_pid(&dir, child.id());
        servers.push(child);
        wait_until("prometheus ready", Duration::from_secs(30), || {
            http_get(&format!("http://127.0.0.1:{prom_port}/-/ready")).ok()
        });
        let prometheus = format!("http://127.0.0.1:{prom_port}");

        let site_packages = PathBuf::from(
            run(
                Command::new(python()).args([
                    "-c",
                    "import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))",
                ]),
                "find the venv's torch",
            )
            .trim(),
        );

        let mut w = World {
            dir,
            kubeconfig,
            kubectl,
            helm,
            janus,
            node_ip,
            s3_port,
            s3_root,
            prometheus,
            site_packages,
            timings: vec![],
            _servers: servers,
        };
        w.helm_install();
        lap("helm install (operator pods Ready)", &mut t);
        w.upload_tiny_model_and_data();
        lap("tiny model + data into S3", &mut t);
        w.timings = timings;
        eprintln!("e2e set-up: {:?} (logs in {})", w.timings, w.dir.display());
        w
    }

    pub fn kubectl(&self, args: &[&str]) -> String {
        run(
            Command::new(&self.kubectl)
                .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
                .args(args),
            &format!("kubectl {}", args.join(" ")),
        )
    }

    /// kubectl without asserting success: (ok, stdout + stderr).
    pub fn kubectl_try(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(&self.kubectl)
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    pub fn kubectl_apply(&self, yaml: &str) {
        let path = self.dir.join(format!("apply-{}.yaml", fastrand_id()));
        std::fs::write(&path, yaml).unwrap();
        self.kubectl(&["apply", "-f", &path.display().to_string()]);
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.kubectl(&a)).unwrap()
    }

    pub fn helm(&self, args: &[&str]) -> String {
        run(
            Command::new(&self.helm)
                .args(args)
                .env("KUBECONFIG", &self.kubeconfig)
                .env("HELM_CACHE_HOME", self.dir.join("helm/cache"))
                .env("HELM_CONFIG_HOME", self.dir.join("helm/config"))
                .env("HELM_DATA_HOME", self.dir.join("helm/data")),
            &format!("helm {}", args.join(" ")),
        )
    }

    /// `helm install` of the chart as a user would, with the locally built image (the
    /// chart's own image name and tag: it is already on the node, so nothing is pulled).
    fn helm_install(&self) {
        self.helm(&[
            "install",
            "janus-operator",
            &repo().join("charts/janus-operator").display().to_string(),
            "--namespace",
            RELEASE_NS,
            "--create-namespace",
            "--set",
            "image.pullPolicy=Never",
            "--wait",
            "--timeout",
            "180s",
        ]);
    }

    pub fn s3_url(&self, key: &str) -> String {
        format!("s3://{BUCKET}/{key}")
    }

    /// The file behind an object (versitygw's posix backend stores objects as files).
    pub fn s3_path(&self, key: &str) -> PathBuf {
        self.s3_root.join(BUCKET).join(key)
    }

    /// The variables that point a client at the S3 server.
    pub fn s3_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", S3_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", S3_SECRET.into()),
            (
                "AWS_ENDPOINT",
                format!("http://{}:{}", self.node_ip, self.s3_port),
            ),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    /// Sample data and a tiny Mistral-style model (trained BPE tokenizer) made by the
    /// `janus` binary, published to S3 through the trainer's own storage code.
    fn upload_tiny_model_and_data(&self) {
        let work = self.dir.join("work");
        run(
            Command::new(&self.janus)
                .args(["sample-data", "--out"])
                .arg(work.join("data"))
                .args(["--instructions", "96"]),
            "janus sample-data",
        );
        let cfg = work.join("model-config.json");
        // Big enough that a step takes visible time on CPU (the test watches the job run).
        std::fs::write(
            &cfg,
            serde_json::json!({
                "architectures": ["MistralForCausalLM"], "model_type": "mistral",
                "vocab_size": 512, "hidden_size": 128, "intermediate_size": 344,
                "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                "hidden_act": "silu", "max_position_embeddings": 512, "rms_norm_eps": 1e-6,
                "rope_theta": 10000.0, "tie_word_embeddings": false,
                "bos_token_id": 1, "eos_token_id": 2
            })
            .to_string(),
        )
        .unwrap();
        run(
            Command::new(&self.janus)
                .args(["init-model", "--out"])
                .arg(work.join("model"))
                .arg("--config")
                .arg(&cfg)
                .arg("--train-tokenizer-on")
                .arg(work.join("data/sft.jsonl"))
                .args(["--vocab-size", "512"]),
            "janus init-model",
        );
        for (src, key) in [
            (work.join("model"), "models/tiny"),
            (work.join("data"), "data"),
        ] {
            for e in std::fs::read_dir(&src).unwrap() {
                let e = e.unwrap();
                let dst = self.s3_path(&format!("{key}/{}", e.file_name().to_string_lossy()));
                std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
                std::fs::copy(e.path(), &dst).unwrap();
            }
        }
    }

    /// An instant query; the result vector.
    pub fn prom_query(&self, q: &str) -> Vec<Value> {
        let url = format!("{}/api/v1/query?query={}", self.prometheus, urlencode(q));
        let body = http_get(&url).unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{url}: {e}: {body}"));
        assert_eq!(v["status"], "success", "{q}: {body}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// Host pids of the `janus` processes of pod `pod` in `ns` (from their environment:
    /// the operator sets JANUS_POD_NAME / JANUS_POD_NAMESPACE on every worker).
    pub fn trainer_pids(&self, ns: &str, pod: &str) -> Vec<i32> {
        let want = [
            format!("JANUS_POD_NAME={pod}"),
            format!("JANUS_POD_NAMESPACE={ns}"),
        ];
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() == "janus")
                    && std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
                        let vars: Vec<&[u8]> = env.split(|b| *b == 0).collect();
                        want.iter().all(|w| vars.contains(&w.as_bytes()))
                    })
            })
            .collect()
    }
}

/// Pod discovery for Prometheus' file_sd, every second: the operator pods (label
/// app.kubernetes.io/name=janus-operator, container port `http`) and the trainer pods
/// (label janus.dev/job, container port `metrics`), Running, with `namespace` / `pod`
/// target labels as kubernetes_sd relabelling gives them.
fn spawn_discovery(kubectl: PathBuf, kubeconfig: PathBuf, sd: PathBuf) {
    std::thread::spawn(move || loop {
        let out = Command::new(&kubectl)
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .args(["get", "pods", "-A", "-o", "json"])
            .stdin(Stdio::null())
            .output();
        if let Some(pods) = out
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| serde_json::from_slice::<Value>(&o.stdout).ok())
        {
            let groups = |select: &dyn Fn(&Value) -> bool, port: &str, with_ns: bool| -> Value {
                let items = pods["items"].as_array().cloned().unwrap_or_default();
                let g: Vec<Value> = items
                    .iter()
                    .filter(|p| select(p) && p["status"]["phase"] == "Running")
                    .filter_map(|p| {
                        let ip = p["status"]["podIP"].as_str()?;
                        let n = p["spec"]["containers"].as_array()?.iter().find_map(|c| {
                            c["ports"].as_array()?.iter().find(|q| q["name"] == port)?
                                ["containerPort"]
                                .as_u64()
                        })?;
                        let mut labels = serde_json::json!({"pod": p["metadata"]["name"]});
                        if with_ns {
                            labels["namespace"] = p["metadata"]["namespace"].clone();
                        }
                        Some(
                            serde_json::json!({"targets": [format!("{ip}:{n}")], "labels": labels}),
                        )
                    })
                    .collect();
                Value::Array(g)
            };
            let op = groups(
                &|p| p["metadata"]["labels"]["app.kubernetes.io/name"] == "janus-operator",
                "http",
                true,
            );
            let tr = groups(
                &|p| p["metadata"]["labels"]["janus.dev/job"].is_string(),
                "metrics",
                false,
            );
            for (name, v) in [("operator.json", op), ("trainers.json", tr)] {
                let tmp = sd.join(format!(".{name}"));
                if std::fs::write(&tmp, v.to_string()).is_ok() {
                    let _ = std::fs::rename(&tmp, sd.join(name));
                }
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    });
}

fn record_pid(dir: &Path, pid: u32) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("extra-pids"))
        .unwrap();
    writeln!(f, "{pid}").unwrap();
}

fn parse_env(path: &Path) -> std::collections::HashMap<String, String> {
    // Lines `export NAME=value` written with printf %q (no spaces in our values).
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.strip_prefix("export ")?.split_once('=')?;
            Some((k.to_string(), v.trim_matches('\'').to_string()))
        })
        .collect()
}

fn fastrand_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// GET over plain HTTP/1.0 (Prometheus, /metrics): the body, or why not.
pub fn http_get(url: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").ok_or("not http://")?;
    let (host, path) = rest
        .split_once('/')
        .map(|(h, p)| (h, format!("/{p}")))
        .unwrap_or((rest, "/".into()));
    let mut s = std::net::TcpStream::connect(host).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut body = String::new();
    s.read_to_string(&mut body).map_err(|e| e.to_string())?;
    let (head, rest) = body.split_once("\r\n\r\n").ok_or("no HTTP header")?;
    if !head.starts_with("HTTP/1.")
        || !head
            .split_whitespace()
            .nth(1)
            .is_some_and(|c| c.starts_with('2'))
    {
        return Err(format!("{}: {rest}", head.lines().next().unwrap_or("")));
    }
    Ok(rest.to_string())
}

fn is_root() -> bool {
    // The effective uid is the second field of the Uid line.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}
