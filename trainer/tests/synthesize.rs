//! `janus data synthesize` against real HTTP servers: a scripted OpenAI-compatible
//! server in this test (answers chosen per request from its content; faults: a 429
//! with Retry-After, a 500, invalid JSON, a wrong dimension, a duplicate set and a
//! duplicate system message) for every stage, the exact requests, the counts, a kill
//! and resume, and the outputs read back by the trainer's readers; and `janus serve`
//! on a tiny model for the whole pipeline with nonsense answers.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use janus::config::SynthConfig;
use janus::data::stream::{ShardedData, StreamPlan};
use janus::data::{load_records, PreferenceRecord, SftRecord};
use janus::synth::progress::{StageCounts, SynthProgress};
use janus::synth::records::Key;
use janus::synth::stages;
use janus_crds::config::synth::{layout, SynthStage};
use regex::Regex;
use serde_json::{json, Value};

const DIMS: [&str; 4] = [
    "style",
    "background_knowledge",
    "informativeness",
    "harmlessness",
];

/// What the scripted server saw: every request with what it answered.
#[derive(Default)]
struct Script {
    /// Inject the faults of the full-pipeline test.
    faults: bool,
    /// Seconds each answer waits.
    delay: f64,
    requests: Mutex<Vec<Value>>,
    /// How often each call (stage, instruction, set, preference) was asked.
    tries: Mutex<HashMap<String, usize>>,
}

struct Scripted {
    port: u16,
    script: Arc<Script>,
}

fn num(re: &str, text: &str) -> usize {
    Regex::new(re)
        .unwrap()
        .captures(text)
        .unwrap_or_else(|| panic!("no {re} in {text}"))[1]
        .parse()
        .unwrap()
}

fn set_json(i: usize, s: usize, dims: &[&str]) -> String {
    let ps: Vec<Value> = dims
        .iter()
        .map(|d| {
            json!({"dimension": d, "subdimension": format!("sub-{d}"),
                   "preference": format!("pref-{i}-{s}-{d}"), "description": format!("Describe {d} for item-{i}.")})
        })
        .collect();
    json!({ "preference_set": ps }).to_string()
}

fn rubric_json(i: usize, s: usize, d: &str, keys: &[&str]) -> String {
    let sd: serde_json::Map<String, Value> = keys
        .iter()
        .map(|k| (k.to_string(), json!(format!("score {k}"))))
        .collect();
    json!({"criteria": format!("Does it follow {d} for item-{i} set {s}?"), "score_descriptions": sd})
        .to_string()
}

/// The call a request is, and the scripted answer to its `n`-th try (0-based).
fn answer(faults: bool, body: &Value, n: usize) -> (String, String) {
    let msgs = body["messages"].as_array().unwrap();
    let first = msgs[0]["content"].as_str().unwrap();
    let last = msgs.last().unwrap()["content"].as_str().unwrap();
    let i = num(r"item-(\d+)", last);
    if msgs[0]["role"] == "system" {
        let s = num(r"set (\d+)", first);
        return (
            format!("answers/{i}/{s}"),
            format!("Answer for item-{i} set {s}."),
        );
    }
    if first.contains("preference set") {
        let s = num(r"preference set (\d+) of", first) - 1;
        let text = match (faults, i, s, n) {
            (true, 0, 0, 0) => "Sure! Here is a preference set.".to_string(),
            (true, 1, 1, _) => set_json(
                i,
                s,
                &["style", "background", "informativeness", "harmlessness"],
            ),
            (true, 0, 2, _) => set_json(0, 0, &DIMS),
            _ => set_json(i, s, &DIMS),
        };
        return (format!("preferences/{i}/{s}"), text);
    }
    if first.contains("You write system messages") {
        let s = num(r"pref-\d+-(\d+)-", first);
        let text = if faults && (i, s) == (2, 1) {
            "YOU ARE THE GUIDE   FOR ITEM-2 SET 0".to_string()
        } else {
            format!("You are the guide for item-{i} set {s}.")
        };
        return (format!("system/{i}/{s}"), text);
    }
    let s = num(r"set (\d+)\.", first);
    let d = Regex::new(r"The preference to grade \((\w+),")
        .unwrap()
        .captures(first)
        .unwrap()[1]
        .to_string();
    let text = if faults && (i, s, d.as_str(), n) == (0, 0, "style", 0) {
        rubric_json(i, s, &d, &["1", "2", "3", "4"])
    } else {
        rubric_json(i, s, &d, &["1", "2", "3", "4", "5"])
    };
    (format!("rubrics/{i}/{s}/{d}"), text)
}

