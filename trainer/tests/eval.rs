//! The Multifaceted Bench protocol end to end, against real HTTP judges: a scripted
//! OpenAI-compatible server (tests/python/judge_server.py: chosen texts, 429 with
//! Retry-After, 500s, slow answers) for the judge's limits, retries, parser and
//! resumption, and `janus serve` on a tiny model for the whole pipeline
//! (generate -> judge -> score), online and through its Batch API. Scores are checked
//! on a hand-computed fixture.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use janus::config::EvalConfig;
use janus::eval::answers::Answer;
use janus::eval::bench;
use janus::eval::judge::{self, Grade};
use janus::eval::progress::StageProgress;
use janus::eval::score::{self, Baseline, JudgeInfo};
use janus::stage_log::JsonlLog;
use serde_json::{json, Value};

/// The scripted judge, killed with the test.
struct ScriptedJudge {
    port: u16,
    log: PathBuf,
    _child: std::process::Child,
}

impl ScriptedJudge {
    fn start(dir: &Path, args: &[&str]) -> Self {
        let log = dir.join("judge-calls.jsonl");
        let mut cmd = std::process::Command::new(common::python());
        cmd.arg(common::repo().join("tests/python/judge_server.py"))
            .args(["--log", log.to_str().unwrap()])
            .args(args)
            .stdout(std::process::Stdio::piped());
        let mut child = common::spawn_tied(cmd);
        let mut first = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        let port = first
            .trim()
            .strip_prefix("PORT ")
            .expect("PORT line")
            .parse()
            .unwrap();
        Self {
            port,
            log,
            _child: child,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    /// Every request the judge saw, in arrival order.
    fn calls(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut v: Vec<Value> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        v.sort_by(|a, b| a["t"].as_f64().partial_cmp(&b["t"].as_f64()).unwrap());
        v
    }
}

/// A bench of `n` sample items (4 rubrics each, with preference sets) and an
/// answers shard with response `ANSWER-<id>` for each.
fn bench_and_answers(dir: &Path, n: usize) -> (PathBuf, PathBuf) {
    let data = dir.join("data");
    janus::sample::write_sample_data(&data, n, 0).unwrap();
    let out = dir.join("out");
    let (mut log, _) = JsonlLog::open(out.to_str().unwrap(), "answers/shard-00000.jsonl").unwrap();
    let records: Vec<Value> = (0..n)
        .map(|id| {
            serde_json::to_value(Answer {
                item: id,
                response: format!("ANSWER-{id}."),
                finish_reason: "stop".into(),
                prompt_tokens: 10,
                completion_tokens: 3,
                samples: 1,
                reward: None,
            })
            .unwrap()
        })
        .collect();
    log.append(&records).unwrap();
    (data.join("bench.jsonl"), out)
}

fn overrides(bench: &Path, out: &Path, judge_url: &str, extra: &[&str]) -> Vec<String> {
    let mut o = vec![
        format!("bench.path={}", bench.display()),
        format!("output_dir={}", out.display()),
        format!("judge.url={judge_url}"),
        "judge.model=scripted".into(),
        "judge.api_key_env=null".into(),
    ];
    o.extend(extra.iter().map(|s| s.to_string()));
    o
}

fn config(o: &[String]) -> EvalConfig {
    EvalConfig::resolve(None, o).unwrap()
}

fn grades(out: &Path) -> Vec<Grade> {
    let (log, records) = JsonlLog::open(out.to_str().unwrap(), janus::eval::GRADES).unwrap();
    judge::grades_of(&records, &log.url()).unwrap()
}

#[test]
fn judge_retries_429_and_500_with_backoff_and_holds_the_rate_limit() {
    let dir = tempfile::tempdir().unwrap();
    let (bench, out) = bench_and_answers(dir.path(), 3);
    // Every call first gets a 429 (Retry-After: 1 s), then a 500, then its answer.
    let server = ScriptedJudge::start(dir.path(), &["--fail", "429,500", "--retry-after", "1"]);
    let rpm = 240;
    let cfg = config(&overrides(
        &bench,
        &out,
        &server.url(),
        &[
            "judge.runs=1",
            "judge.concurrency=4",
            &format!("judge.requests_per_minute={rpm}"),
        ],
    ));
    let s = judge::run(&cfg, &mut StageProgress::quiet("judge")).unwrap();
    assert_eq!((s.calls_total, s.parse_failures), (12, 0));
    let g = grades(&out);
    assert_eq!(g.len(), 12);
    assert!(g.iter().all(|g| g.score == Some(4) && g.attempts == 1));

    let calls = server.calls();
    assert_eq!(calls.len(), 36, "each of 12 calls: a 429, a 500, then 200");
    let t: Vec<f64> = calls.iter().map(|c| c["t"].as_f64().unwrap()).collect();
    // The limit spaces every start, retries included: 60/240 = 0.25 s apart.
    let interval = 60.0 / rpm as f64;
    let closest = t
        .windows(2)
        .map(|w| w[1] - w[0])
        .fold(f64::INFINITY, f64::min);
    assert!(closest >= interval - 0.03, "two calls {closest:.3} s apart");
    let per_minute = (t.len() - 1) as f64 / (t[t.len() - 1] - t[0]) * 60.0;
    assert!(
        per_minute <= rpm as f64 * 1.03,
        "measured {per_minute:.1} calls/min"
    );
    eprintln!("measured {per_minute:.1} calls per minute (limit {rpm})");
    // After a 429 the same call waits for Retry-After.
    let mut by_key: HashMap<&str, Vec<(f64, u64)>> = HashMap::new();
    for c in &calls {
        by_key
            .entry(c["key"].as_str().unwrap())
            .or_default()
            .push((c["t"].as_f64().unwrap(), c["status"].as_u64().unwrap()));
    }
    for (k, tries) in &by_key {
        let statuses: Vec<u64> = tries.iter().map(|t| t.1).collect();
        assert_eq!(statuses, vec![429, 500, 200], "{k}");
        assert!(
            tries[1].0 - tries[0].0 >= 0.98,
            "{k}: retried {:.3} s after a 429 with Retry-After: 1",
            tries[1].0 - tries[0].0
        );
    }
}

#[test]
fn a_slow_answer_times_out_and_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let (bench, out) = bench_and_answers(dir.path(), 1);
    let server = ScriptedJudge::start(dir.path(), &["--slow-first", "4"]);
    let cfg = config(&overrides(
        &bench,
        &out,
        &server.url(),
        &[
            "judge.runs=1",
            "judge.timeout_seconds=1",
            "judge.concurrency=4",
        ],
    ));
    let started = Instant::now();
    judge::run(&cfg, &mut StageProgress::quiet("judge")).unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the timeout did not cut the slow answers"
    );
    let calls = server.calls();
    assert_eq!(calls.len(), 8, "4 calls, each timed out once then answered");
    assert_eq!(grades(&out).len(), 4);
}

