//! `judge.mode: batch`: the judge calls through the OpenAI Batch API, as the
//! original's `run_eval_openai_batch.py` sends them (half the price of online calls,
//! answered within the 24 h completion window).
//!
//! A round writes every call still to ask as one JSONL line (`custom_id`, `POST`,
//! `/v1/chat/completions`, the online request's body with the same seed), uploads it
//! (`/v1/files`; several files past the API's limits, `crate::openai_batch`), creates
//! the batch (`/v1/batches`), polls it every `judge.batch_poll_seconds`, downloads its
//! output and error files, and maps each `custom_id` back to (item, rubric, run) and
//! try. Readable answers are recorded in `grades.jsonl` as online; unreadable ones go
//! into the next round with the next seed (up to `judge.max_parse_retries`); lines that
//! failed (429, 5xx, an expired or cancelled batch) into the next round with the same
//! seed (up to `judge.max_retries`); a refusal (another 4xx) or a failed batch stops.
//!
//! Resumable: [`BATCHES`] in the output directory records each batch when it is created
//! and again once its answers are recorded (with what goes into the next round), so a
//! restarted stage polls the batches it already paid for instead of sending new ones.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::grades::CallKey;
use super::judging::{call_error, grade_of, seed, Judging};
use super::progress::StageProgress;
use crate::config::EvalConfig;
use crate::error::{Error, Result};
use crate::openai::{field_str, CallError, JudgeClient};
use crate::openai_batch::{self, answer_of, LineAnswer, WaitError};
use crate::stage_log::JsonlLog;

/// The batch log under the output directory.
pub const BATCHES: &str = "judge-batches.jsonl";

/// One call of a batch: its key, which try of it this is (the seed), and how many
/// times it failed to come back before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchCall {
    pub item: usize,
    pub rubric: usize,
    pub run: usize,
    pub attempt: usize,
    #[serde(default)]
    pub failures: usize,
}

impl BatchCall {
    fn key(&self) -> CallKey {
        CallKey {
            item: self.item,
            rubric: self.rubric,
            run: self.run,
        }
    }

    /// The line's `custom_id`.
    pub fn custom_id(&self) -> String {
        format!(
            "item-{}-rubric-{}-run-{}-try-{}",
            self.item, self.rubric, self.run, self.attempt
        )
    }
}

/// A line of [`BATCHES`]: a batch created with its calls, or a batch whose answers are
/// recorded with the calls it sends to the next round.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum BatchRecord {
    Done {
        batch: String,
        done: bool,
        next: Vec<BatchCall>,
    },
    Created {
        batch: String,
        input_file: String,
        round: usize,
        calls: Vec<BatchCall>,
    },
}

/// What [`BATCHES`] says: batches still open (created, answers not recorded), and
/// the calls the batches done so far send to the next round.
struct State {
    open: Vec<(String, Vec<BatchCall>)>,
    next: HashMap<CallKey, BatchCall>,
    rounds: usize,
}

fn state_of(records: &[Value], origin: &str) -> Result<State> {
    let mut open: Vec<(String, Vec<BatchCall>)> = vec![];
    let mut next = HashMap::new();
    let mut rounds = 0;
    for (i, r) in records.iter().enumerate() {
        let rec: BatchRecord = serde_json::from_value(r.clone())
            .map_err(|e| Error::Data(format!("{origin}: record {}: {e}", i + 1)))?;
        match rec {
            BatchRecord::Created {
                batch,
                round,
                calls,
                ..
            } => {
                rounds = rounds.max(round + 1);
                open.push((batch, calls));
            }
            BatchRecord::Done { batch, next: n, .. } => {
                open.retain(|(b, _)| *b != batch);
                for c in n {
                    next.insert(c.key(), c);
                }
            }
        }
    }
    Ok(State { open, next, rounds })
}

/// The JSONL input files of `calls` (more than one past the API's limits).
fn input_files(
    j: &Judging,
    client: &JudgeClient,
    calls: &[BatchCall],
) -> Vec<(Vec<u8>, Vec<BatchCall>)> {
    openai_batch::input_files(calls.iter().map(|c| {
        let body = client.request_body(&j.messages(c.key()), seed(c.key(), c.attempt));
        (openai_batch::input_line(&c.custom_id(), body), *c)
    }))
}

/// Create the batches of one round, each recorded in [`BATCHES`] once created.
fn create_round(
    cfg: &EvalConfig,
    j: &Judging,
    client: &JudgeClient,
    batches: &mut JsonlLog,
    round: usize,
    calls: &[BatchCall],
) -> Result<Vec<(String, Vec<BatchCall>)>> {
    let rt = crate::storage::runtime()?;
    let mut out = vec![];
    let total = j.summary.calls_total;
    for (k, (bytes, cs)) in input_files(j, client, calls).into_iter().enumerate() {
        let name = format!("{}-judge-round-{round}-{k}.jsonl", cfg.job);
        let meta = json!({"description": format!("janus eval judge {} round {round}", cfg.job)});
        let (file, batch) = rt
            .block_on(async {
                let file = client.upload_batch_file(&name, &bytes).await?;
                let batch = client.create_batch(&file, meta).await?;
                Ok::<_, CallError>((file, batch))
            })
            .map_err(|e| call_error(e, j.grades.len(), total))?;
        let id = field_str(&batch, "id", client.endpoint()).map_err(|e| call_error(e, 0, total))?;
        tracing::info!(batch = %id, round, requests = cs.len(), "judge batch created");
        let rec = BatchRecord::Created {
            batch: id.clone(),
            input_file: file,
            round,
            calls: cs.clone(),
        };
        batches.append(&[serde_json::to_value(&rec).expect("serializes")])?;
        out.push((id, cs));
    }
    Ok(out)
}