async fn chat(State(s): State<Arc<Script>>, body: String) -> Response {
    let v: Value = serde_json::from_str(&body).unwrap();
    let seen = s.requests.lock().unwrap().len();
    // Faults of the transport: the first request a 429 (Retry-After: 1), the second a 500.
    let (status, key, text) = if s.faults && seen < 2 {
        let status = if seen == 0 { 429 } else { 500 };
        (status, String::new(), String::new())
    } else {
        let mut tries = s.tries.lock().unwrap();
        let probe = answer(false, &v, 0).0;
        let n = *tries.get(&probe).unwrap_or(&0);
        let (key, text) = answer(s.faults, &v, n);
        *tries.entry(key.clone()).or_default() += 1;
        (200, key, text)
    };
    s.requests.lock().unwrap().push(json!({
        "key": key, "status": status, "body": v,
        "t": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64(),
    }));
    if s.delay > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(s.delay)).await;
    }
    match status {
        429 => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "1")],
            "slow down",
        )
            .into_response(),
        500 => (StatusCode::INTERNAL_SERVER_ERROR, "oops").into_response(),
        _ => {
            let completion = json!({
                "id": "x", "object": "chat.completion", "model": v["model"],
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
            });
            (
                [("content-type", "application/json")],
                completion.to_string(),
            )
                .into_response()
        }
    }
}

impl Scripted {
    fn start(faults: bool, delay: f64) -> Self {
        let script = Arc::new(Script {
            faults,
            delay,
            ..Default::default()
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = axum::Router::new()
            .route("/v1/chat/completions", post(chat))
            .with_state(script.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let l = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(l, app).await.unwrap();
            });
        });
        Self { port, script }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    fn requests(&self) -> Vec<Value> {
        self.script.requests.lock().unwrap().clone()
    }
}

/// `n` instructions `Describe item-<i> in detail.` as JSONL.
fn instructions(dir: &Path, n: usize) -> PathBuf {
    let p = dir.join("instructions.jsonl");
    let text: String = (0..n)
        .map(|i| {
            json!({"instruction": format!("Describe item-{i} in detail."), "source": format!("src-{}", i % 2)})
                .to_string()
                + "\n"
        })
        .collect();
    std::fs::write(&p, text).unwrap();
    p
}

fn overrides(input: &Path, out: &Path, url: &str, extra: &[&str]) -> Vec<String> {
    let mut o = vec![
        format!("input.path={}", input.display()),
        format!("output_dir={}", out.display()),
        format!("llm.url={url}"),
        "llm.model=scripted".into(),
        "llm.api_key_env=null".into(),
    ];
    o.extend(extra.iter().map(|s| s.to_string()));
    o
}

fn counts_of<'a>(s: &'a [StageCounts], stage: &str) -> &'a StageCounts {
    s.iter().find(|c| c.stage == stage).unwrap()
}

fn repo_prompt(name: &str) -> String {
    std::fs::read_to_string(common::repo().join("prompts/synth").join(name))
        .unwrap()
        .trim_end()
        .to_string()
}