#[test]
fn unparsable_answers_are_reasked_then_counted_as_failures() {
    let dir = tempfile::tempdir().unwrap();
    let (bench, out) = bench_and_answers(dir.path(), 3);
    let replies = dir.path().join("replies.json");
    std::fs::write(
        &replies,
        json!([
            [
                "ANSWER-1.",
                "Good answer, I would say Score 5. No verdict though."
            ],
            ["ANSWER-2.", "Feedback: fine.\n[RESULT] 9"],
            [
                "ANSWER-0.",
                "Closer to Score 3 than 5 at first sight... [RESULT] 4/5"
            ],
        ])
        .to_string(),
    )
    .unwrap();
    let server = ScriptedJudge::start(dir.path(), &["--replies", replies.to_str().unwrap()]);
    let o = overrides(
        &bench,
        &out,
        &server.url(),
        &["judge.runs=1", "judge.max_parse_retries=2"],
    );
    let cfg = config(&o);
    let s = judge::run(&cfg, &mut StageProgress::quiet("judge")).unwrap();
    assert_eq!(
        (s.calls_total, s.parse_failures, s.calls_made),
        (12, 8, 4 + 8 * 3)
    );
    assert_eq!(server.calls().len(), 28);
    let g = grades(&out);
    for x in &g {
        match x.item {
            0 => assert_eq!((x.score, x.attempts), (Some(4), 1)),
            1 => {
                assert_eq!((x.score, x.attempts), (None, 3));
                assert!(
                    x.error.as_deref().unwrap().contains("no `[RESULT]`"),
                    "{x:?}"
                );
            }
            _ => {
                assert_eq!((x.score, x.attempts), (None, 3));
                assert!(x.error.as_deref().unwrap().contains("outside 1-5"), "{x:?}");
            }
        }
    }
    // Scoring leaves failures out (never a 0) and counts them.
    let r = score::run(&cfg, &mut StageProgress::quiet("score")).unwrap();
    assert_eq!(
        (r.mean, r.parse_failures, r.unscored_items),
        (Some(4.0), 8, 2)
    );
    assert_eq!(r.items[1].score, None);
}

