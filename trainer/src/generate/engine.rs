//! The generation engine: a running batch of sequences over one explicit KV cache.
//! Each [`Engine::step`] either prefills waiting requests (a left-padded group, which
//! then joins the running batch) or decodes one token for every running sequence;
//! finished sequences leave the batch at once, so the batch refills as they finish
//! and new requests join a batch that is already decoding (continuous batching).
//!
//! The engine knows nothing of HTTP: `janus serve` drives it from a thread, the
//! evaluation pipeline and the tests call [`Engine::generate`] directly.

use std::collections::VecDeque;

use serde::Serialize;
use tch::{Kind, Tensor};

use super::loaded::LoadedModel;
use super::sampling::{choose, process_logits, Sampler, SamplingParams};
use super::text::TextTracker;
use crate::error::{Error, Result};
use crate::model::KvCache;

pub type SeqId = u64;

/// What to generate for one prompt.
#[derive(Debug, Clone)]
pub struct Request {
    /// Prompt token ids, BOS included.
    pub prompt: Vec<i64>,
    pub params: SamplingParams,
    pub max_new_tokens: usize,
    /// Strings that end the text (excluded from it).
    pub stop: Vec<String>,
    /// Keep generating through end-of-sequence tokens (benchmarks).
    pub ignore_eos: bool,
    /// Which random stream of the seed to use (the choice index when one prompt is
    /// asked for several answers).
    pub stream: u64,
}

impl Request {
    pub fn new(prompt: Vec<i64>, params: SamplingParams, max_new_tokens: usize) -> Self {
        Self {
            prompt,
            params,
            max_new_tokens,
            stop: vec![],
            ignore_eos: false,
            stream: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// End of sequence or a stop string.
    Stop,
    /// `max_new_tokens`, or the model's context length.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Completion {
    pub id: SeqId,
    pub text: String,
    /// Generated token ids (an end-of-sequence token that finished it included).
    pub tokens: Vec<i64>,
    pub prompt_tokens: usize,
    pub finish: FinishReason,
}

#[derive(Debug, Clone)]
pub enum Event {
    /// A token was generated; `delta` is the text that became final with it (often
    /// empty while a multi-byte character or a possible stop string is pending).
    Token {
        id: SeqId,
        token: i64,
        delta: String,
    },
    /// The sequence finished and left the batch.
    Done(Completion),
}

#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Sequences decoded together.
    pub max_batch: usize,
    /// Prompt tokens prefilled in one pass (at least one prompt is always taken).
    pub max_prefill_tokens: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            max_batch: 16,
            max_prefill_tokens: 8192,
        }
    }
}

/// A sequence in the running batch (row `i` of the cache is `rows[i]`).
struct Row {
    id: SeqId,
    prompt_len: usize,
    generated: Vec<i64>,
    params: SamplingParams,
    sampler: Sampler,
    text: TextTracker,
    max_new_tokens: usize,
    ignore_eos: bool,
    finished: Option<FinishReason>,
    cancelled: bool,
}

pub struct Engine {
    m: LoadedModel,
    opts: EngineOptions,
    cache: KvCache,
    rows: Vec<Row>,
    /// `[rows, vocab]` bool: tokens already in each sequence (repetition penalty).
    seen: Option<Tensor>,
    waiting: VecDeque<(SeqId, Request)>,
    next_id: SeqId,
    generated_tokens: u64,
}

impl Engine {
    pub fn new(m: LoadedModel, opts: EngineOptions) -> Self {
        let cache = m.model.new_cache(0, m.kind, m.device);
        Self {
            m,
            opts,
            cache,
            rows: vec![],
            seen: None,
            waiting: VecDeque::new(),
            next_id: 0,
            generated_tokens: 0,
        }
    }

    pub fn model(&self) -> &LoadedModel {
        &self.m
    }

    /// Queue a request; it joins the batch at a later step.
    pub fn submit(&mut self, r: Request) -> SeqId {
        let id = self.next_id;
        self.next_id += 1;
        self.waiting.push_back((id, r));
        id
    }

