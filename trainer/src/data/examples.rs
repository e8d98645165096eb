//! Records to token ids with a loss boundary, applying the truncation policy and
//! counting what it did.

use super::records::{PreferenceRecord, SftRecord};
use crate::config::{Method, PromptFormat, Truncation};
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
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    pub chosen: Example,
    pub rejected: Example,
    /// The record's margin (0 when it has none).
    pub margin: f64,
    /// Index of the pair in the run's data (the key of precomputed reference
    /// log-probabilities).
    pub id: usize,
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
    /// How each sequence ends.
    pub ending: Ending,
}

/// How a tokenised example ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// EOS after the response, cut with the response's end when it does not fit (a
    /// truncated answer has not ended): the language-model objectives.
    Eos,
    /// The reward model's input, [`reward_input`]: EOS after the response, kept last
    /// when the response is cut, where the value head reads.
    RewardEos,
}

impl Ending {
    pub fn of(method: Method) -> Self {
        match method {
            Method::Reward => Ending::RewardEos,
            Method::Sft | Method::Orpo | Method::Dpo => Ending::Eos,
        }
    }
}

/// A reward model's input for `prompt` (BOS included) and `response` ids, as every
/// path builds it (training, best-of-N reranking, and transformers on the exported
/// model): the ids, and the position whose hidden state the value head reads.
///
/// The convention is Janus-RM's (OpenRLHF `RewardDataset` and `RewardModel`, kaistAI/Janus
/// `run_inference.py`): `prompt + response + EOS`, the value read at that EOS, and when
/// the pair is longer than `max_len` the end cut (the start kept, as the tokenizer's
/// `truncation=True`) and EOS put last again. Reading at an EOS every input ends with
/// gives the head one summary position to learn whatever the response's last word is;
/// OpenRLHF's text form `response + " " + eos_token` differs only by the separate
/// `▁` some SentencePiece tokenizers make of that space, which we do not add.
pub fn reward_input(
    prompt: &[i64],
    response: &[i64],
    eos: i64,
    max_len: usize,
) -> (Vec<i64>, usize) {
    let keep = max_len.max(1) - 1;
    let mut ids: Vec<i64> = prompt.iter().chain(response).copied().take(keep).collect();
    ids.push(eos);
    let read = ids.len() - 1;
    (ids, read)
}

enum Fit {
    Whole(Example),
    Truncated(Example),
    Dropped,
}

/// Token ids of a prompt and a response as the tokenizer gives them for the *joint*
/// text (`BOS + encode(prompt + response)`, as Hugging Face tokenizes the formatted
/// conversation), cut where the response starts: the first token that ends past the
/// prompt's last byte (or starts at or after it) is the response's first token.
/// Encoding the two apart differs for SentencePiece-style tokenizers, which add a
/// word-start marker at the start of every separately encoded string.
pub fn encode_joint(tok: &Tokenizer, prompt: &str, response: &str) -> Result<(Vec<i64>, Vec<i64>)> {
    let boundary = prompt.len();
    let (ids, offsets) = tok.encode_with_offsets(&format!("{prompt}{response}"))?;
    let cut = offsets
        .iter()
        .position(|&(start, end)| end > boundary || start >= boundary)
        .unwrap_or(ids.len());
    let mut p = Vec::with_capacity(cut + 1);
    p.push(tok.bos_id);
    p.extend_from_slice(&ids[..cut]);
    Ok((p, ids[cut..].to_vec()))
}

