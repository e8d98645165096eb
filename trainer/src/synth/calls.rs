//! The calls of a stage, online: `llm.concurrency` in flight, each answer validated
//! (re-asked with the next seed up to `synthesis.max_invalid_retries` times, then
//! recorded as failed) and appended to the stage's log as it arrives. What a stage
//! log holds and how an answer becomes a record, shared with the batch mode
//! ([`super::batch`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures::StreamExt;
use serde_json::Value;

use janus_crds::config::synth::{SynthConfig, SynthStage};

use super::config::seed;
use super::progress::{StageCounts, SynthProgress};
use super::records::{by_key, Key, StageRecord};
use super::validation;
use crate::error::{Error, Result};
use crate::openai::{CallError, JudgeClient};
use crate::stage_log::JsonlLog;

/// One call to make: its key and its messages.
pub struct Task {
    pub key: Key,
    pub messages: Vec<Value>,
}

/// A stage's log and what it holds.
pub struct Log {
    log: JsonlLog,
    pub records: BTreeMap<Key, StageRecord>,
}

impl Log {
    pub fn open(cfg: &SynthConfig, name: &str) -> Result<Self> {
        let (log, values) = JsonlLog::open(&cfg.output_dir, name)?;
        let records = by_key(&values, &log.url())?;
        Ok(Self { log, records })
    }

    fn append(&mut self, r: StageRecord) -> Result<()> {
        self.log.append(&[validation::to_value(&r)])?;
        self.records.entry(r.key()).or_insert(r);
        Ok(())
    }

    /// Object stores: fold the appended parts into one object.
    pub fn compact(&mut self) -> Result<()> {
        let all: Vec<Value> = self.records.values().map(validation::to_value).collect();
        self.log.compact(&all)
    }
}

/// A valid output of `stage` as its log records it, or why the answer is not one.
pub fn validate(stage: SynthStage, text: &str) -> std::result::Result<Value, String> {
    match stage {
        SynthStage::Preferences => {
            validation::preference_set(text).map(|s| validation::to_value(&s))
        }
        SynthStage::System | SynthStage::Answers => validation::text(text).map(Value::String),
        SynthStage::Rubrics => validation::rubric(text).map(|r| validation::to_value(&r)),
        SynthStage::Pairs => Err("the pairs stage makes no calls".into()),
    }
}

/// What an answer to `key` on its `attempt`-th try makes: a record (valid, or failed
/// once no re-ask is left), or None when it is asked again.
pub fn outcome(
    stage: SynthStage,
    key: Key,
    attempt: usize,
    max_invalid: usize,
    text: String,
) -> Option<StageRecord> {
    let (value, error) = match validate(stage, &text) {
        Ok(v) => (Some(v), None),
        Err(why) if attempt < max_invalid => {
            tracing::debug!(stage = stage.name(), ?key, %why, "invalid output; asked again");
            return None;
        }
        Err(why) => (None, Some(why)),
    };
    let failed = error.is_some();
    Some(StageRecord {
        instruction: key.instruction,
        set: key.set,
        preference: key.preference,
        value,
        attempts: attempt + 1,
        error,
        text: failed.then_some(text),
    })
}

/// Count and append `r` (durable when this returns), and report progress.
pub fn record(
    r: StageRecord,
    stage: SynthStage,
    log: &mut Log,
    counts: &mut StageCounts,
    progress: &mut SynthProgress,
) -> Result<()> {
    if r.value.is_some() {
        counts.valid += 1;
    } else {
        counts.invalid += 1;
        tracing::warn!(
            stage = stage.name(),
            instruction = r.instruction,
            set = r.set,
            preference = r.preference,
            error = r.error.as_deref().unwrap_or_default(),
            "output still invalid after its re-asks; counted as failed"
        );
    }
    log.append(r)?;
    progress.update(counts);
    Ok(())
}

/// The error a stage ends with after a call gave up or was refused.
pub fn call_error(e: CallError, stage: SynthStage, counts: &StageCounts) -> Error {
    match e {
        CallError::Refused(m) => Error::Config(format!(
            "the model refused the requests (check llm.url, llm.model and the API key): {m}"
        )),
        CallError::GaveUp(m) => Error::io(
            format!(
                "synthesis stage {}: {} of {} calls recorded",
                stage.name(),
                counts.valid + counts.invalid,
                counts.tasks
            ),
            std::io::Error::other(m),
        ),
    }
}

/// Ask one task until its answer validates or its re-asks run out.
async fn ask_one(
    client: &JudgeClient,
    stage: SynthStage,
    base_seed: u64,
    max_invalid: usize,
    task: Task,
) -> std::result::Result<StageRecord, CallError> {
    let k = task.key;
    let mut attempt = 0;
    loop {
        let text = client
            .ask(&task.messages, seed(base_seed, stage, k, attempt))
            .await?;
        if let Some(r) = outcome(stage, k, attempt, max_invalid, text) {
            return Ok(r);
        }
        attempt += 1;
    }
}

/// Ask every task, `llm.concurrency` at a time, recording each outcome as it comes.
/// After a call gave up (or was refused) no new one starts; those in flight finish
/// and are recorded, then the stage fails.
pub fn ask_all(
    cfg: &SynthConfig,
    client: &Arc<JudgeClient>,
    stage: SynthStage,
    todo: Vec<Task>,
    log: &mut Log,
    counts: &mut StageCounts,
    progress: &mut SynthProgress,
) -> Result<()> {
    let (tx, rx) = std::sync::mpsc::channel::<std::result::Result<StageRecord, CallError>>();
    let stop = Arc::new(AtomicBool::new(false));
    let rt = crate::storage::runtime()?;
    let (concurrency, base) = (cfg.llm.concurrency, cfg.llm.seed);
    let max_invalid = cfg.synthesis.max_invalid_retries;
    let worker = {
        let (client, stop) = (client.clone(), stop.clone());
        rt.spawn(async move {
            futures::stream::iter(todo)
                .for_each_concurrent(concurrency, |task| {
                    let (client, stop, tx) = (client.clone(), stop.clone(), tx.clone());
                    async move {
                        if stop.load(Ordering::SeqCst) {
                            return;
                        }
                        let out = ask_one(&client, stage, base, max_invalid, task).await;
                        if out.is_err() {
                            stop.store(true, Ordering::SeqCst);
                        }
                        let _ = tx.send(out);
                    }
                })
                .await;
        })
    };
    let mut first_error: Option<CallError> = None;
    for out in rx {
        match out {
            Ok(r) => {
                counts.calls_made += r.attempts;
                record(r, stage, log, counts, progress)?;
            }
            Err(e) => {
                tracing::error!(stage = stage.name(), error = %e, "call failed");
                first_error.get_or_insert(e);
            }
        }
    }
    rt.block_on(worker)
        .map_err(|e| Error::io("synthesis", std::io::Error::other(e.to_string())))?;
    match first_error {
        None => Ok(()),
        Some(e) => Err(call_error(e, stage, counts)),
    }
}