    /// Drop a request (queued or running): it produces no more events.
    pub fn cancel(&mut self, id: SeqId) {
        self.waiting.retain(|(i, _)| *i != id);
        if let Some(r) = self.rows.iter_mut().find(|r| r.id == id) {
            r.cancelled = true;
        }
    }

    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn running(&self) -> usize {
        self.rows.len()
    }

    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.rows.is_empty()
    }

    /// Tokens generated since the engine started.
    pub fn generated_tokens(&self) -> u64 {
        self.generated_tokens
    }

    /// One forward pass: prefill waiting requests when the batch has room, else
    /// decode one token for every running sequence.
    pub fn step(&mut self) -> Result<Vec<Event>> {
        self.drop_cancelled();
        let mut events = vec![];
        if !self.waiting.is_empty() && self.rows.len() < self.opts.max_batch.max(1) {
            self.prefill(&mut events)?;
        } else if !self.rows.is_empty() {
            self.decode(&mut events)?;
        }
        Ok(events)
    }

    /// Generate for every request (in batches of `max_batch` that refill as sequences
    /// finish); `on_done` sees each completion as it finishes, with its request's
    /// index. Completions come back in request order.
    pub fn generate(
        &mut self,
        requests: Vec<Request>,
        mut on_done: impl FnMut(usize, &Completion) -> Result<()>,
    ) -> Result<Vec<Completion>> {
        let first = self.next_id;
        let n = requests.len();
        for r in requests {
            self.submit(r);
        }
        let mut out: Vec<Option<Completion>> = vec![None; n];
        while !self.is_idle() {
            for e in self.step()? {
                if let Event::Done(c) = e {
                    let i = (c.id - first) as usize;
                    on_done(i, &c)?;
                    out[i] = Some(c);
                }
            }
        }
        Ok(out
            .into_iter()
            .map(|c| c.expect("every request finishes"))
            .collect())
    }

    fn drop_cancelled(&mut self) {
        if self.rows.iter().any(|r| r.cancelled) {
            let keep: Vec<usize> = (0..self.rows.len())
                .filter(|&i| !self.rows[i].cancelled)
                .collect();
            self.retain(&keep);
        }
    }

    /// Keep rows `keep` (ascending) of the batch, cache and penalty state.
    fn retain(&mut self, keep: &[usize]) {
        let idx: Vec<i64> = keep.iter().map(|&i| i as i64).collect();
        self.cache.retain(&idx);
        if let Some(seen) = &self.seen {
            let t = Tensor::from_slice(&idx).to_device(self.m.device);
            self.seen = Some(seen.index_select(0, &t));
        }
        let mut i = 0;
        self.rows.retain(|_| {
            let k = keep.contains(&i);
            i += 1;
            k
        });
    }

    /// Take waiting requests into the batch: one left-padded pass over their
    /// prompts gives each its first token.
    fn prefill(&mut self, events: &mut Vec<Event>) -> Result<()> {
        let room = self.opts.max_batch.max(1) - self.rows.len();
        let mut group: Vec<(SeqId, Request)> = vec![];
        let mut tokens = 0;
        while let Some((_, r)) = self.waiting.front() {
            let n = r.prompt.len();
            if group.len() == room
                || (!group.is_empty() && tokens + n > self.opts.max_prefill_tokens)
            {
                break;
            }
            let (id, r) = self.waiting.pop_front().expect("non-empty");
            if let Some(e) = self.refuse(id, &r) {
                events.push(e);
                continue;
            }
            tokens += n;
            group.push((id, r));
        }
        if group.is_empty() {
            return Ok(());
        }
        let (g, width) = (
            group.len() as i64,
            group.iter().map(|(_, r)| r.prompt.len()).max().unwrap_or(0) as i64,
        );
        let mut ids = vec![0i64; (g * width) as usize];
        let mut pos = vec![0i64; (g * width) as usize];
        let mut valid = vec![false; (g * width) as usize];
        for (row, (_, r)) in group.iter().enumerate() {
            let pad = width as usize - r.prompt.len();
            let base = row * width as usize;
            for (j, &t) in r.prompt.iter().enumerate() {
                ids[base + pad + j] = t;
                pos[base + pad + j] = j as i64;
                valid[base + pad + j] = true;
            }
        }
        let dev = self.m.device;
        let as_t = |v: &[i64]| Tensor::from_slice(v).view([g, width]).to_device(dev);
        let valid_t = Tensor::from_slice(&valid).view([g, width]).to_device(dev);
        let mut cache = self.m.model.new_cache(g, self.m.kind, dev);
        let hidden = self
            .m
            .model
            .forward_cached(&as_t(&ids), &as_t(&pos), &valid_t, &mut cache);
        let logits = tch::no_grad(|| self.m.model.lm_head(&hidden.select(1, width - 1)));
        let needs_seen = self.seen.is_some()
            || group
                .iter()
                .any(|(_, r)| r.params.repetition_penalty != 1.0);
        let start = self.rows.len();
        if needs_seen {
            let prompts: Vec<&[i64]> = group.iter().map(|(_, r)| r.prompt.as_slice()).collect();
            let new = self.seen_of(&prompts);
            // Rows admitted before any penalty was asked for have no record; their
            // penalty is 1, so an empty one does.
            let old = self
                .seen
                .take()
                .unwrap_or_else(|| self.seen_of(&vec![&[][..]; start]));
            self.seen = Some(Tensor::cat(&[old, new], 0));
        }
        for (id, r) in group {
            self.rows.push(Row {
                id,
                prompt_len: r.prompt.len(),
                generated: vec![],
                sampler: Sampler::new(r.params.seed, r.stream),
                params: r.params,
                text: TextTracker::new(r.stop),
                max_new_tokens: r.max_new_tokens,
                ignore_eos: r.ignore_eos,
                finished: None,
                cancelled: false,
            });
        }
        self.cache.extend(cache);
        self.advance(start, &logits, events)
    }

    /// A request that cannot run: done at once, with why in the log.
    fn refuse(&self, id: SeqId, r: &Request) -> Option<Event> {
        let done = |finish| {
            Some(Event::Done(Completion {
                id,
                text: String::new(),
                tokens: vec![],
                prompt_tokens: r.prompt.len(),
                finish,
            }))
        };
        if r.prompt.len() >= self.m.max_len || r.max_new_tokens == 0 {
            tracing::warn!(
                prompt_tokens = r.prompt.len(),
                max_len = self.m.max_len,
                "prompt leaves no room to generate"
            );
            return done(FinishReason::Length);
        }
        None
    }

    /// `[n, vocab]` bool with the tokens of each list set.
    fn seen_of(&self, lists: &[&[i64]]) -> Tensor {
        let vocab = self.m.model.config.vocab_size as i64;
        let seen = Tensor::zeros([lists.len() as i64, vocab], (Kind::Bool, self.m.device));
        for (r, ids) in lists.iter().enumerate() {
            if !ids.is_empty() {
                let idx = Tensor::from_slice(ids).to_device(self.m.device);
                let _ = seen.get(r as i64).index_fill_(0, &idx, 1);
            }
        }
        seen
    }

    /// One token for every running sequence.
    fn decode(&mut self, events: &mut Vec<Event>) -> Result<()> {
        let b = self.rows.len() as i64;
        let last: Vec<i64> = self
            .rows
            .iter()
            .map(|r| {
                *r.generated
                    .last()
                    .expect("a running row has its first token")
            })
            .collect();
        let pos: Vec<i64> = self
            .rows
            .iter()
            .map(|r| (r.prompt_len + r.generated.len() - 1) as i64)
            .collect();
        let dev = self.m.device;
        let ids = Tensor::from_slice(&last).view([b, 1]).to_device(dev);
        let pos = Tensor::from_slice(&pos).view([b, 1]).to_device(dev);
        let valid = Tensor::ones([b, 1], (Kind::Bool, dev));
        let hidden = self
            .m
            .model
            .forward_cached(&ids, &pos, &valid, &mut self.cache);
        let logits = tch::no_grad(|| self.m.model.lm_head(&hidden.select(1, 0)));
        self.advance(0, &logits, events)
    }

    /// Choose the next token of rows `start..` from their `logits`, record it, and
    /// retire the rows that finished.
    fn advance(&mut self, start: usize, logits: &Tensor, events: &mut Vec<Event>) -> Result<()> {
        let rows = &mut self.rows[start..];
        let seen = self
            .seen
            .as_ref()
            .map(|s| s.narrow(0, start as i64, rows.len() as i64));
        let (params, mut samplers): (Vec<&SamplingParams>, Vec<&mut Sampler>) =
            rows.iter_mut().map(|r| (&r.params, &mut r.sampler)).unzip();
        let processed = tch::no_grad(|| process_logits(logits, seen.as_ref(), &params));
        let next = choose(&processed, &params, &mut samplers);
        if let Some(seen) = &self.seen {
            let idx = Tensor::from_slice(&next)
                .to_device(self.m.device)
                .unsqueeze(1);
            let mut part = seen.narrow(0, start as i64, next.len() as i64);
            let _ = part.scatter_value_(1, &idx, 1);
        }
        let tok = &self.m.tokenizer;
        let (eos, max_len) = (&self.m.eos, self.m.max_len);
        for (row, &t) in self.rows[start..].iter_mut().zip(&next) {
            row.generated.push(t);
            let is_eos = !row.ignore_eos && eos.contains(&t);
            let text_ids = if is_eos {
                &row.generated[..row.generated.len() - 1]
            } else {
                &row.generated[..]
            };
            let update = row.text.update(tok, text_ids).map_err(|e| match e {
                Error::Data(m) => Error::Model(format!("decoding generated tokens: {m}")),
                e => e,
            })?;
            row.finished = if is_eos || update.stopped {
                Some(FinishReason::Stop)
            } else if row.generated.len() >= row.max_new_tokens
                || row.prompt_len + row.generated.len() >= max_len
            {
                Some(FinishReason::Length)
            } else {
                None
            };
            let mut delta = update.delta;
            if row.finished.is_some() {
                delta.push_str(&row.text.finish());
            }
            events.push(Event::Token {
                id: row.id,
                token: t,
                delta,
            });
            if let Some(finish) = row.finished {
                events.push(Event::Done(Completion {
                    id: row.id,
                    text: row.text.text().to_string(),
                    tokens: row.generated.clone(),
                    prompt_tokens: row.prompt_len,
                    finish,
                }));
            }
        }
        self.generated_tokens += next.len() as u64;
        if self.rows.iter().any(|r| r.finished.is_some()) {
            let keep: Vec<usize> = (0..self.rows.len())
                .filter(|&i| self.rows[i].finished.is_none())
                .collect();
            self.retain(&keep);
        }
        Ok(())
    }
}
