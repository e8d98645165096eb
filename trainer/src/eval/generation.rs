//! `janus eval generate`: this shard's bench items -> `answers/shard-<i>.jsonl`.
//!
//! The bench is split by item id (`id % shards == shard`), the system message goes
//! in the model's prompt format, and sampling follows the protocol (temperature 1.0,
//! top_p 0.9, repetition penalty 1.03, 1024 new tokens by default). Each item draws
//! from its own random stream of the seed (`stream = id * best_of + k`), so an
//! answer does not depend on the batch, the shard count or a restart.
//!
//! Answers are appended as items finish; a restarted shard generates only the items
//! it has no answer for.
//!
//! Best-of-N: with `generation.best_of` = N > 1, N samples are drawn per item and a
//! [`Reranker`] (a reward model) keeps the best one.

use std::collections::{BTreeMap, HashSet};

use serde_json::Value;
use tch::Tensor;

use super::answers::Answer;
use super::bench::{self, BenchItem};
use super::progress::StageProgress;
use crate::config::EvalConfig;
use crate::data::{reward_input, PromptFormat};
use crate::error::{Error, Result};
use crate::generate::chat::{self, Message, Role};
use crate::generate::{Completion, Engine, EngineOptions, LoadedModel, Request, SamplingParams};
use crate::stage_log::JsonlLog;

/// Scores candidate answers to a prompt (higher is better): the slot of best-of-N.
pub trait Reranker {
    /// One reward per candidate; `prompt` is the formatted prompt (system message
    /// included) the candidates answer.
    fn rewards(
        &mut self,
        item: &BenchItem,
        prompt: &str,
        candidates: &[String],
    ) -> Result<Vec<f64>>;
}

/// The reward model at `path` as a [`Reranker`]: a `*ForSequenceClassification`
/// directory (or URL) written by `janus train` with `method: reward`, or an OpenRLHF
/// reward checkpoint (`LLMForSequenceRegression`, its head `value_head`, as Janus-RM
/// is released), loaded in the evaluated model's dtype and device.
pub fn reward_model(path: &str, cfg: &EvalConfig) -> Result<Box<dyn Reranker>> {
    let m = LoadedModel::load(path, None, cfg.model.dtype, cfg.model.device)?;
    if !m.model.config.is_sequence_classifier() {
        return Err(Error::Config(format!(
            "generation.reward_model `{path}`: config.json names {:?}, not a \
             *ForSequenceClassification (or OpenRLHF *ForSequenceRegression) reward model \
             (train one with `method: reward`)",
            m.model.config.architectures
        )));
    }
    let normalize = m.model.config.reward_normalization();
    Ok(Box::new(RewardReranker {
        m,
        format: cfg.model.prompt_format,
        normalize,
    }))
}

/// Scores each candidate as the reward model was trained: the joint text of prompt
/// and response (`encode_joint`) as [`reward_input`] ends it, the value head at the
/// position it names.
struct RewardReranker {
    m: LoadedModel,
    format: PromptFormat,
    /// OpenRLHF's `(reward - mean) / std` from config.json, when it has them.
    normalize: Option<(f64, f64)>,
}

