//! `janus eval judge`: one judge call per (response, rubric) and run, appended to
//! `grades.jsonl` as it is answered, so a restart asks only what has no grade yet.
//! An answer without a readable score is asked again (with another seed) up to
//! `judge.max_parse_retries` times, then recorded as a failure with its text.
//!
//! `judge.mode: online` makes one chat completion per call, `judge.concurrency` at a
//! time; `judge.mode: batch` sends them through the OpenAI Batch API ([`super::batch`]).
//! Both ask the same requests with the same seeds, so a greedy judge grades alike.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde::Serialize;
use serde_json::Value;

use super::answers::Answers;
use super::bench::{self, Bench, BenchItem};
use super::client::{CallError, ClientOptions, JudgeClient};
pub use super::grades::{grades_of, CallKey, Grade};
use super::log::JsonlLog;
use super::parse::{parse_original, parse_score};
use super::progress::StageProgress;
use super::template::Template;
use super::GRADES;
use crate::config::EvalConfig;
use crate::error::{Error, Result};
use janus_crds::config::eval::{JudgeParser, JudgeTemplate};

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
pub fn seed(key: CallKey, attempt: usize) -> u64 {
    ((key.run as u64) << 32) | attempt as u64
}

fn read_file(path: &str, what: &str) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::Config(format!("{what} `{path}`: {e}")))
}

/// The judge prompt of `cfg`: the original's, or what `judge.template` replaces.
pub fn template(cfg: &EvalConfig) -> Result<Template> {
    let j = &cfg.judge;
    let (system, user) = match &j.template {
        None => (None, None),
        Some(JudgeTemplate::User(u)) => (None, Some(u.as_str())),
        Some(JudgeTemplate::Messages(m)) => (m.system.as_deref(), m.user.as_deref()),
    };
    let t = match user {
        None => Template::paper(j.show_system),
        Some(path) => Template::parse(
            &read_file(path, "judge.template user")?,
            path,
            j.show_system,
        )?,
    };
    Ok(match system {
        None => t,
        Some(path) => t.with_system(read_file(path, "judge.template system")?),
    })
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
        top_p: j.top_p,
        max_tokens: j.max_tokens,
    })
    .map_err(|e| Error::Config(format!("judge.url `{}`: {e}", j.url)))
}

/// The score `parser` reads in `text`, or why there is none.
pub fn read_score(parser: JudgeParser, text: &str) -> std::result::Result<u8, String> {
    match parser {
        JudgeParser::Strict => parse_score(text).map_err(|e| e.to_string()),
        JudgeParser::Original => parse_original(text)
            .ok_or_else(|| "the original parser reads no score in the answer".to_string()),
    }
}