#[test]
fn judge_resumes_after_a_kill_without_repeating_a_call() {
    let dir = tempfile::tempdir().unwrap();
    let (bench, out) = bench_and_answers(dir.path(), 6);
    let server = ScriptedJudge::start(dir.path(), &["--delay", "0.15"]);
    let o = overrides(
        &bench,
        &out,
        &server.url(),
        &["judge.runs=2", "judge.concurrency=2"],
    );
    let judge_cmd = || {
        let mut c = common::janus();
        c.args(["eval", "judge"]).args(&o);
        c
    };
    let total = 6 * 4 * 2;
    let (mut child, _lines) = common::spawn_logged(judge_cmd());
    let grades_file = out.join(janus::eval::GRADES);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n = std::fs::read_to_string(&grades_file)
            .map(|t| t.lines().count())
            .unwrap_or(0);
        if n >= 12 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the judge recorded {n} grades in 60 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let recorded: BTreeSet<(usize, usize, usize)> = grades(&out)
        .iter()
        .map(|g| (g.item, g.rubric, g.run))
        .collect();
    assert!(recorded.len() < total, "killed too late");
    let before = server.calls().len();
    common::run_ok(judge_cmd());
    let calls = server.calls();
    let second = calls.len() - before;
    assert_eq!(
        second,
        total - recorded.len(),
        "the restart asks exactly the calls without a grade"
    );
    let first_keys: BTreeSet<&str> = calls[..before]
        .iter()
        .map(|c| c["key"].as_str().unwrap())
        .collect();
    let repeated = calls[before..]
        .iter()
        .filter(|c| first_keys.contains(c["key"].as_str().unwrap()))
        .count();
    assert!(
        repeated <= 2,
        "only calls in flight at the kill are asked again, found {repeated}"
    );
    let all = grades(&out);
    let keys: BTreeSet<_> = all.iter().map(|g| (g.item, g.rubric, g.run)).collect();
    assert_eq!((all.len(), keys.len()), (total, total));
    assert!(recorded.is_subset(&keys));
}

/// A bench of 3 items in two sources, 4 rubrics each with preference dimensions.
fn fixture_bench(dir: &Path) -> PathBuf {
    let dims = [
        "style",
        "background_knowledge",
        "informativeness",
        "harmlessness",
    ];
    let rubric = json!({"criteria": "C", "score_descriptions": {"1": "a", "2": "b", "3": "c", "4": "d", "5": "e"}});
    let lines: Vec<String> = ["a", "a", "b"]
        .iter()
        .map(|src| {
            json!({
                "source": src, "system": "S", "prompt": "P", "reference_answer": "R",
                "preference_set": dims.iter().map(|d| json!({"dimension": d, "subdimension": "x", "preference": "p", "description": "d"})).collect::<Vec<_>>(),
                "rubrics": vec![rubric.clone(); 4],
            })
            .to_string()
        })
        .collect();
    let p = dir.join("bench.jsonl");
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    p
}