/// Poll batch `id` until it ends; the lines of its output and error files by
/// `custom_id`.
fn wait(cfg: &EvalConfig, client: &JudgeClient, id: &str) -> Result<HashMap<String, Value>> {
    let rt = crate::storage::runtime()?;
    let poll = Duration::from_secs_f64(cfg.judge.batch_poll_seconds);
    rt.block_on(openai_batch::wait(client, id, poll, "judge"))
        .map_err(|e| match e {
            WaitError::Call(e) => call_error(e, 0, 0),
            WaitError::Failed(errors) => Error::Config(format!(
                "judge batch {id} failed (check judge.model and the requests): {errors}"
            )),
            WaitError::Data(m) => Error::Data(format!("judge {m}")),
        })
}

/// Record the answers of one finished batch; the calls of the next round.
fn take_answers(
    cfg: &EvalConfig,
    j: &mut Judging,
    calls: &[BatchCall],
    lines: &HashMap<String, Value>,
    progress: &mut StageProgress,
) -> Result<Vec<BatchCall>> {
    let graded: HashSet<CallKey> = j.grades.iter().map(|g| g.key()).collect();
    let (parser, max_parse) = (cfg.judge.parser, cfg.judge.max_parse_retries);
    let mut next = vec![];
    for c in calls.iter().filter(|c| !graded.contains(&c.key())) {
        let answer = lines
            .get(&c.custom_id())
            .map(answer_of)
            .unwrap_or_else(|| LineAnswer::Failed("not answered in the batch".into()));
        match answer {
            LineAnswer::Text(text) => {
                j.summary.calls_made += 1;
                match grade_of(parser, c.key(), c.attempt, max_parse, text) {
                    Some(g) => j.record(g, progress)?,
                    None => next.push(BatchCall {
                        attempt: c.attempt + 1,
                        failures: 0,
                        ..*c
                    }),
                }
            }
            LineAnswer::Failed(why) if c.failures < cfg.judge.max_retries => {
                tracing::debug!(custom_id = %c.custom_id(), %why, "judge batch line asked again");
                next.push(BatchCall {
                    failures: c.failures + 1,
                    ..*c
                });
            }
            LineAnswer::Failed(why) => {
                return Err(call_error(
                    CallError::GaveUp(format!(
                        "{}: {why} (gave up after {} tries)",
                        c.custom_id(),
                        c.failures + 1
                    )),
                    j.grades.len(),
                    j.summary.calls_total,
                ))
            }
            LineAnswer::Refused(why) => {
                return Err(call_error(
                    CallError::Refused(format!("{}: {why}", c.custom_id())),
                    j.grades.len(),
                    j.summary.calls_total,
                ))
            }
        }
    }
    Ok(next)
}

/// Ask every call of `j` through batches, round after round, until each is graded.
pub fn run(
    cfg: &EvalConfig,
    j: &mut Judging,
    client: &JudgeClient,
    progress: &mut StageProgress,
) -> Result<()> {
    let (mut batches, records) = JsonlLog::open(&cfg.output_dir, BATCHES)?;
    let mut state = state_of(&records, &batches.url())?;
    if !state.open.is_empty() {
        tracing::info!(
            batches = state.open.len(),
            "resuming: polling the judge batches already created"
        );
    }
    loop {
        if state.open.is_empty() {
            let graded: HashSet<CallKey> = j.grades.iter().map(|g| g.key()).collect();
            let calls: Vec<BatchCall> = j
                .todo
                .iter()
                .filter(|k| !graded.contains(k))
                .map(|k| {
                    state.next.get(k).copied().unwrap_or(BatchCall {
                        item: k.item,
                        rubric: k.rubric,
                        run: k.run,
                        attempt: 0,
                        failures: 0,
                    })
                })
                .collect();
            if calls.is_empty() {
                break;
            }
            state.open = create_round(cfg, j, client, &mut batches, state.rounds, &calls)?;
            state.rounds += 1;
        }
        let (id, calls) = state.open.remove(0);
        let lines = wait(cfg, client, &id)?;
        let next = take_answers(cfg, j, &calls, &lines, progress)?;
        let done = BatchRecord::Done {
            batch: id,
            done: true,
            next: next.clone(),
        };
        batches.append(&[serde_json::to_value(&done).expect("serializes")])?;
        for c in next {
            state.next.insert(c.key(), c);
        }
    }
    // Object stores: fold the log's parts into one object.
    let (_, all) = JsonlLog::open(&cfg.output_dir, BATCHES)?;
    batches.compact(&all)
}