impl Reranker for RewardReranker {
    fn rewards(
        &mut self,
        item: &BenchItem,
        _prompt: &str,
        candidates: &[String],
    ) -> Result<Vec<f64>> {
        let tok = &self.m.tokenizer;
        let prompt = self.format.prompt(&item.system, &item.prompt);
        let mut rows = Vec::with_capacity(candidates.len());
        for c in candidates {
            let (p, resp) = crate::data::encode_joint(tok, &prompt, &self.format.response(c))?;
            rows.push(reward_input(&p, &resp, tok.eos_id, self.m.max_len));
        }
        let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(1);
        let (mut ids, mut pos, mut last) = (vec![], vec![], vec![]);
        for (r, (row, read)) in rows.iter().enumerate() {
            ids.extend_from_slice(row);
            ids.extend(std::iter::repeat_n(tok.pad_id, width - row.len()));
            pos.extend(0..row.len() as i64);
            pos.extend(std::iter::repeat_n(0, width - row.len()));
            last.push((r * width + read) as i64);
        }
        let dev = self.m.device;
        let grid = |v: &[i64]| {
            Tensor::from_slice(v)
                .view([-1, width as i64])
                .to_device(dev)
        };
        let rewards = tch::no_grad(|| {
            let hidden = self.m.model.hidden_states(
                &grid(&ids),
                &grid(&pos),
                &crate::model::AttentionLayout::Causal,
            );
            let h = *hidden.size().last().expect("rank 3");
            let lastv = hidden
                .view([-1, h])
                .index_select(0, &Tensor::from_slice(&last).to_device(dev));
            self.m
                .model
                .score(&lastv)
                .to_kind(tch::Kind::Double)
                .view([-1])
        });
        let rewards = Vec::<f64>::try_from(&rewards).expect("a 1-d double tensor");
        Ok(match self.normalize {
            Some((mean, std)) => rewards.iter().map(|r| (r - mean) / std).collect(),
            None => rewards,
        })
    }
}