fn grade_rows(rows: &[(usize, usize, [Option<u8>; 4])]) -> Vec<Grade> {
    let mut out = vec![];
    for &(item, run, scores) in rows {
        for (rubric, score) in scores.into_iter().enumerate() {
            out.push(Grade {
                item,
                rubric,
                run,
                score,
                feedback: String::new(),
                attempts: 1,
                error: score
                    .is_none()
                    .then(|| "no `[RESULT]` in the answer".into()),
            });
        }
    }
    out
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn scores_and_win_tie_lose_on_a_hand_computed_fixture() {
    let dir = tempfile::tempdir().unwrap();
    let path = fixture_bench(dir.path());
    let b = bench::load(path.to_str().unwrap(), None).unwrap();
    let judge = |runs| JudgeInfo {
        url: "http://judge".into(),
        model: "m".into(),
        runs,
    };
    let ours = grade_rows(&[
        (0, 0, [Some(5), Some(4), Some(3), Some(4)]), // 4.0
        (0, 1, [Some(4), Some(4), Some(4), Some(4)]), // 4.0
        (1, 0, [Some(2), Some(2), Some(3), None]),    // 7/3
        (1, 1, [Some(1), Some(3), Some(2), Some(2)]), // 2.0
        (2, 0, [Some(5), Some(5), Some(5), Some(5)]), // 5.0
        (2, 1, [None, None, None, None]),             // none
    ]);
    let theirs = grade_rows(&[
        (0, 0, [Some(3), Some(4), Some(3), Some(4)]), // 3.5: we win
        (1, 0, [Some(3), Some(3), Some(3), Some(3)]), // 3.0: we lose
        (2, 0, [Some(5), Some(5), Some(5), Some(5)]), // 5.0: a tie
    ]);
    let base = score::compute("base", &b, judge(1), &theirs, None).unwrap();
    let base =
        Baseline::from_results(&serde_json::to_value(&base).unwrap(), "base/results.json").unwrap();
    let r = score::compute("ours", &b, judge(2), &ours, Some(&base)).unwrap();

    let item: Vec<Option<f64>> = r.items.iter().map(|i| i.score).collect();
    assert!(close(item[0].unwrap(), 4.0));
    assert!(close(item[1].unwrap(), (7.0 / 3.0 + 2.0) / 2.0));
    assert!(close(item[2].unwrap(), 5.0));
    assert_eq!(r.items[2].runs, vec![Some(5.0), None]);
    // Runs: (4 + 7/3 + 5) / 3 and (4 + 2) / 2; mean and sample std of the two.
    let (r0, r1) = ((4.0 + 7.0 / 3.0 + 5.0) / 3.0, 3.0);
    assert!(close(r.runs[0].unwrap(), r0) && close(r.runs[1].unwrap(), r1));
    assert!(close(r.mean.unwrap(), (r0 + r1) / 2.0));
    assert!(close(r.std.unwrap(), (r0 - r1).abs() / 2f64.sqrt()));
    // Sources a (items 0, 1) and b (item 2).
    assert!(close(r.per_source["a"].mean, (4.0 + 13.0 / 6.0) / 2.0));
    assert_eq!((r.per_source["a"].items, r.per_source["b"].items), (2, 1));
    // Dimensions: rubric k's scores averaged over runs, then over items.
    assert!(close(
        r.per_dimension["style"].mean,
        (4.5 + 1.5 + 5.0) / 3.0
    ));
    assert!(close(
        r.per_dimension["harmlessness"].mean,
        (4.0 + 2.0 + 5.0) / 3.0
    ));
    assert!(close(
        r.per_dimension["informativeness"].mean,
        (3.5 + 2.5 + 5.0) / 3.0
    ));
    assert_eq!((r.calls, r.parse_failures, r.unscored_items), (24, 5, 0));
    let h = r.versus_baseline.as_ref().unwrap();
    assert_eq!((h.items, h.wins, h.ties, h.losses), (3, 1, 1, 1));
    assert!(close(h.rates.win_plus_tie, 2.0 / 3.0));
    let s = r.summary().unwrap().versus_baseline.unwrap();
    assert_eq!(
        (s.win, s.tie, s.lose, s.win_plus_tie),
        (1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0, 2.0 / 3.0)
    );

    // A baseline scored on another bench is refused, naming both.
    let mut other = base.clone();
    other.bench_sha256 = "0".repeat(64);
    let e = score::compute("ours", &b, judge(2), &ours, Some(&other))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("another bench") && e.contains("base/results.json"),
        "{e}"
    );
}

