//! `janus data inspect`: the first records of a config's training data as the trainer
//! sees them (formatted, tokenised from the joint text, truncated), with every token
//! and whether it takes loss, like axolotl's preprocess debug view.

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use super::stream::{is_dataset, ShardedData, StreamPlan};
use super::{read_rows, PreferenceRecord, Record, SftRecord, Tokenization};
use crate::config::{Method, TrainConfig};
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// One tokenised sequence of a record.
#[derive(Debug, Clone, Serialize)]
pub struct Inspected {
    /// `file:line`, `file:row N` or the shard and block of a streamed record.
    pub location: String,
    /// `example`, or `chosen` / `rejected` for a preference pair.
    pub part: &'static str,
    /// Prompt tokens (BOS included): no loss.
    pub prompt_tokens: usize,
    /// Response tokens (EOS included unless truncated): the loss is taken on these.
    pub response_tokens: usize,
    pub truncated: bool,
    /// `None`: dropped by the truncation policy.
    pub tokens: Option<Vec<Token>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Token {
    pub id: i64,
    pub piece: String,
    pub loss: bool,
}

/// The first `n` records of `cfg`'s data (files or a sharded dataset, read in file
/// order), tokenised as training would.
pub fn inspect(cfg: &TrainConfig, tok: &Tokenizer, n: usize) -> Result<Vec<Inspected>> {
    let d = &cfg.data;
    let t = Tokenization {
        tok,
        format: d.prompt_format,
        max_len: d.max_seq_len,
        policy: d.truncation,
        min_response: d.min_response_tokens,
        ending: crate::data::Ending::of(cfg.method),
    };
    let mut out = Vec::new();
    for (location, value) in first_records(cfg, n)? {
        let bad = |e: String| Error::Data(format!("{location}: {e}"));
        match cfg.method {
            Method::Sft => {
                let r: SftRecord = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
                r.check().map_err(bad)?;
                out.push(view(
                    &t, &location, "example", &r.system, &r.prompt, &r.output,
                )?);
            }
            Method::Orpo | Method::Dpo | Method::Reward => {
                let r: PreferenceRecord =
                    serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
                r.check().map_err(bad)?;
                out.push(view(
                    &t, &location, "chosen", &r.system, &r.prompt, &r.chosen,
                )?);
                out.push(view(
                    &t,
                    &location,
                    "rejected",
                    &r.system,
                    &r.prompt,
                    &r.rejected,
                )?);
            }
        }
    }
    Ok(out)
}

fn view(
    t: &Tokenization,
    location: &str,
    part: &'static str,
    system: &str,
    prompt: &str,
    response: &str,
) -> Result<Inspected> {
    let rec = SftRecord {
        system: system.into(),
        prompt: prompt.into(),
        output: response.into(),
    };
    Ok(match t.sft_one(&rec)? {
        Some((e, truncated)) => Inspected {
            location: location.into(),
            part,
            prompt_tokens: e.prompt_len,
            response_tokens: e.response_len(),
            truncated,
            tokens: Some(
                e.tokens
                    .iter()
                    .enumerate()
                    .map(|(i, &id)| Token {
                        id,
                        piece: t.tok.token(id),
                        loss: i >= e.prompt_len,
                    })
                    .collect(),
            ),
        },
        None => Inspected {
            location: location.into(),
            part,
            prompt_tokens: 0,
            response_tokens: 0,
            truncated: false,
            tokens: None,
        },
    })
}

fn first_records(cfg: &TrainConfig, n: usize) -> Result<Vec<(String, Value)>> {
    let mut out = Vec::new();
    for f in cfg.data.train.iter().map(|s| s.path()) {
        if out.len() >= n {
            break;
        }
        let name = f.to_string_lossy().to_string();
        if is_dataset(&name) {
            let retry = Duration::from_secs(cfg.checkpoint.retry_timeout_seconds);
            let data = ShardedData::open(&name, retry)?;
            let plan = StreamPlan {
                seed: cfg.hyperparameters.seed,
                epoch: 0,
                rank: 0,
                world: 1,
                window_blocks: 1,
                prefetch_windows: 0,
            };
            let mut stream = data.stream::<Value>(plan, 0)?;
            while out.len() < n {
                let Some(r) = stream.next_record()? else {
                    break;
                };
                let v = r
                    .parsed
                    .map_err(|e| Error::Data(format!("{}: {e}", data.describe(r.location))))?;
                out.push((data.describe(r.location), v));
            }
        } else {
            for row in read_rows(f)?.into_iter().take(n - out.len()) {
                let v = row
                    .value
                    .map_err(|e| Error::Data(format!("{}: {e}", row.location)))?;
                out.push((row.location, v));
            }
        }
    }
    Ok(out)
}
