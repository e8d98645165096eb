//! `llm.mode: batch`: a stage's calls through the OpenAI Batch API (half the price of
//! online calls, answered within the 24 h completion window), with the same requests
//! and seeds as online.
//!
//! A round sends every call still without a record as one JSONL line per call
//! (several files past the API's limits, `crate::openai_batch`), polls each batch
//! every `llm.batch_poll_seconds`, and maps each `custom_id` back to its key and try.
//! Valid answers and final failures are recorded in the stage's log as online; invalid
//! answers with re-asks left go into the next round with the next seed; lines that
//! failed (429, 5xx, expired) into the next round with the same seed, up to
//! `llm.max_retries` times; a refusal or a failed batch stops the stage.
//!
//! Resumable: `stages/<stage>-batches.jsonl` records each batch when it is created and
//! again once its answers are recorded (with what goes into the next round), so a
//! restarted run polls the batches it already paid for instead of sending new ones.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use janus_crds::config::synth::{layout, SynthConfig, SynthStage};

use super::calls::{call_error, outcome, record, Log, Task};
use super::config::seed;
use super::progress::{StageCounts, SynthProgress};
use super::records::Key;
use crate::error::{Error, Result};
use crate::openai::{field_str, CallError, JudgeClient};
use crate::openai_batch::{self, answer_of, LineAnswer, WaitError};
use crate::stage_log::JsonlLog;

/// One call of a batch: its key, which try this is (the seed), and how many times it
/// failed to come back before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchCall {
    instruction: usize,
    set: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    preference: Option<usize>,
    attempt: usize,
    #[serde(default)]
    failures: usize,
}

impl BatchCall {
    fn first(k: Key) -> Self {
        Self {
            instruction: k.instruction,
            set: k.set,
            preference: k.preference,
            attempt: 0,
            failures: 0,
        }
    }

    fn key(&self) -> Key {
        Key {
            instruction: self.instruction,
            set: self.set,
            preference: self.preference,
        }
    }

    fn custom_id(&self, stage: SynthStage) -> String {
        let p = self.preference.map(|p| format!("-preference-{p}"));
        format!(
            "{}-instruction-{}-set-{}{}-try-{}",
            stage.name(),
            self.instruction,
            self.set,
            p.unwrap_or_default(),
            self.attempt
        )
    }
}

/// A line of the batch log: a batch created with its calls, or a batch whose answers
/// are recorded with the calls it sends to the next round.
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

/// Batches still open, the calls of the next round, and the rounds so far.
#[derive(Default)]
struct State {
    open: Vec<(String, Vec<BatchCall>)>,
    next: HashMap<Key, BatchCall>,
    rounds: usize,
}

fn state_of(records: &[Value], origin: &str) -> Result<State> {
    let mut st = State::default();
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
                st.rounds = st.rounds.max(round + 1);
                st.open.push((batch, calls));
            }
            BatchRecord::Done { batch, next, .. } => {
                st.open.retain(|(b, _)| *b != batch);
                for c in next {
                    st.next.insert(c.key(), c);
                }
            }
        }
    }
    Ok(st)
}

/// Everything one stage's batches need.
struct Batches<'a> {
    cfg: &'a SynthConfig,
    client: &'a JudgeClient,
    stage: SynthStage,
    messages: BTreeMap<Key, Vec<Value>>,
    log: JsonlLog,
}

impl Batches<'_> {
    /// Create the batches of one round, each recorded once created.
    fn create_round(
        &mut self,
        round: usize,
        calls: &[BatchCall],
        counts: &StageCounts,
    ) -> Result<Vec<(String, Vec<BatchCall>)>> {
        let rt = crate::storage::runtime()?;
        let (stage, base) = (self.stage, self.cfg.llm.seed);
        let lines = calls.iter().map(|c| {
            let body = self.client.request_body(
                &self.messages[&c.key()],
                seed(base, stage, c.key(), c.attempt),
            );
            (openai_batch::input_line(&c.custom_id(stage), body), *c)
        });
        let mut out = vec![];
        for (k, (bytes, cs)) in openai_batch::input_files(lines).into_iter().enumerate() {
            let name = format!("{}-{}-round-{round}-{k}.jsonl", self.cfg.job, stage.name());
            let meta = json!({"description": format!("janus data synthesize {} {} round {round}", self.cfg.job, stage.name())});
            let (file, batch) = rt
                .block_on(async {
                    let file = self.client.upload_batch_file(&name, &bytes).await?;
                    let batch = self.client.create_batch(&file, meta).await?;
                    Ok::<_, CallError>((file, batch))
                })
                .map_err(|e| call_error(e, stage, counts))?;
            let id = field_str(&batch, "id", self.client.endpoint())
                .map_err(|e| call_error(e, stage, counts))?;
            tracing::info!(batch = %id, stage = stage.name(), round, requests = cs.len(), "batch created");
            let rec = BatchRecord::Created {
                batch: id.clone(),
                input_file: file,
                round,
                calls: cs.clone(),
            };
            self.log
                .append(&[serde_json::to_value(&rec).expect("serializes")])?;
            out.push((id, cs));
        }
        Ok(out)
    }

    fn wait(&self, id: &str, counts: &StageCounts) -> Result<HashMap<String, Value>> {
        let rt = crate::storage::runtime()?;
        let poll = Duration::from_secs_f64(self.cfg.llm.batch_poll_seconds);
        let what = self.stage.name();
        rt.block_on(openai_batch::wait(self.client, id, poll, what))
            .map_err(|e| match e {
                WaitError::Call(e) => call_error(e, self.stage, counts),
                WaitError::Failed(errors) => Error::Config(format!(
                    "{what} batch {id} failed (check llm.model and the requests): {errors}"
                )),
                WaitError::Data(m) => Error::Data(format!("{what} {m}")),
            })
    }
}