/// Runs a command that must succeed and returns its stdout (`common::run_ok` returns
/// stderr, the JSON log; the summary is on stdout).
fn stdout_of(mut cmd: std::process::Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The summary: the last line the command printed (log lines may come before it).
fn last_line(stdout: &str) -> &str {
    stdout.trim().lines().last().unwrap_or_default()
}

/// Complete lines of a log (a line cut by a kill has no newline yet).
fn lines(p: &Path) -> usize {
    std::fs::read_to_string(p)
        .map(|t| t.matches('\n').count())
        .unwrap_or(0)
}

#[test]
fn every_stage_against_a_scripted_server_with_faults_invalid_outputs_and_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let input = instructions(dir.path(), 3);
    let out = dir.path().join("out");
    let server = Scripted::start(true, 0.0);
    let cfg = SynthConfig::resolve(
        None,
        &overrides(
            &input,
            &out,
            &server.url(),
            &[
                "synthesis.stages=[preferences, system, answers, rubrics, pairs]",
                "llm.concurrency=3",
            ],
        ),
    )
    .unwrap();
    let started = Instant::now();
    let s = stages::run(&cfg, &mut SynthProgress::quiet()).unwrap();
    let st = &s.stages;

    // Preferences: 9 calls; (0,0) re-asked once after invalid JSON, (1,1) invalid 3
    // times (a wrong dimension) then failed, (0,2) a duplicate of (0,0), dropped.
    let p = counts_of(st, "preferences");
    assert_eq!(
        (p.tasks, p.valid, p.invalid, p.duplicates, p.calls_made),
        (9, 8, 1, 1, 9 + 1 + 2)
    );
    // System: the 7 kept sets; (2,1) duplicates (2,0) once normalised.
    let y = counts_of(st, "system");
    assert_eq!((y.tasks, y.valid, y.invalid, y.duplicates), (7, 7, 0, 1));
    let a = counts_of(st, "answers");
    assert_eq!((a.tasks, a.valid, a.records_out), (6, 6, Some(6)));
    // Rubrics: one per preference of the 6 kept system messages; one re-asked.
    let r = counts_of(st, "rubrics");
    assert_eq!(
        (r.tasks, r.valid, r.calls_made, r.records_out),
        (24, 24, 25, Some(6))
    );
    // Pairs: every answered set chosen once, rejected the next set's answer.
    assert_eq!(counts_of(st, "pairs").records_out, Some(6));

    // The transport faults: a 429 (waited for its Retry-After) and a 500, each retried.
    let reqs = server.requests();
    let statuses: Vec<u64> = reqs.iter().map(|r| r["status"].as_u64().unwrap()).collect();
    assert_eq!(&statuses[..2], &[429, 500]);
    assert_eq!(
        reqs.len(),
        2 + 12 + 7 + 6 + 25,
        "every request the server saw"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After was not honoured"
    );

    // Exact requests: a preference call, and an answer call (system message + instruction).
    let pref = reqs.iter().find(|r| r["key"] == "preferences/0/1").unwrap();
    let content = repo_prompt("preferences.txt")
        .replace("{instruction}", "Describe item-0 in detail.")
        .replace("{set_index}", "2")
        .replace("{sets}", "3");
    let seed = janus::synth::config::seed(42, SynthStage::Preferences, Key::of_set(0, 1), 0);
    assert_eq!(
        pref["body"],
        json!({"model": "scripted", "messages": [{"role": "user", "content": content}],
               "temperature": 1.0, "top_p": 0.9, "max_tokens": 2048, "seed": seed, "n": 1})
    );
    let ans = reqs.iter().find(|r| r["key"] == "answers/0/1").unwrap();
    assert_eq!(
        ans["body"]["messages"],
        json!([{"role": "system", "content": "You are the guide for item-0 set 1."},
               {"role": "user", "content": "Describe item-0 in detail."}])
    );
    // A re-ask is another sample: its seed differs.
    let seeds: Vec<&Value> = reqs
        .iter()
        .filter(|r| r["key"] == "preferences/0/0")
        .map(|r| &r["body"]["seed"])
        .collect();
    assert!(seeds.len() == 2 && seeds[0] != seeds[1], "{seeds:?}");

    // The failure is recorded with its reason and last text.
    let log = std::fs::read_to_string(out.join(layout::PREFERENCES_LOG)).unwrap();
    let failed: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v.get("error").is_some())
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(
        (failed[0]["instruction"].as_u64(), failed[0]["set"].as_u64()),
        (Some(1), Some(1))
    );
    assert!(failed[0]["error"]
        .as_str()
        .unwrap()
        .contains("background_knowledge"));
    assert_eq!(failed[0]["attempts"], 3);

    // The outputs, read back by the trainer's and the evaluator's readers.
    let (sft, _) = load_records::<SftRecord>(&[out.join(layout::SFT)], false).unwrap();
    assert_eq!(sft.len(), 6);
    assert!(sft
        .iter()
        .any(|r| r.system == "You are the guide for item-1 set 2."
            && r.prompt == "Describe item-1 in detail."
            && r.output == "Answer for item-1 set 2."));
    let sft_rows: Vec<Value> = janus::data::read_rows(&out.join(layout::SFT))
        .unwrap()
        .into_iter()
        .map(|r| r.value.unwrap())
        .collect();
    let dims: Vec<&str> = sft_rows[0]["preference_set"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["dimension"].as_str().unwrap())
        .collect();
    assert_eq!(dims, DIMS);
    assert_eq!(sft_rows[0]["original_source"], "src-0");
    let (pairs, _) = load_records::<PreferenceRecord>(&[out.join(layout::PAIRS)], false).unwrap();
    assert_eq!(pairs.len(), 6);
    let p0 = pairs
        .iter()
        .find(|p| p.system == "You are the guide for item-0 set 0.")
        .unwrap();
    assert_eq!(
        (p0.chosen.as_str(), p0.rejected.as_str()),
        ("Answer for item-0 set 0.", "Answer for item-0 set 1.")
    );
    let bench = janus::eval::bench::load(out.join(layout::BENCH).to_str().unwrap(), None).unwrap();
    assert_eq!(bench.items.len(), 6);
    let item = &bench.items[0];
    assert_eq!(item.rubrics.len(), 4);
    assert_eq!(item.dimension_of(1), Some("background_knowledge"));
    assert_eq!(item.reference_answer, "Answer for item-0 set 0.");
    // The sharded datasets stream as training reads them.
    for (dir_name, n) in [(layout::SFT_SHARDS, 6), (layout::PAIRS_SHARDS, 6)] {
        let d = ShardedData::open(out.join(dir_name).to_str().unwrap(), Duration::from_secs(5))
            .unwrap();
        assert_eq!(d.index.samples, n);
        let plan = StreamPlan {
            seed: 1,
            epoch: 0,
            rank: 0,
            world: 1,
            window_blocks: 2,
            prefetch_windows: 1,
        };
        if dir_name == layout::SFT_SHARDS {
            let got = d.stream::<SftRecord>(plan, 0).unwrap().take(6).unwrap();
            assert!(got.iter().all(|r| r.parsed.is_ok()));
        } else {
            let got = d
                .stream::<PreferenceRecord>(plan, 0)
                .unwrap()
                .take(6)
                .unwrap();
            assert!(got.iter().all(|r| r.parsed.is_ok()));
        }
    }
    let summary: Value =
        serde_json::from_slice(&std::fs::read(out.join(layout::SUMMARY)).unwrap()).unwrap();
    assert_eq!(summary["stages"][0]["invalid"], 1);

    // A rerun asks nothing and writes the same data.
    let before = std::fs::read(out.join(layout::SFT)).unwrap();
    let n = server.requests().len();
    let s2 = stages::run(&cfg, &mut SynthProgress::quiet()).unwrap();
    assert_eq!(
        server.requests().len(),
        n,
        "a finished run asks nothing again"
    );
    assert_eq!(counts_of(&s2.stages, "preferences").already_done, 9);
    assert_eq!(std::fs::read(out.join(layout::SFT)).unwrap(), before);
}