#[test]
fn score_writes_results_summary_and_the_report_with_its_charts() {
    let dir = tempfile::tempdir().unwrap();
    let path = fixture_bench(dir.path());
    let write_grades = |out: &Path, g: &[Grade]| {
        let (mut log, _) = JsonlLog::open(out.to_str().unwrap(), janus::eval::GRADES).unwrap();
        let v: Vec<Value> = g.iter().map(|g| serde_json::to_value(g).unwrap()).collect();
        log.append(&v).unwrap();
    };
    let base_out = dir.path().join("base");
    write_grades(
        &base_out,
        &grade_rows(&[
            (0, 0, [Some(3); 4]),
            (1, 0, [Some(3); 4]),
            (2, 0, [Some(1); 4]),
        ]),
    );
    let o = |out: &Path, extra: &[&str]| {
        let mut o = vec![
            format!("bench.path={}", path.display()),
            format!("output_dir={}", out.display()),
            "judge.runs=1".into(),
        ];
        o.extend(extra.iter().map(|s| s.to_string()));
        o
    };
    score::run(
        &config(&o(&base_out, &[])),
        &mut StageProgress::quiet("score"),
    )
    .unwrap();
    let ours = dir.path().join("ours");
    write_grades(
        &ours,
        &grade_rows(&[
            (0, 0, [Some(4); 4]),
            (1, 0, [Some(3); 4]),
            (2, 0, [Some(2), Some(2), Some(1), Some(1)]),
        ]),
    );
    let baseline = format!("baseline={}", base_out.join("results.json").display());
    let r = score::run(
        &config(&o(&ours, &[&baseline])),
        &mut StageProgress::quiet("score"),
    )
    .unwrap();
    let h = r.versus_baseline.as_ref().unwrap();
    assert_eq!((h.wins, h.ties, h.losses), (2, 1, 0));

    let results: Value =
        serde_json::from_slice(&std::fs::read(ours.join("results.json")).unwrap()).unwrap();
    assert_eq!(results["items"].as_array().unwrap().len(), 3);
    let summary: janus_crds::progress::EvalScores =
        serde_json::from_slice(&std::fs::read(ours.join("summary.json")).unwrap()).unwrap();
    assert!(close(summary.mean, (4.0 + 3.0 + 1.5) / 3.0));
    let md = std::fs::read_to_string(ours.join("report.md")).unwrap();
    assert!(
        md.contains("![Distribution of item scores](score-distribution.svg)"),
        "{md}"
    );
    assert!(
        md.contains("![Win, tie and lose](win-tie-lose.svg)") && md.contains("66.7%"),
        "{md}"
    );
    let svg = std::fs::read_to_string(ours.join("score-distribution.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    // Eight half-point bins; items at 1.5, 3.0 and 4.0 fill three of them.
    let bars: Vec<&str> = svg.lines().filter(|l| l.starts_with("<rect x=")).collect();
    assert_eq!(bars.len(), 8);
    assert_eq!(
        bars.iter()
            .filter(|l| !l.contains("height=\"0.0\""))
            .count(),
        3
    );
    let wtl = std::fs::read_to_string(ours.join("win-tie-lose.svg")).unwrap();
    assert!(
        wtl.contains("<title>win: 66.7%</title>") && wtl.contains("<title>lose: 0.0%</title>"),
        "{wtl}"
    );
}

#[test]
fn generate_with_a_tiny_model_then_judge_with_janus_serve_then_score() {
    let dir = tempfile::tempdir().unwrap();
    let (data, model) = common::tiny_setup(dir.path(), 8);
    let out = dir.path().join("out");
    let port = janus::dist::launch::free_port().unwrap();
    let mut serve = common::janus();
    serve
        .args([
            "serve",
            "--model",
            model.to_str().unwrap(),
            "--port",
            &port.to_string(),
        ])
        .args([
            "--dtype",
            "float32",
            "--device",
            "cpu",
            "--served-model-name",
            "tiny-judge",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut server = common::spawn_tied(serve);
    let o = vec![
        format!("bench.path={}", data.join("bench.parquet").display()),
        "bench.limit=5".into(),
        format!("model.path={}", model.display()),
        "model.dtype=float32".into(),
        "model.device=cpu".into(),
        "generation.max_new_tokens=12".into(),
        "generation.batch_size=2".into(),
        format!("judge.url=http://127.0.0.1:{port}/v1"),
        "judge.model=tiny-judge".into(),
        "judge.api_key_env=null".into(),
        "judge.runs=2".into(),
        "judge.max_tokens=8".into(),
        "judge.max_parse_retries=1".into(),
    ];
    let cfg_file = dir.path().join("eval.yaml");
    let mut cfg = config(&o);
    cfg.output_dir = out.display().to_string();
    std::fs::write(&cfg_file, serde_yaml::to_string(&cfg).unwrap()).unwrap();
    let stage = |args: &[&str]| {
        let mut c = common::janus();
        c.args(["eval"])
            .args(args)
            .args(["--config", cfg_file.to_str().unwrap()]);
        let o = c.output().unwrap();
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    };
    // Two shards split the 5 items by id; a rerun of a finished shard generates nothing.
    let s0: Value =
        serde_json::from_str(stage(&["generate", "--shard", "0", "--num-shards", "2"]).trim())
            .unwrap();
    assert_eq!(
        (s0["items"].as_u64(), s0["already_done"].as_u64()),
        (Some(3), Some(0))
    );
    assert!(s0["generated_tokens"].as_u64().unwrap() > 0);
    let _ = stage(&["generate", "--shard", "1", "--num-shards", "2"]);
    let again: Value =
        serde_json::from_str(stage(&["generate", "--shard", "0", "--num-shards", "2"]).trim())
            .unwrap();
    assert_eq!(
        (
            again["already_done"].as_u64(),
            again["generated_tokens"].as_u64()
        ),
        (Some(3), Some(0))
    );
    let answers = janus::eval::answers::Answers::read(out.to_str().unwrap()).unwrap();
    assert_eq!(answers.len(), 5);
    for id in 0..5 {
        let a = answers.get(id).unwrap();
        assert!(
            a.completion_tokens >= 1 && a.completion_tokens <= 12,
            "{a:?}"
        );
        assert!(a.prompt_tokens > 10);
    }
    assert!(
        out.join("answers/shard-00000.jsonl").exists()
            && out.join("answers/shard-00001.jsonl").exists()
    );

    common::wait_for_status(port, "/health", 200, 120);
    let j: Value = serde_json::from_str(stage(&["judge"]).trim()).unwrap();
    assert_eq!(j["calls_total"].as_u64(), Some(5 * 4 * 2));
    let g = grades(&out);
    assert_eq!(g.len(), 40);
    // A random tiny judge rarely writes `[RESULT] n`: whatever it wrote was parsed,
    // re-asked once when unreadable, and counted.
    for x in &g {
        assert!(
            x.score.is_some() || (x.attempts == 2 && x.error.is_some()),
            "{x:?}"
        );
    }
    let (_, metrics) = common::http_get(port, "/metrics").unwrap();
    let served: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("janus_serve_requests_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(served >= j["calls_made"].as_f64().unwrap(), "{metrics}");

    let table = stage(&["score"]);
    assert!(
        table.contains("overall") && table.contains("judge calls 40"),
        "{table}"
    );
    assert!(out.join("results.json").exists() && out.join("report.md").exists());
    assert!(out.join("score-distribution.svg").exists());
    server.kill().unwrap();
    server.wait().unwrap();
}

#[test]
fn every_stage_resumes_on_object_storage() {
    let s3 = common::S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let (data, model) = common::tiny_setup(dir.path(), 6);
    let server = ScriptedJudge::start(dir.path(), &["--delay", "0.15"]);
    let out = s3.url("eval/run-1");
    let o = vec![
        format!("bench.path={}", data.join("bench.jsonl").display()),
        format!("model.path={}", model.display()),
        "model.dtype=float32".into(),
        "model.device=cpu".into(),
        "generation.max_new_tokens=8".into(),
        format!("judge.url={}", server.url()),
        "judge.model=scripted".into(),
        "judge.api_key_env=null".into(),
        "judge.runs=1".into(),
        "judge.concurrency=1".into(),
        format!("output_dir={out}"),
    ];
    let stage = |name: &str| {
        let mut c = common::janus();
        c.args(["eval", name]).args(&o);
        s3.apply_env(&mut c);
        c
    };
    common::run_ok(stage("generate"));
    // Compacted into one object when the stage ends.
    assert!(s3
        .object_path("eval/run-1/answers/shard-00000.jsonl")
        .exists());
    assert!(!s3
        .object_path("eval/run-1/answers/shard-00000.jsonl.parts")
        .exists());
    let parts = s3.object_path("eval/run-1/grades.jsonl.parts");
    let (mut child, _lines) = common::spawn_logged(stage("judge"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::read_dir(&parts).map(|d| d.count()).unwrap_or(0) < 6 {
        assert!(
            Instant::now() < deadline,
            "no grades written to S3 within 60 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let recorded = std::fs::read_dir(&parts).unwrap().count();
    assert!(recorded < 24, "killed too late");
    let before = server.calls().len();
    common::run_ok(stage("judge"));
    assert_eq!(
        server.calls().len() - before,
        24 - recorded,
        "the restart asks only what has no grade"
    );
    assert!(s3.object_path("eval/run-1/grades.jsonl").exists() && !parts.exists());
    common::run_ok(stage("score"));
    let results: Value =
        serde_json::from_slice(&std::fs::read(s3.object_path("eval/run-1/results.json")).unwrap())
            .unwrap();
    assert_eq!(results["mean"].as_f64(), Some(4.0));
    assert_eq!(results["calls"].as_u64(), Some(24));
    assert!(s3.object_path("eval/run-1/report.md").exists());
}

/// `janus serve` on the tiny model of `dir` as a judge named `tiny-judge`.
fn serve_judge(model: &Path) -> (u16, std::process::Child) {
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
        .args(["--served-model-name", "tiny-judge"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let child = common::spawn_tied(serve);
    common::wait_for_status(port, "/health", 200, 120);
    (port, child)
}

/// Judging through the Batch API of `janus serve` (files, batches, polling, custom_id
/// back to the call, re-asks in later rounds) grades exactly as online judging does
/// with a greedy judge, and a restarted stage polls the batch it recorded instead of
/// creating another.
#[test]
fn batch_judging_against_janus_serve_grades_as_online_and_resumes_its_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (_, model) = common::tiny_setup(dir.path(), 6);
    let (bench, _) = bench_and_answers(dir.path(), 3);
    let (port, mut server) = serve_judge(&model);
    let judge = |out: &Path, mode: &str| {
        let answers_from = dir.path().join("out/answers");
        let dest = out.join("answers");
        std::fs::create_dir_all(&dest).unwrap();
        for f in std::fs::read_dir(&answers_from).unwrap() {
            let f = f.unwrap();
            std::fs::copy(f.path(), dest.join(f.file_name())).unwrap();
        }
        let cfg = config(&overrides(
            &bench,
            out,
            &format!("http://127.0.0.1:{port}/v1"),
            &[
                "judge.model=tiny-judge",
                "judge.runs=1",
                "judge.temperature=0",
                "judge.max_tokens=6",
                "judge.max_parse_retries=1",
                "judge.parser=original",
                &format!("judge.mode={mode}"),
                "judge.batch_poll_seconds=0.2",
            ],
        ));
        judge::run(&cfg, &mut StageProgress::quiet("judge")).unwrap()
    };
    let online = dir.path().join("online");
    let batch = dir.path().join("batch");
    let so = judge(&online, "online");
    let sb = judge(&batch, "batch");
    assert_eq!((so.calls_total, sb.calls_total), (12, 12));
    assert_eq!(so.calls_made, sb.calls_made);
    let sorted = |out: &Path| {
        let mut g = grades(out);
        g.sort_by_key(|g| g.key());
        g
    };
    let (go, gb) = (sorted(&online), sorted(&batch));
    assert_eq!(go.len(), 12);
    assert_eq!(go, gb, "batch grades differ from online grades");
    let log = batch.join(janus::eval::batch::BATCHES);
    let records: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let created: Vec<&Value> = records
        .iter()
        .filter(|r| r.get("input_file").is_some())
        .collect();
    let rounds = 1 + usize::from(go.iter().any(|g| g.attempts > 1));
    eprintln!(
        "{rounds} round(s); {} of 12 calls re-asked",
        go.iter().filter(|g| g.attempts > 1).count()
    );
    assert_eq!(created.len(), rounds, "one batch per round: {records:?}");
    assert_eq!(created[0]["calls"].as_array().unwrap().len(), 12);

    // A stage killed after creating its first batch, before recording its answers:
    // the restart polls that batch, creating none.
    std::fs::remove_file(batch.join(janus::eval::GRADES)).unwrap();
    std::fs::write(&log, format!("{}\n", records[0])).unwrap();
    let again = judge(&batch, "batch");
    assert_eq!(again.calls_total, 12);
    let after: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ids: Vec<&Value> = after
        .iter()
        .filter(|r| r.get("input_file").is_some())
        .map(|r| &r["batch"])
        .collect();
    assert_eq!(
        ids[0], &records[0]["batch"],
        "the recorded batch is polled again"
    );
    assert_eq!(ids.len(), rounds);
    assert_eq!(sorted(&batch), go);
    server.kill().unwrap();
    server.wait().unwrap();
}
