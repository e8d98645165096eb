//! `janus eval judge`: one judge call per (response, rubric) and run, appended to
//! `grades.jsonl` as it is answered, so a restart asks only what has no grade yet.
//! An answer without a readable `[RESULT] 1-5` is asked again (with another seed)
//! up to `judge.max_parse_retries` times, then recorded as a failure with its text.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde::Serialize;
use serde_json::{json, Value};

use super::answers::Answers;
use super::bench::{self, Bench, BenchItem};
use super::client::{CallError, ClientOptions, JudgeClient};
use super::log::JsonlLog;
use super::parse::parse_score;
use super::progress::StageProgress;
use super::template::{Template, JUDGE_SYSTEM};
use super::GRADES;
use crate::config::EvalConfig;
use crate::error::{Error, Result};

/// One judge call: item, rubric index, run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallKey {
    pub item: usize,
    pub rubric: usize,
    pub run: usize,
}

/// A line of `grades.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Grade {
    pub item: usize,
    pub rubric: usize,
    pub run: usize,
    /// None: no readable score after the retries (a failure).
    pub score: Option<u8>,
    /// The judge's last answer.
    pub feedback: String,
    /// Calls made for it (1 + re-asks).
    pub attempts: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Grade {
    pub fn key(&self) -> CallKey {
        CallKey {
            item: self.item,
            rubric: self.rubric,
            run: self.run,
        }
    }
}

/// Grades from `grades.jsonl` records (the first per key wins).
pub fn grades_of(records: &[Value], origin: &str) -> Result<Vec<Grade>> {
    let mut seen = HashSet::new();
    let mut out = vec![];
    for (i, r) in records.iter().enumerate() {
        let g: Grade = serde_json::from_value(r.clone())
            .map_err(|e| Error::Data(format!("{origin}: record {}: {e}", i + 1)))?;
        if seen.insert(g.key()) {
            out.push(g);
        }
    }
    Ok(out)
}

#[derive(Debug, Clone, Serialize)]
pub struct JudgeSummary {
    pub calls_total: usize,
    /// Graded before this run started (resumed).
    pub already_graded: usize,
    /// Calls made by this run (re-asks included).
    pub calls_made: usize,
    pub parse_failures: usize,
}

/// The judge's seed for a call: its run and how many times it was asked before, so
/// runs differ and a re-ask is not the same sample again.
fn seed(key: CallKey, attempt: usize) -> u64 {
    ((key.run as u64) << 32) | attempt as u64
}

fn template(cfg: &EvalConfig) -> Result<Template> {
    let j = &cfg.judge;
    match &j.template {
        None => Ok(Template::built_in(j.show_system)),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Error::Config(format!("judge.template `{path}`: {e}")))?;
            Template::parse(&text, path, j.show_system)
        }
    }
}

fn client(cfg: &EvalConfig) -> Result<JudgeClient> {
    let j = &cfg.judge;
    let api_key = match &j.api_key_env {
        Some(var) => match std::env::var(var) {
            Ok(k) if !k.is_empty() => Some(k),
            _ => {
                tracing::warn!(variable = %var, "judge API key variable is not set; calling without a key");
                None
            }
        },
        None => None,
    };
    JudgeClient::new(ClientOptions {
        url: j.url.clone(),
        model: j.model.clone(),
        api_key,
        requests_per_minute: j.requests_per_minute,
        timeout: Duration::from_secs(j.timeout_seconds),
        max_retries: j.max_retries,
        temperature: j.temperature,
        max_tokens: j.max_tokens,
    })
    .map_err(|e| Error::Config(format!("judge.url `{}`: {e}", j.url)))
}

/// What one call ended with.
enum Outcome {
    Graded(Grade),
    Failed(CallError),
}

async fn grade(
    client: &JudgeClient,
    key: CallKey,
    messages: Vec<Value>,
    max_parse_retries: usize,
) -> Outcome {
    let mut last = String::new();
    let mut why = String::new();
    for attempt in 0..=max_parse_retries {
        match client.ask(&messages, seed(key, attempt)).await {
            Err(e) => return Outcome::Failed(e),
            Ok(text) => match parse_score(&text) {
                Ok(score) => {
                    return Outcome::Graded(Grade {
                        item: key.item,
                        rubric: key.rubric,
                        run: key.run,
                        score: Some(score),
                        feedback: text,
                        attempts: attempt + 1,
                        error: None,
                    })
                }
                Err(e) => {
                    why = e.to_string();
                    last = text;
                }
            },
        }
    }
    Outcome::Graded(Grade {
        item: key.item,
        rubric: key.rubric,
        run: key.run,
        score: None,
        feedback: last,
        attempts: max_parse_retries + 1,
        error: Some(why),
    })
}