#[test]
fn a_killed_run_asks_only_what_has_no_record() {
    let dir = tempfile::tempdir().unwrap();
    let input = instructions(dir.path(), 4);
    let out = dir.path().join("out");
    let server = Scripted::start(false, 0.1);
    let o = overrides(&input, &out, &server.url(), &["llm.concurrency=2"]);
    let cmd = || {
        let mut c = common::janus();
        c.args(["data", "synthesize"]).args(&o);
        c
    };
    let (mut child, _lines) = common::spawn_logged(cmd());
    let answers = out.join(layout::ANSWERS_LOG);
    let deadline = Instant::now() + Duration::from_secs(60);
    while lines(&answers) < 5 {
        assert!(Instant::now() < deadline, "5 answers not recorded in 60 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let answered = lines(&answers);
    let recorded: usize = [
        layout::PREFERENCES_LOG,
        layout::SYSTEM_LOG,
        layout::ANSWERS_LOG,
    ]
    .iter()
    .map(|l| lines(&out.join(l)))
    .sum();
    let total = 3 * 4 * 3;
    assert!(recorded < total, "killed too late");
    let before = server.requests().len();
    let stdout = stdout_of(cmd());
    let second = server.requests().len() - before;
    assert_eq!(
        second,
        total - recorded,
        "the rerun asks exactly what has no record"
    );
    let s: Value = serde_json::from_str(last_line(&stdout)).unwrap();
    assert_eq!(
        s["stages"][2]["already_done"].as_u64().unwrap() as usize,
        answered,
        "{s}"
    );
    let (sft, _) = load_records::<SftRecord>(&[out.join(layout::SFT)], false).unwrap();
    assert_eq!(sft.len(), 12);
    let keys: std::collections::BTreeSet<(String, String)> = sft
        .iter()
        .map(|r| (r.system.clone(), r.output.clone()))
        .collect();
    assert_eq!(keys.len(), 12, "each answer once");
}

/// `janus serve` on the tiny model as the generating model.
fn serve(model: &Path) -> (u16, std::process::Child) {
    let port = janus::dist::launch::free_port().unwrap();
    let mut serve = common::janus();
    serve
        .args(["serve", "--model", model.to_str().unwrap()])
        .args([
            "--port",
            &port.to_string(),
            "--dtype",
            "float32",
            "--device",
            "cpu",
        ])
        .args(["--served-model-name", "tiny"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let child = common::spawn_tied(serve);
    common::wait_for_status(port, "/health", 200, 120);
    (port, child)
}

fn check_counts_add_up(s: &Value) {
    let st: BTreeMap<&str, &Value> = s["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["stage"].as_str().unwrap(), c))
        .collect();
    let n = |stage: &str, k: &str| st[stage][k].as_u64().unwrap();
    for stage in ["preferences", "system", "answers", "rubrics"] {
        if st.contains_key(stage) {
            assert_eq!(
                n(stage, "tasks"),
                n(stage, "valid") + n(stage, "invalid"),
                "{stage}: {s}"
            );
            assert!(n(stage, "calls_made") >= n(stage, "tasks") - n(stage, "already_done"));
        }
    }
    if st.contains_key("preferences") {
        assert_eq!(
            n("system", "tasks"),
            n("preferences", "valid") - n("preferences", "duplicates")
        );
    }
    assert_eq!(
        n("answers", "tasks"),
        n("system", "valid") - n("system", "duplicates")
    );
    assert_eq!(n("answers", "records_out"), n("answers", "valid"));
    assert_eq!(n("rubrics", "tasks"), 4 * n("answers", "tasks"));
}

#[test]
fn the_pipeline_runs_end_to_end_against_janus_serve() {
    let dir = tempfile::tempdir().unwrap();
    let (data, model) = common::tiny_setup(dir.path(), 4);
    let (port, _server) = serve(&model);
    // Short prompts of the user's own (the tiny model's context is small).
    let prompts = dir.path().join("prompts");
    std::fs::create_dir_all(&prompts).unwrap();
    for (name, text) in [
        ("p.txt", "Preferences {set_index}/{sets} for: {instruction}"),
        ("s.txt", "System for: {instruction}"),
        ("r.txt", "Rubric: {dimension} {preference}"),
    ] {
        std::fs::write(prompts.join(name), text).unwrap();
    }
    let p = |n: &str| prompts.join(n).display().to_string();
    let base = |out: &Path, stages: &str| {
        let mut o = overrides(
            &data.join("sft.jsonl"),
            out,
            &format!("http://127.0.0.1:{port}/v1"),
            &[
                "input.limit=2",
                "synthesis.sets_per_instruction=2",
                "synthesis.max_invalid_retries=1",
                "llm.max_tokens=12",
                "llm.concurrency=2",
                "llm.temperature=0",
            ],
        );
        o[3] = "llm.model=tiny".into();
        o.push(format!("synthesis.stages=[{stages}]"));
        o.push(format!("prompts.preferences={}", p("p.txt")));
        o.push(format!("prompts.system={}", p("s.txt")));
        o.push(format!("prompts.rubric={}", p("r.txt")));
        o
    };
    let run = |o: &[String]| -> Value {
        let mut c = common::janus();
        c.args(["data", "synthesize"]).args(o);
        serde_json::from_str(last_line(&stdout_of(c))).unwrap()
    };
    // From scratch: the tiny model writes no preference set, every call is counted.
    let out = dir.path().join("out");
    let s = run(&base(&out, "preferences, system, answers, rubrics, pairs"));
    check_counts_add_up(&s);
    assert_eq!(s["stages"][0]["tasks"], 4);
    let calls = s["stages"][0]["calls_made"].as_u64().unwrap();
    assert!((4..=8).contains(&calls), "{s}");

    // From recorded preference sets: system messages, answers, rubrics and pairs from
    // the model's text, in the published schemas whatever it wrote.
    let out2 = dir.path().join("out2");
    std::fs::create_dir_all(out2.join("stages")).unwrap();
    let recs: String = (0..2)
        .flat_map(|i| (0..2).map(move |s| (i, s)))
        .map(|(i, s)| {
            let set: Value = serde_json::from_str::<Value>(&set_json(i, s, &DIMS)).unwrap()
                ["preference_set"]
                .clone();
            json!({"instruction": i, "set": s, "value": set, "attempts": 1}).to_string() + "\n"
        })
        .collect();
    std::fs::write(out2.join(layout::PREFERENCES_LOG), recs).unwrap();
    let s = run(&base(&out2, "system, answers, rubrics, pairs"));
    check_counts_add_up(&s);
    assert_eq!(s["stages"][0]["tasks"], 4);
    let answers = s["stages"][1]["valid"].as_u64().unwrap() as usize;
    let sft = if answers > 0 {
        load_records::<SftRecord>(&[out2.join(layout::SFT)], false)
            .unwrap()
            .0
            .len()
    } else {
        0
    };
    assert_eq!(sft, answers);
    let rows = lines(&out2.join(layout::PAIRS));
    assert_eq!(
        s["stages"][3]["records_out"].as_u64().unwrap() as usize,
        rows
    );
    if rows > 0 {
        let (pairs, _) =
            load_records::<PreferenceRecord>(&[out2.join(layout::PAIRS)], false).unwrap();
        assert_eq!(pairs.len(), rows);
    }
    eprintln!("janus serve run: {s}");

    // Through janus serve's Batch API: the same requests and seeds, so the greedy
    // model writes the same data.
    let out3 = dir.path().join("out3");
    std::fs::create_dir_all(out3.join("stages")).unwrap();
    std::fs::copy(
        out2.join(layout::PREFERENCES_LOG),
        out3.join(layout::PREFERENCES_LOG),
    )
    .unwrap();
    let mut o = base(&out3, "system, answers, rubrics, pairs");
    o.extend(["llm.mode=batch".into(), "llm.batch_poll_seconds=0.2".into()]);
    let s3 = run(&o);
    check_counts_add_up(&s3);
    for f in [layout::SFT, layout::PAIRS, layout::BENCH] {
        assert_eq!(
            std::fs::read_to_string(out2.join(f)).unwrap_or_default(),
            std::fs::read_to_string(out3.join(f)).unwrap_or_default(),
            "{f}: batch and online differ"
        );
    }
    let batches = out3.join(layout::batches_log(SynthStage::System));
    assert!(lines(&batches) >= 2, "a created and a done record");
}
