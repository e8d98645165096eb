//! Where each step's data comes from: units held in memory (data files, read and
//! tokenised once), or records streamed from a sharded dataset (read a window at a
//! time, tokenised per step). Both advance the same `DataCursor`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::checkpoint::DataCursor;
use crate::config::{Hyperparameters, Method, TrainConfig};
use crate::data::shards::RecordKind;
use crate::data::stream::{is_dataset, RankStream, ShardedData, StreamPlan, StreamedRecord};
use crate::data::{
    self, pack, Example, Pair, PreferenceRecord, Record, SftRecord, Tokenization, TokenizeStats,
};
use crate::error::{Error, Result};
use crate::storage::{self, Store};
use crate::tokenizer::Tokenizer;

/// One rank's data of one step.
pub enum StepData {
    Examples(Vec<Example>),
    /// Rows of examples packed together.
    Rows(Vec<Vec<Example>>),
    Pairs(Vec<Pair>),
}

/// The data of a run, as units the schedule counts: examples, packed rows, or pairs.
pub enum Units {
    Examples(Vec<Example>),
    Packed {
        examples: Vec<Example>,
        rows: Vec<Vec<usize>>,
    },
    Pairs(Vec<Pair>),
}

impl Units {
    fn len(&self) -> usize {
        match self {
            Units::Examples(e) => e.len(),
            Units::Packed { rows, .. } => rows.len(),
            Units::Pairs(p) => p.len(),
        }
    }

    fn take(&self, ids: &[usize]) -> StepData {
        match self {
            Units::Examples(ex) => StepData::Examples(ids.iter().map(|&i| ex[i].clone()).collect()),
            Units::Packed { examples, rows } => StepData::Rows(
                ids.iter()
                    .map(|&r| rows[r].iter().map(|&i| examples[i].clone()).collect())
                    .collect(),
            ),
            Units::Pairs(p) => StepData::Pairs(ids.iter().map(|&i| p[i].clone()).collect()),
        }
    }
}

/// Order of the units in `epoch`: a seeded shuffle, the same on every run and resume.
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
        seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(epoch),
    );
    order.shuffle(&mut rng);
    order
}

/// Per-step data of a run.
pub enum Feed<'a> {
    /// Every unit in memory; a step's units are a slice of one global seeded order,
    /// cut into per-rank parts (so N ranks see what 1 rank sees with N x the batch).
    Memory {
        units: Units,
        order: Vec<usize>,
        order_epoch: u64,
        counts: Counts,
    },
    /// A sharded dataset; each rank streams its own blocks (see `data::stream`).
    Stream(Box<Streamed<'a>>),
}

/// Records read and what tokenisation made of them.
#[derive(Debug, Default, Clone)]
pub struct Counts {
    pub records: usize,
    pub skipped: usize,
    pub stats: TokenizeStats,
}

/// A rank's stream, parsed (in the decode threads) as the method's record type.
enum Records {
    Sft(RankStream<SftRecord>),
    Preference(RankStream<PreferenceRecord>),
}

pub struct Streamed<'a> {
    data: ShardedData,
    plan: StreamPlan,
    stream: Option<Records>,
    /// (epoch, records each rank consumes in it)
    epoch_len: (u64, u64),
    method: Method,
    skip_bad: bool,
    tokenization: Tokenization<'a>,
    counts: Counts,
}

/// Ranks and the units each rank takes per step.
#[derive(Debug, Clone, Copy)]
pub struct Share {
    pub rank: usize,
    pub world: usize,
    pub per_rank: usize,
}

impl Share {
    pub fn per_step(&self) -> usize {
        self.per_rank * self.world
    }
}