/// The calls still to make, in run, item, rubric order.
fn pending(cfg: &EvalConfig, bench: &Bench, done: &HashSet<CallKey>) -> Vec<CallKey> {
    let mut out = vec![];
    for run in 0..cfg.judge.runs {
        for item in &bench.items {
            for rubric in 0..item.rubrics.len() {
                let k = CallKey {
                    item: item.id,
                    rubric,
                    run,
                };
                if !done.contains(&k) {
                    out.push(k);
                }
            }
        }
    }
    out
}

fn messages(t: &Template, item: &BenchItem, rubric: usize, response: &str) -> Vec<Value> {
    vec![
        json!({"role": "system", "content": JUDGE_SYSTEM}),
        json!({"role": "user", "content": t.render(item, &item.rubrics[rubric], response)}),
    ]
}

/// Grade every answer; returns what was done. Fails (retryable) when a call gave up,
/// or (bad input) when the endpoint refused the requests, after recording every
/// grade that came back.
pub fn run(cfg: &EvalConfig, progress: &mut StageProgress) -> Result<JudgeSummary> {
    let bench = bench::load(&cfg.bench.path, cfg.bench.limit)?;
    let answers = Answers::read(&cfg.output_dir)?;
    answers.check_complete(&bench)?;
    let template = template(cfg)?;
    let (mut log, existing) = JsonlLog::open(&cfg.output_dir, GRADES)?;
    let mut grades = grades_of(&existing, &log.url())?;
    let done: HashSet<CallKey> = grades.iter().map(Grade::key).collect();
    let todo = pending(cfg, &bench, &done);
    let calls_total = todo.len() + done.len();
    let items: BTreeMap<usize, &BenchItem> = bench.items.iter().map(|i| (i.id, i)).collect();
    let already = done.len();
    let mut summary = JudgeSummary {
        calls_total,
        already_graded: already,
        calls_made: 0,
        parse_failures: grades.iter().filter(|g| g.score.is_none()).count(),
    };
    progress.judge(&bench, &grades, calls_total);
    tracing::info!(calls = calls_total, graded = already, to_ask = todo.len(), judge = %cfg.judge.url, "judging");
    if todo.is_empty() {
        log.compact(&existing)?;
        return Ok(summary);
    }
    let client = Arc::new(client(cfg)?);
    let jobs: Vec<(CallKey, Vec<Value>)> = todo
        .iter()
        .map(|&k| {
            let item = items[&k.item];
            (
                k,
                messages(&template, item, k.rubric, answers.response(k.item)),
            )
        })
        .collect();
    let (tx, rx) = std::sync::mpsc::channel::<(CallKey, Outcome)>();
    let stop = Arc::new(AtomicBool::new(false));
    let rt = crate::storage::runtime()?;
    let concurrency = cfg.judge.concurrency;
    let max_parse = cfg.judge.max_parse_retries;
    let worker = {
        let (client, stop) = (client.clone(), stop.clone());
        rt.spawn(async move {
            futures::stream::iter(jobs)
                .for_each_concurrent(concurrency, |(key, msgs)| {
                    let (client, stop, tx) = (client.clone(), stop.clone(), tx.clone());
                    async move {
                        // After a call gave up, start no new ones; those in flight finish.
                        if stop.load(Ordering::SeqCst) {
                            return;
                        }
                        let out = grade(&client, key, msgs, max_parse).await;
                        if matches!(out, Outcome::Failed(_)) {
                            stop.store(true, Ordering::SeqCst);
                        }
                        let _ = tx.send((key, out));
                    }
                })
                .await;
        })
    };
    let mut first_error: Option<CallError> = None;
    // Record each grade as it arrives (on this thread: storage calls block).
    for (key, out) in rx {
        match out {
            Outcome::Graded(g) => {
                summary.calls_made += g.attempts;
                if g.score.is_none() {
                    summary.parse_failures += 1;
                    tracing::warn!(
                        item = key.item,
                        rubric = key.rubric,
                        run = key.run,
                        error = g.error.as_deref().unwrap_or_default(),
                        "no readable score; counted as a failure"
                    );
                }
                log.append(&[serde_json::to_value(&g).expect("grade serializes")])?;
                grades.push(g);
                progress.judge(&bench, &grades, calls_total);
            }
            Outcome::Failed(e) => {
                tracing::error!(item = key.item, rubric = key.rubric, run = key.run, error = %e, "judge call failed");
                first_error.get_or_insert(e);
            }
        }
    }
    rt.block_on(worker)
        .map_err(|e| Error::io("the judge", std::io::Error::other(e.to_string())))?;
    match first_error {
        Some(CallError::Refused(m)) => Err(Error::Config(format!(
            "the judge refused the requests (check judge.url, judge.model and the API key): {m}"
        ))),
        Some(CallError::GaveUp(m)) => Err(Error::io(
            format!("judging: {} of {calls_total} calls graded", grades.len()),
            std::io::Error::other(m),
        )),
        None => {
            let all: Vec<Value> = grades
                .iter()
                .map(|g| serde_json::to_value(g).expect("grade"))
                .collect();
            log.compact(&all)?;
            Ok(summary)
        }
    }
}
