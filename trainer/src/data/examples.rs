//! Records to token ids with a loss boundary, applying the truncation policy and
//! counting what it did.

use super::format::PromptFormat;
use super::records::{PreferenceRecord, SftRecord};
use crate::config::Truncation;
use crate::error::Result;
use crate::tokenizer::Tokenizer;

/// `tokens[..prompt_len]` is the prompt (BOS included, no loss); the rest is the
/// response (EOS included unless truncated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub tokens: Vec<i64>,
    pub prompt_len: usize,
}

impl Example {
    pub fn response_len(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }
}

/// A chosen and a rejected answer to the same prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    pub chosen: Example,
    pub rejected: Example,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TokenizeStats {
    /// Examples (or pairs) kept whole.
    pub kept: usize,
    /// Kept with the end of the response cut to fit `max_seq_len`.
    pub truncated: usize,
    /// Dropped: the prompt left too little room for the response (or policy `drop`).
    pub dropped: usize,
}

/// How records become examples: tokenizer, prompt format and length policy.
pub struct Tokenization<'a> {
    pub tok: &'a Tokenizer,
    pub format: PromptFormat,
    pub max_len: usize,
    pub policy: Truncation,
    /// With `TruncateResponse`, the fewest response tokens an example must keep.
    pub min_response: usize,
}

enum Fit {
    Whole(Example),
    Truncated(Example),
    Dropped,
}

impl Tokenization<'_> {
    fn prompt(&self, system: &str, prompt: &str) -> Result<Vec<i64>> {
        let mut t = vec![self.tok.bos_id];
        t.extend(self.tok.encode(&self.format.prompt(system, prompt))?);
        Ok(t)
    }

    fn fit(&self, prompt: &[i64], response: &str) -> Result<Fit> {
        let mut resp = self.tok.encode(&self.format.response(response))?;
        resp.push(self.tok.eos_id);
        let whole = prompt.len() + resp.len() <= self.max_len;
        let room = self.max_len.saturating_sub(prompt.len());
        if !whole && (self.policy == Truncation::Drop || room < self.min_response.max(1)) {
            return Ok(Fit::Dropped);
        }
        resp.truncate(room);
        let ex = Example {
            tokens: [prompt, &resp].concat(),
            prompt_len: prompt.len(),
        };
        Ok(if whole {
            Fit::Whole(ex)
        } else {
            Fit::Truncated(ex)
        })
    }

    pub fn sft(&self, records: &[SftRecord]) -> Result<(Vec<Example>, TokenizeStats)> {
        let mut stats = TokenizeStats::default();
        let mut out = Vec::with_capacity(records.len());
        for r in records {
            match self.fit(&self.prompt(&r.system, &r.prompt)?, &r.output)? {
                Fit::Whole(e) => {
                    stats.kept += 1;
                    out.push(e)
                }
                Fit::Truncated(e) => {
                    stats.truncated += 1;
                    out.push(e)
                }
                Fit::Dropped => stats.dropped += 1,
            }
        }
        Ok((out, stats))
    }

    /// Pairs share their prompt; a pair is dropped when either answer is.
    pub fn pairs(&self, records: &[PreferenceRecord]) -> Result<(Vec<Pair>, TokenizeStats)> {
        let mut stats = TokenizeStats::default();
        let mut out = Vec::with_capacity(records.len());
        for r in records {
            let prompt = self.prompt(&r.system, &r.prompt)?;
            match (
                self.fit(&prompt, &r.chosen)?,
                self.fit(&prompt, &r.rejected)?,
            ) {
                (Fit::Dropped, _) | (_, Fit::Dropped) => stats.dropped += 1,
                (Fit::Whole(chosen), Fit::Whole(rejected)) => {
                    stats.kept += 1;
                    out.push(Pair { chosen, rejected })
                }
                (
                    Fit::Whole(chosen) | Fit::Truncated(chosen),
                    Fit::Whole(rejected) | Fit::Truncated(rejected),
                ) => {
                    stats.truncated += 1;
                    out.push(Pair { chosen, rejected })
                }
            }
        }
        Ok((out, stats))
    }
}