/// Which shard of how many this process generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    pub fn all() -> Self {
        Self { index: 0, count: 1 }
    }

    pub fn owns(&self, item: usize) -> bool {
        item % self.count == self.index
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct GenerateSummary {
    pub shard: usize,
    pub items: usize,
    /// Answered before this run started (resumed).
    pub already_done: usize,
    pub generated_tokens: u64,
    pub seconds: f64,
    pub answers: String,
}

/// The prompt text (without BOS) of `item` in `format`.
pub fn prompt_text(format: PromptFormat, item: &BenchItem) -> String {
    let mut m = vec![];
    if !item.system.is_empty() {
        m.push(Message::new(Role::System, item.system.clone()));
    }
    m.push(Message::new(Role::User, item.prompt.clone()));
    chat::render(format, &m).expect("system + user is a valid conversation")
}

fn params(cfg: &EvalConfig) -> SamplingParams {
    let g = &cfg.generation;
    SamplingParams {
        temperature: g.temperature,
        top_p: g.top_p,
        top_k: g.top_k,
        repetition_penalty: g.repetition_penalty,
        seed: g.seed,
    }
}

/// The engine requests of `item` (`best_of` of them).
fn requests(
    cfg: &EvalConfig,
    m: &LoadedModel,
    item: &BenchItem,
    text: &str,
) -> Result<Vec<Request>> {
    let mut prompt = vec![m.tokenizer.bos_id];
    prompt.extend(m.tokenizer.encode(text)?);
    if prompt.len() >= m.max_len {
        return Err(Error::Data(format!(
            "{}: item {}: the prompt has {} tokens, the model's context is {} tokens",
            cfg.bench.path,
            item.id,
            prompt.len(),
            m.max_len
        )));
    }
    let best_of = cfg.generation.best_of;
    let max_new = cfg.generation.max_new_tokens.min(m.max_len - prompt.len());
    Ok((0..best_of)
        .map(|k| {
            let mut r = Request::new(prompt.clone(), params(cfg), max_new);
            r.stop = chat::default_stops(cfg.model.prompt_format);
            r.stream = (item.id * best_of + k) as u64;
            r
        })
        .collect())
}

/// The answer kept among an item's samples.
fn choose(
    item: &BenchItem,
    text: &str,
    samples: &[Completion],
    reranker: Option<&mut (dyn Reranker + '_)>,
) -> Result<Answer> {
    let (best, reward) =
        match reranker {
            Some(r) if samples.len() > 1 => {
                let texts: Vec<String> = samples.iter().map(|c| c.text.clone()).collect();
                let rewards = r.rewards(item, text, &texts)?;
                let (i, best) = rewards.iter().copied().enumerate().fold(
                    (0, f64::NEG_INFINITY),
                    |a, (i, v)| if v > a.1 { (i, v) } else { a },
                );
                (i, Some(best))
            }
            _ => (0, None),
        };
    let c = &samples[best];
    Ok(Answer {
        item: item.id,
        response: c.text.clone(),
        finish_reason: c.finish.as_str().into(),
        prompt_tokens: c.prompt_tokens,
        completion_tokens: c.tokens.len(),
        samples: samples.len(),
        reward,
    })
}

/// Generate this shard's answers; `reranker` ranks best-of-N samples.
pub fn run(
    cfg: &EvalConfig,
    shard: Shard,
    mut reranker: Option<Box<dyn Reranker>>,
    progress: &mut StageProgress,
) -> Result<GenerateSummary> {
    if cfg.generation.best_of > 1 && reranker.is_none() {
        return Err(Error::Config(
            "`generation.best_of` > 1 needs a reward model to rank the samples".into(),
        ));
    }
    let started = std::time::Instant::now();
    let bench = bench::load(&cfg.bench.path, cfg.bench.limit)?;
    let mine: Vec<&BenchItem> = bench.items.iter().filter(|i| shard.owns(i.id)).collect();
    let name = janus_crds::config::eval::answers_file(shard.index)
        .display()
        .to_string();
    let (mut log, existing) = JsonlLog::open(&cfg.output_dir, &name)?;
    let done: HashSet<usize> = existing
        .iter()
        .filter_map(|r| r.get("item").and_then(Value::as_u64).map(|i| i as usize))
        .collect();
    let todo: Vec<&BenchItem> = mine
        .iter()
        .copied()
        .filter(|i| !done.contains(&i.id))
        .collect();
    let already = mine.len() - todo.len();
    let mut summary = GenerateSummary {
        shard: shard.index,
        items: mine.len(),
        already_done: already,
        generated_tokens: 0,
        seconds: 0.0,
        answers: log.url(),
    };
    progress.generate(already, mine.len(), 0);
    tracing::info!(
        shard = shard.index,
        shards = shard.count,
        items = mine.len(),
        answered = already,
        to_generate = todo.len(),
        "generating"
    );
    if !todo.is_empty() {
        let m = LoadedModel::load(
            &cfg.model.path,
            cfg.model.tokenizer.as_deref(),
            cfg.model.dtype,
            cfg.model.device,
        )?;
        let texts: Vec<String> = todo
            .iter()
            .map(|i| prompt_text(cfg.model.prompt_format, i))
            .collect();
        let mut reqs = vec![];
        for (item, text) in todo.iter().zip(&texts) {
            reqs.extend(requests(cfg, &m, item, text)?);
        }
        let mut engine = Engine::new(
            m,
            EngineOptions {
                max_batch: cfg.generation.batch_size,
                ..EngineOptions::default()
            },
        );
        let best_of = cfg.generation.best_of;
        let mut pending: BTreeMap<usize, Vec<Option<Completion>>> = BTreeMap::new();
        let mut finished = already;
        let mut tokens = 0u64;
        engine.generate(reqs, |i, c| {
            tokens += c.tokens.len() as u64;
            let (k, slot) = (i / best_of, i % best_of);
            let samples = pending.entry(k).or_insert_with(|| vec![None; best_of]);
            samples[slot] = Some(c.clone());
            if samples.iter().all(Option::is_some) {
                let samples: Vec<Completion> = pending
                    .remove(&k)
                    .expect("present")
                    .into_iter()
                    .flatten()
                    .collect();
                let a = choose(todo[k], &texts[k], &samples, reranker.as_deref_mut())?;
                log.append(&[serde_json::to_value(&a).expect("answer serializes")])?;
                finished += 1;
                progress.generate(finished, mine.len(), tokens);
            }
            Ok(())
        })?;
        summary.generated_tokens = tokens;
    }
    let (_, all) = JsonlLog::open(&cfg.output_dir, &name)?;
    log.compact(&all)?;
    progress.finish();
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_split_the_bench_by_item_id() {
        let s = [
            Shard { index: 0, count: 3 },
            Shard { index: 1, count: 3 },
            Shard { index: 2, count: 3 },
        ];
        for id in 0..30 {
            assert_eq!(s.iter().filter(|s| s.owns(id)).count(), 1);
        }
        assert!(s[1].owns(4) && !s[1].owns(5));
        assert!(Shard::all().owns(17));
    }
}
