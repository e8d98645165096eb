//! `janus eval judge`: one judge call per (response, rubric) and run, appended to
//! `grades.jsonl` as it is answered, so a restart asks only what has no grade yet.
//! An answer without a readable score is asked again (with another seed) up to
//! `judge.max_parse_retries` times, then recorded as a failure with its text.
//!
//! `judge.mode: online` makes one chat completion per call, `judge.concurrency` at a
//! time; `judge.mode: batch` sends them through the OpenAI Batch API ([`super::batch`]).
//! Both ask the same requests with the same seeds, so a greedy judge grades alike.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;

pub use super::grades::{grades_of, CallKey, Grade};
use super::judging::call_error;
pub use super::judging::{grade_of, read_score, seed, template, JudgeSummary, Judging};
use super::progress::StageProgress;
use crate::config::EvalConfig;
use crate::error::{Error, Result};
use crate::openai::{CallError, ClientOptions, JudgeClient};
use janus_crds::config::eval::{JudgeMode, JudgeParser};

fn client(cfg: &EvalConfig) -> Result<JudgeClient> {
    let j = &cfg.judge;
    let api_key = crate::openai::api_key_from_env(j.api_key_env.as_deref());
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
        JudgeMode::Online => online(cfg, &mut j, client, progress)?,
        JudgeMode::Batch => super::batch::run(cfg, &mut j, &client, progress)?,
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