/// Record the answers of one finished batch; the calls of the next round.
fn take_answers(
    b: &Batches,
    calls: &[BatchCall],
    lines: &HashMap<String, Value>,
    log: &mut Log,
    counts: &mut StageCounts,
    progress: &mut SynthProgress,
) -> Result<Vec<BatchCall>> {
    let (stage, max_invalid) = (b.stage, b.cfg.synthesis.max_invalid_retries);
    let mut next = vec![];
    for c in calls {
        if log.records.contains_key(&c.key()) || !b.messages.contains_key(&c.key()) {
            continue;
        }
        let answer = lines
            .get(&c.custom_id(stage))
            .map(answer_of)
            .unwrap_or_else(|| LineAnswer::Failed("not answered in the batch".into()));
        match answer {
            LineAnswer::Text(text) => {
                counts.calls_made += 1;
                match outcome(stage, c.key(), c.attempt, max_invalid, text) {
                    Some(r) => record(r, stage, log, counts, progress)?,
                    None => next.push(BatchCall {
                        attempt: c.attempt + 1,
                        failures: 0,
                        ..*c
                    }),
                }
            }
            LineAnswer::Failed(why) if c.failures < b.cfg.llm.max_retries => {
                tracing::debug!(custom_id = %c.custom_id(stage), %why, "batch line asked again");
                next.push(BatchCall {
                    failures: c.failures + 1,
                    ..*c
                });
            }
            LineAnswer::Failed(why) => {
                let m = format!(
                    "{}: {why} (gave up after {} tries)",
                    c.custom_id(stage),
                    c.failures + 1
                );
                return Err(call_error(CallError::GaveUp(m), stage, counts));
            }
            LineAnswer::Refused(why) => {
                let m = format!("{}: {why}", c.custom_id(stage));
                return Err(call_error(CallError::Refused(m), stage, counts));
            }
        }
    }
    Ok(next)
}

/// Ask every task of `todo` through batches, round after round, until each has a
/// record in `log`.
pub fn run(
    cfg: &SynthConfig,
    client: &JudgeClient,
    stage: SynthStage,
    todo: Vec<Task>,
    log: &mut Log,
    counts: &mut StageCounts,
    progress: &mut SynthProgress,
) -> Result<()> {
    let name = layout::batches_log(stage);
    let (batch_log, records) = JsonlLog::open(&cfg.output_dir, &name)?;
    let mut state = state_of(&records, &batch_log.url())?;
    if !state.open.is_empty() {
        tracing::info!(
            batches = state.open.len(),
            stage = stage.name(),
            "resuming: polling the batches already created"
        );
    }
    let mut b = Batches {
        cfg,
        client,
        stage,
        messages: todo.into_iter().map(|t| (t.key, t.messages)).collect(),
        log: batch_log,
    };
    loop {
        if state.open.is_empty() {
            let calls: Vec<BatchCall> = b
                .messages
                .keys()
                .filter(|k| !log.records.contains_key(k))
                .map(|k| state.next.get(k).copied().unwrap_or(BatchCall::first(*k)))
                .collect();
            if calls.is_empty() {
                break;
            }
            state.open = b.create_round(state.rounds, &calls, counts)?;
            state.rounds += 1;
        }
        let (id, calls) = state.open.remove(0);
        let lines = b.wait(&id, counts)?;
        let next = take_answers(&b, &calls, &lines, log, counts, progress)?;
        let done = BatchRecord::Done {
            batch: id,
            done: true,
            next: next.clone(),
        };
        b.log
            .append(&[serde_json::to_value(&done).expect("serializes")])?;
        for c in next {
            state.next.insert(c.key(), c);
        }
    }
    // Object stores: fold the log's parts into one object.
    let (_, all) = JsonlLog::open(&cfg.output_dir, &name)?;
    b.log.compact(&all)
}