impl<'a> Feed<'a> {
    /// Open the data of `cfg` for this rank.
    pub fn open(cfg: &TrainConfig, tok: &'a Tokenizer, share: Share) -> Result<Self> {
        let d = &cfg.data;
        let overhead = tok.encode(&d.prompt_format.prompt("", "x"))?.len()
            + tok.encode(&d.prompt_format.response("x"))?.len()
            + 2;
        if d.max_seq_len < overhead + d.min_response_tokens.max(1) {
            return Err(Error::Config(format!(
                "`data.max_seq_len` ({}) is below what the {:?} prompt format needs with this tokenizer ({} tokens of markup + data.min_response_tokens {})",
                d.max_seq_len, d.prompt_format, overhead, d.min_response_tokens
            )));
        }
        let tokenization = Tokenization {
            tok,
            format: d.prompt_format,
            max_len: d.max_seq_len,
            policy: d.truncation,
            min_response: d.min_response_tokens,
            append_eos: cfg.method != Method::Reward,
        };
        let retry = Duration::from_secs(cfg.checkpoint.retry_timeout_seconds);
        let names: Vec<String> = d
            .train
            .iter()
            .map(|p| p.to_string_lossy().to_string())
            .collect();
        match names.iter().filter(|n| is_dataset(n)).count() {
            0 => Self::in_memory(cfg, tokenization, retry),
            1 if names.len() == 1 => {
                Self::streamed(cfg, tokenization, ShardedData::open(&names[0], retry)?, share)
            }
            _ => Err(Error::Config(format!(
                "`data.train` mixes a sharded dataset with other entries ({}): give one dataset, or only data files",
                names.join(", ")
            ))),
        }
    }

    fn in_memory(cfg: &TrainConfig, t: Tokenization<'a>, retry: Duration) -> Result<Self> {
        let d = &cfg.data;
        let cache_dir = crate::checkpoint::staging_dir("janus-data-")?;
        let train = fetch_data_files(&d.train, cache_dir.path(), retry)?;
        let (units, records, skipped, stats) = match cfg.method {
            Method::Sft => {
                let (recs, ls) = data::load_records::<SftRecord>(&train, d.skip_bad_records)?;
                let (examples, stats) = t.sft(&recs)?;
                let units = if d.packing {
                    let order = epoch_order(examples.len(), cfg.hyperparameters.seed, u64::MAX);
                    let rows = pack(&examples, &order, d.max_seq_len);
                    Units::Packed { examples, rows }
                } else {
                    Units::Examples(examples)
                };
                (units, ls.rows, ls.skipped, stats)
            }
            Method::Orpo | Method::Dpo | Method::Reward => {
                let (recs, ls) =
                    data::load_records::<PreferenceRecord>(&train, d.skip_bad_records)?;
                let (pairs, stats) = t.pairs(&recs)?;
                (Units::Pairs(pairs), ls.rows, ls.skipped, stats)
            }
        };
        if units.len() == 0 {
            return Err(Error::Data(format!(
                "no example fits `data.max_seq_len` = {} ({} dropped by truncation policy {:?})",
                d.max_seq_len, stats.dropped, d.truncation
            )));
        }
        tracing::info!(
            records,
            skipped,
            kept = stats.kept,
            truncated = stats.truncated,
            dropped = stats.dropped,
            units = units.len(),
            "data ready"
        );
        Ok(Feed::Memory {
            units,
            order: vec![],
            order_epoch: u64::MAX,
            counts: Counts {
                records,
                skipped,
                stats,
            },
        })
    }