impl Tokenization<'_> {
    /// `BOS + prompt` and the response's tokens, from the joint text.
    pub fn encode(
        &self,
        system: &str,
        prompt: &str,
        response: &str,
    ) -> Result<(Vec<i64>, Vec<i64>)> {
        encode_joint(
            self.tok,
            &self.format.prompt(system, prompt),
            &self.format.response(response),
        )
    }

    /// Tokens an example of a `prompt`-token prompt and a `response`-token response
    /// (before EOS) has after the length policy, or `None` when it is dropped: what
    /// `fit` gives, from the lengths alone (packing plans its rows with it).
    pub fn fitted_len(&self, prompt: usize, response: usize) -> Option<usize> {
        if self.ending == Ending::RewardEos {
            let whole = prompt + response < self.max_len;
            let room = self.max_len.saturating_sub(prompt + 1);
            if !whole && (self.policy == Truncation::Drop || room < self.min_response.max(1)) {
                return None;
            }
            return Some((prompt + response + 1).min(self.max_len));
        }
        let resp = response + 1;
        let whole = prompt + resp <= self.max_len;
        let room = self.max_len.saturating_sub(prompt);
        if !whole && (self.policy == Truncation::Drop || room < self.min_response.max(1)) {
            return None;
        }
        Some(prompt + resp.min(room))
    }

    fn fit(&self, prompt: &[i64], mut resp: Vec<i64>) -> Fit {
        if self.ending == Ending::RewardEos {
            return match self.fitted_len(prompt.len(), resp.len()) {
                None => Fit::Dropped,
                Some(_) => {
                    let whole = prompt.len() + resp.len() < self.max_len;
                    let (tokens, _) = reward_input(prompt, &resp, self.tok.eos_id, self.max_len);
                    let ex = Example {
                        tokens,
                        prompt_len: prompt.len(),
                    };
                    if whole {
                        Fit::Whole(ex)
                    } else {
                        Fit::Truncated(ex)
                    }
                }
            };
        }
        resp.push(self.tok.eos_id);
        let whole = prompt.len() + resp.len() <= self.max_len;
        let room = self.max_len.saturating_sub(prompt.len());
        if !whole && (self.policy == Truncation::Drop || room < self.min_response.max(1)) {
            return Fit::Dropped;
        }
        resp.truncate(room);
        let ex = Example {
            tokens: [prompt, &resp].concat(),
            prompt_len: prompt.len(),
        };
        if whole {
            Fit::Whole(ex)
        } else {
            Fit::Truncated(ex)
        }
    }

    /// One SFT record as an example (or dropped), for `janus data inspect`.
    pub fn sft_one(&self, r: &SftRecord) -> Result<Option<(Example, bool)>> {
        let (p, resp) = self.encode(&r.system, &r.prompt, &r.output)?;
        Ok(match self.fit(&p, resp) {
            Fit::Whole(e) => Some((e, false)),
            Fit::Truncated(e) => Some((e, true)),
            Fit::Dropped => None,
        })
    }

    pub fn sft(&self, records: &[SftRecord]) -> Result<(Vec<Example>, TokenizeStats)> {
        let encoded = records
            .iter()
            .map(|r| self.encode(&r.system, &r.prompt, &r.output))
            .collect::<Result<Vec<_>>>()?;
        Ok(self.sft_tokens(encoded))
    }

    /// Examples from (prompt, response) ids as `encode` gives them (token shards hold
    /// exactly these), under this run's length policy.
    pub fn sft_tokens(
        &self,
        encoded: impl IntoIterator<Item = (Vec<i64>, Vec<i64>)>,
    ) -> (Vec<Example>, TokenizeStats) {
        let mut stats = TokenizeStats::default();
        let mut out = Vec::new();
        for (p, resp) in encoded {
            match self.fit(&p, resp) {
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
        (out, stats)
    }

    /// Pairs share their prompt; a pair is dropped when either answer is.
    pub fn pairs(&self, records: &[PreferenceRecord]) -> Result<(Vec<Pair>, TokenizeStats)> {
        let encoded = records
            .iter()
            .map(|r| {
                Ok((
                    self.encode(&r.system, &r.prompt, &r.chosen)?,
                    self.encode(&r.system, &r.prompt, &r.rejected)?,
                    r.margin.unwrap_or(0.0),
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(self.pairs_tokens(encoded))
    }

    /// Pairs from the encoded chosen and rejected sequences and the margin.
    #[allow(clippy::type_complexity)]
    pub fn pairs_tokens(
        &self,
        encoded: impl IntoIterator<Item = ((Vec<i64>, Vec<i64>), (Vec<i64>, Vec<i64>), f64)>,
    ) -> (Vec<Pair>, TokenizeStats) {
        let mut stats = TokenizeStats::default();
        let mut out = Vec::new();
        for ((pc, c), (pr, rj), margin) in encoded {
            match (self.fit(&pc, c), self.fit(&pr, rj)) {
                (Fit::Dropped, _) | (_, Fit::Dropped) => stats.dropped += 1,
                (Fit::Whole(chosen), Fit::Whole(rejected)) => {
                    stats.kept += 1;
                    out.push(Pair {
                        chosen,
                        rejected,
                        margin,
                        id: out.len(),
                    })
                }
                (
                    Fit::Whole(chosen) | Fit::Truncated(chosen),
                    Fit::Whole(rejected) | Fit::Truncated(rejected),
                ) => {
                    stats.truncated += 1;
                    out.push(Pair {
                        chosen,
                        rejected,
                        margin,
                        id: out.len(),
                    })
                }
            }
        }
        (out, stats)
    }
}