/// The grade of an answer to `key` on its `attempt`-th try: the score, or None while
/// re-asks are left (`max_parse_retries`), or a failure carrying the last answer.
pub fn grade_of(
    parser: JudgeParser,
    key: CallKey,
    attempt: usize,
    max_parse_retries: usize,
    text: String,
) -> Option<Grade> {
    let (score, error) = match read_score(parser, &text) {
        Ok(s) => (Some(s), None),
        Err(_) if attempt < max_parse_retries => return None,
        Err(why) => (None, Some(why)),
    };
    Some(Grade {
        item: key.item,
        rubric: key.rubric,
        run: key.run,
        score,
        feedback: text,
        attempts: attempt + 1,
        error,
    })
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
    parser: JudgeParser,
    max_parse_retries: usize,
) -> Outcome {
    let mut attempt = 0;
    loop {
        match client.ask(&messages, seed(key, attempt)).await {
            Err(e) => return Outcome::Failed(e),
            Ok(text) => {
                if let Some(g) = grade_of(parser, key, attempt, max_parse_retries, text) {
                    return Outcome::Graded(g);
                }
            }
        }
        attempt += 1;
    }
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

/// A judge stage under way: what to ask, and the grades recorded so far.
pub struct Judging {
    pub bench: Bench,
    /// Position of each item in `bench.items`, by id.
    by_id: HashMap<usize, usize>,
    answers: Answers,
    template: Template,
    pub log: JsonlLog,
    pub grades: Vec<Grade>,
    /// The calls without a grade when the stage started.
    pub todo: Vec<CallKey>,
    pub summary: JudgeSummary,
}

impl Judging {
    /// Open the stage: the bench, its answers (all of them), the grades so far.
    pub fn open(cfg: &EvalConfig) -> Result<Self> {
        let bench = bench::load(&cfg.bench.path, cfg.bench.limit)?;
        let answers = Answers::read(&cfg.output_dir)?;
        answers.check_complete(&bench)?;
        let template = template(cfg)?;
        let (log, existing) = JsonlLog::open(&cfg.output_dir, GRADES)?;
        let grades = grades_of(&existing, &log.url())?;
        let done: HashSet<CallKey> = grades.iter().map(Grade::key).collect();
        let todo = pending(cfg, &bench, &done);
        let summary = JudgeSummary {
            calls_total: todo.len() + done.len(),
            already_graded: done.len(),
            calls_made: 0,
            parse_failures: grades.iter().filter(|g| g.score.is_none()).count(),
        };
        Ok(Self {
            by_id: bench
                .items
                .iter()
                .enumerate()
                .map(|(i, it)| (it.id, i))
                .collect(),
            bench,
            answers,
            template,
            log,
            grades,
            todo,
            summary,
        })
    }

    /// The judge's messages for `key`.
    pub fn messages(&self, key: CallKey) -> Vec<Value> {
        let item: &BenchItem = &self.bench.items[self.by_id[&key.item]];
        self.template
            .render(
                item,
                &item.rubrics[key.rubric],
                self.answers.response(key.item),
            )
            .messages()
    }

    /// Record `g` (durable when this returns) and report progress.
    pub fn record(&mut self, g: Grade, progress: &mut StageProgress) -> Result<()> {
        if g.score.is_none() {
            self.summary.parse_failures += 1;
            tracing::warn!(
                item = g.item,
                rubric = g.rubric,
                run = g.run,
                error = g.error.as_deref().unwrap_or_default(),
                "no readable score; counted as a failure"
            );
        }
        self.log
            .append(&[serde_json::to_value(&g).expect("grade serializes")])?;
        self.grades.push(g);
        progress.judge(&self.bench, &self.grades, self.summary.calls_total);
        Ok(())
    }

    /// Every call graded: fold the log (object stores) and return the summary.
    pub fn finish(mut self) -> Result<JudgeSummary> {
        let all: Vec<Value> = self
            .grades
            .iter()
            .map(|g| serde_json::to_value(g).expect("grade"))
            .collect();
        self.log.compact(&all)?;
        Ok(self.summary)
    }
}

/// The error a stage ends with after a call gave up or was refused.
pub fn call_error(e: CallError, graded: usize, total: usize) -> Error {
    match e {
        CallError::Refused(m) => Error::Config(format!(
            "the judge refused the requests (check judge.url, judge.model and the API key): {m}"
        )),
        CallError::GaveUp(m) => Error::io(
            format!("judging: {graded} of {total} calls graded"),
            std::io::Error::other(m),
        ),
    }
}

/// Grade every answer; returns what was done. Fails (retryable) when a call gave up,
/// or (bad input) when the endpoint refused the requests, after recording every
/// grade that came back.
pub fn run(cfg: &EvalConfig, progress: &mut StageProgress) -> Result<JudgeSummary> {
    let mut j = Judging::open(cfg)?;
    progress.judge(&j.bench, &j.grades, j.summary.calls_total);
    tracing::info!(
        calls = j.summary.calls_total,
        graded = j.summary.already_graded,
        to_ask = j.todo.len(),
        judge = %cfg.judge.url,
        mode = ?cfg.judge.mode,
        "judging"
    );
    if j.todo.is_empty() {
        return j.finish();
    }
    let client = client(cfg)?;
    match cfg.judge.mode {
        janus_crds::config::eval::JudgeMode::Online => online(cfg, &mut j, client, progress)?,
        janus_crds::config::eval::JudgeMode::Batch => {
            super::batch::run(cfg, &mut j, &client, progress)?
        }
    }
    j.finish()
}

/// Online mode: `judge.concurrency` calls in flight, each grade recorded as it comes.
fn online(
    cfg: &EvalConfig,
    j: &mut Judging,
    client: JudgeClient,
    progress: &mut StageProgress,
) -> Result<()> {
    let client = Arc::new(client);
    let jobs: Vec<(CallKey, Vec<Value>)> = j.todo.iter().map(|&k| (k, j.messages(k))).collect();
    let (tx, rx) = std::sync::mpsc::channel::<(CallKey, Outcome)>();
    let stop = Arc::new(AtomicBool::new(false));
    let rt = crate::storage::runtime()?;
    let (concurrency, parser) = (cfg.judge.concurrency, cfg.judge.parser);
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
                        let out = grade(&client, key, msgs, parser, max_parse).await;
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
                j.summary.calls_made += g.attempts;
                j.record(g, progress)?;
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
        Some(e) => Err(call_error(e, j.grades.len(), j.summary.calls_total)),
        None => Ok(()),
    }
}