    fn streamed(
        cfg: &TrainConfig,
        tokenization: Tokenization<'a>,
        data: ShardedData,
        share: Share,
    ) -> Result<Self> {
        if cfg.data.packing {
            return Err(Error::Config(format!(
                "`data.packing` is not supported when streaming a sharded dataset ({}) yet: set data.packing=false, or train from the data files",
                data.url()
            )));
        }
        let wanted = match cfg.method {
            Method::Sft => RecordKind::Sft,
            Method::Orpo | Method::Dpo | Method::Reward => RecordKind::Preference,
        };
        if data.index.records != wanted && data.index.records != RecordKind::Mixed {
            return Err(Error::Config(format!(
                "{} holds {:?} records, method `{:?}` needs {wanted:?} records",
                data.url(),
                data.index.records,
                cfg.method
            )));
        }
        let h = &cfg.hyperparameters;
        let first = data.epoch_samples(h.seed, 0, share.world);
        if first == 0 {
            return Err(Error::Data(format!(
                "{} has {} blocks in {} shards, too few to give each of {} ranks a block: reshard with a smaller --block-size",
                data.url(),
                data.index.shards.iter().map(|s| s.blocks.len()).sum::<usize>(),
                data.index.shards.len(),
                share.world
            )));
        }
        let records = data.index.samples as usize;
        tracing::info!(
            dataset = %data.url(),
            records,
            shards = data.index.shards.len(),
            per_rank_per_epoch = first,
            "streaming data"
        );
        let s = &cfg.data.streaming;
        Ok(Feed::Stream(Box::new(Streamed {
            plan: StreamPlan {
                seed: h.seed,
                epoch: 0,
                rank: share.rank,
                world: share.world,
                window_blocks: s.window_blocks,
                prefetch_windows: s.prefetch_windows,
            },
            data,
            stream: None,
            epoch_len: (0, first),
            method: cfg.method,
            skip_bad: cfg.data.skip_bad_records,
            tokenization,
            counts: Counts {
                records,
                ..Default::default()
            },
        })))
    }

    /// Optimizer steps of the whole run.
    pub fn total_steps(&self, h: &Hyperparameters, share: Share) -> u64 {
        if let Some(n) = h.max_steps {
            return n;
        }
        match self {
            Feed::Memory { units, .. } => h.epochs * units.len().div_ceil(share.per_step()) as u64,
            Feed::Stream(s) => (0..h.epochs)
                .map(|e| {
                    s.data
                        .epoch_samples(h.seed, e, share.world)
                        .div_ceil(share.per_rank as u64)
                })
                .sum(),
        }
    }

    /// Every pair of an in-memory preference dataset (`None` when streamed or SFT).
    pub fn pairs(&self) -> Option<&[Pair]> {
        match self {
            Feed::Memory {
                units: Units::Pairs(p),
                ..
            } => Some(p),
            _ => None,
        }
    }

    pub fn counts(&self) -> &Counts {
        match self {
            Feed::Memory { counts, .. } => counts,
            Feed::Stream(s) => &s.counts,
        }
    }

    /// This rank's data of the next step; advances `cursor`.
    pub fn next_step(&mut self, cursor: &mut DataCursor, share: Share) -> Result<StepData> {
        match self {
            Feed::Memory {
                units,
                order,
                order_epoch,
                ..
            } => {
                if cursor.position >= units.len() {
                    cursor.epoch += 1;
                    cursor.position = 0;
                }
                if *order_epoch != cursor.epoch {
                    *order = epoch_order(units.len(), cursor.seed, cursor.epoch);
                    *order_epoch = cursor.epoch;
                }
                let end = (cursor.position + share.per_step()).min(order.len());
                let step_ids = &order[cursor.position..end];
                let ids = step_ids
                    .chunks(share.per_rank)
                    .nth(share.rank)
                    .unwrap_or(&[]);
                cursor.position = end;
                Ok(units.take(ids))
            }
            Feed::Stream(s) => s.next_step(cursor, share),
        }
    }
}

impl Streamed<'_> {
    /// In streaming, `cursor.position` counts this rank's records of the epoch (the
    /// same number on every rank).
    fn next_step(&mut self, cursor: &mut DataCursor, share: Share) -> Result<StepData> {
        if self.epoch_len.0 != cursor.epoch {
            self.epoch_len = (
                cursor.epoch,
                self.data
                    .epoch_samples(cursor.seed, cursor.epoch, share.world),
            );
        }
        if cursor.position as u64 >= self.epoch_len.1 {
            cursor.epoch += 1;
            cursor.position = 0;
            self.stream = None;
            self.epoch_len = (
                cursor.epoch,
                self.data
                    .epoch_samples(cursor.seed, cursor.epoch, share.world),
            );
        }
        if self.stream.is_none() || self.plan.epoch != cursor.epoch {
            self.plan.epoch = cursor.epoch;
            self.plan.seed = cursor.seed;
            let start = cursor.position as u64;
            self.stream = Some(match self.method {
                Method::Sft => Records::Sft(self.data.stream(self.plan, start)?),
                _ => Records::Preference(self.data.stream(self.plan, start)?),
            });
        }
        let n = share
            .per_rank
            .min((self.epoch_len.1 - cursor.position as u64) as usize);
        let short = |got: usize| {
            Error::Data(format!(
                "{}: rank {} ran out of records in epoch {} ({} short): the shards do not match index.json",
                self.data.url(),
                share.rank,
                cursor.epoch,
                n - got
            ))
        };
        let data = match self.stream.as_mut().expect("opened above") {
            Records::Sft(stream) => {
                let recs = stream.take(n)?;
                if recs.len() < n {
                    return Err(short(recs.len()));
                }
                let recs = self.typed(recs)?;
                let (ex, st) = self.tokenization.sft(&recs)?;
                self.add_stats(&st);
                StepData::Examples(ex)
            }
            Records::Preference(stream) => {
                let recs = stream.take(n)?;
                if recs.len() < n {
                    return Err(short(recs.len()));
                }
                let recs = self.typed(recs)?;
                let (pairs, st) = self.tokenization.pairs(&recs)?;
                self.add_stats(&st);
                StepData::Pairs(pairs)
            }
        };
        cursor.position += n;
        Ok(data)
    }

    fn add_stats(&mut self, st: &TokenizeStats) {
        let c = &mut self.counts.stats;
        c.kept += st.kept;
        c.truncated += st.truncated;
        c.dropped += st.dropped;
    }

    /// Checked records; a bad one is skipped (counted) or an error naming its location.
    fn typed<T: Record>(&mut self, recs: Vec<StreamedRecord<T>>) -> Result<Vec<T>> {
        let mut out = Vec::with_capacity(recs.len());
        for r in recs {
            match r.parsed.and_then(|t| t.check().map(|_| t)) {
                Ok(t) => out.push(t),
                Err(e) if self.skip_bad => {
                    self.counts.skipped += 1;
                    tracing::warn!(location = %self.data.describe(r.location), error = %e, "skipping bad record");
                }
                Err(e) => {
                    return Err(Error::Data(format!(
                        "{}: {e} (set data.skip_bad_records to skip bad records)",
                        self.data.describe(r.location)
                    )))
                }
            }
        }
        Ok(out)
    }
}

/// Local copies of the training files; URLs are downloaded into `cache`.
fn fetch_data_files(train: &[PathBuf], cache: &Path, retry: Duration) -> Result<Vec<PathBuf>> {
    let mut out = Vec::with_capacity(train.len());
    for (i, f) in train.iter().enumerate() {
        let s = f.to_string_lossy();
        if !storage::is_url(&s) {
            out.push(f.clone());
            continue;
        }
        let (dir, name) = s
            .rsplit_once('/')
            .ok_or_else(|| Error::Config(format!("data URL `{s}` names no object")))?;
        let store = Store::open(dir, retry)?;
        if !store.exists(name)? {
            return Err(Error::Data(format!("{s}: no such object")));
        }
        let local = cache.join(format!("{i}-{name}"));
        store.get_file(name, &local)?;
        tracing::info!(url = %s, bytes = std::fs::metadata(&local).map(|m| m.len()).unwrap_or(0), "downloaded training data");
        out.push(local);
    }
    Ok(out)
}
