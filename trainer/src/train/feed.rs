//! Where each step's data comes from: units held in memory (data files, read and
//! tokenised once), or records streamed from a sharded dataset (read a window at a
//! time, tokenised per step). Both advance the same `DataCursor`.
//!
//! Sources with weights in `data.train` make a mixture (in memory): each epoch's order
//! is `data.mixture_samples` draws of a source by weight, each taking that source's
//! next unit in its own seeded order (starting over in a new order when it runs out),
//! a function of (seed, epoch) alone, so a resumed run draws what the first would have.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::distr::{weighted::WeightedIndex, Distribution};
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::checkpoint::DataCursor;
use crate::config::{Hyperparameters, Method, TrainConfig};
use crate::data::shards::{format_name, RecordKind, INDEX};
use crate::data::stream::{is_dataset, RankStream, ShardedData, StreamPlan, StreamedRecord};
use crate::data::tokens::{PairIds, SeqIds, TokenSeq};
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

    /// The units of `self` followed by those of `other` (pair ids renumbered: they key
    /// precomputed reference log-probabilities by position in the run's data).
    fn append(self, other: Units) -> Result<Units> {
        Ok(match (self, other) {
            (Units::Examples(mut a), Units::Examples(b)) => {
                a.extend(b);
                Units::Examples(a)
            }
            (Units::Pairs(mut a), Units::Pairs(b)) => {
                let base = a.len();
                a.extend(b.into_iter().map(|mut p| {
                    p.id += base;
                    p
                }));
                Units::Pairs(a)
            }
            _ => {
                return Err(Error::Config(
                    "a weighted mixture of packed rows is not supported".into(),
                ))
            }
        })
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
        /// The sources' share of `units` when `data.train` is a weighted mixture.
        mixture: Option<Mixture>,
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
    /// Per source of a weighted mixture (empty otherwise).
    pub sources: Vec<SourceCounts>,
}

impl Counts {
    /// Units drawn so far per source of a weighted mixture, `(source, drawn)`.
    pub fn drawn(&self) -> impl Iterator<Item = (&str, u64)> {
        self.sources.iter().map(|c| (c.source.as_str(), c.drawn))
    }
}

/// One source of a weighted mixture.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SourceCounts {
    pub source: String,
    pub weight: f64,
    /// Records read and units (examples or pairs) they made.
    pub records: usize,
    pub units: usize,
    /// Units of it this rank trained on in this run.
    pub drawn: u64,
}

/// A weighted mixture: each source's units (a range of the run's) and weight.
pub struct Mixture {
    ranges: Vec<Range<usize>>,
    weights: Vec<f64>,
    /// Units an epoch draws.
    per_epoch: usize,
}

impl Mixture {
    /// The run's units of `epoch`, drawn by weight; a function of `seed` and `epoch`.
    pub fn order(&self, seed: u64, epoch: u64) -> Vec<usize> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
            seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(epoch) ^ 0x6d69_7874_7572_6573,
        );
        let pick = WeightedIndex::new(&self.weights).expect("weights were validated");
        // Per source: its order in the current pass, the next position, the pass.
        let mut passes: Vec<(Vec<usize>, usize, u64)> = vec![(vec![], 0, 0); self.ranges.len()];
        let mut out = Vec::with_capacity(self.per_epoch);
        for _ in 0..self.per_epoch {
            let k = pick.sample(&mut rng);
            let (order, next, pass) = &mut passes[k];
            if *next >= order.len() {
                let stream = epoch.wrapping_mul(1 << 20).wrapping_add(*pass);
                *order = epoch_order(self.ranges[k].len(), seed ^ (k as u64 + 1) << 40, stream);
                *next = 0;
                *pass += 1;
            }
            out.push(self.ranges[k].start + order[*next]);
            *next += 1;
        }
        out
    }

    /// Which source unit `u` belongs to.
    fn source_of(&self, u: usize) -> usize {
        self.ranges
            .iter()
            .position(|r| r.contains(&u))
            .expect("a unit of the run")
    }
}

/// A rank's stream, parsed (in the decode threads) as the method's record type, or
/// as token ids from token shards.
enum Records {
    Sft(RankStream<SftRecord>),
    Preference(RankStream<PreferenceRecord>),
    TokenSft(RankStream<SeqIds>),
    TokenPairs(RankStream<PairIds>),
}

pub struct Streamed<'a> {
    data: ShardedData,
    plan: StreamPlan,
    stream: Option<Records>,
    /// (epoch, units each rank consumes in it: records, or packed rows)
    epoch_len: (u64, u64),
    /// Packing (token shards of SFT records): this rank's rows of the epoch in
    /// `epoch_len`, as one past each row's last record.
    rows: Option<Vec<u64>>,
    packing: bool,
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
            ending: data::Ending::of(cfg.method),
        };
        let retry = Duration::from_secs(cfg.checkpoint.retry_timeout_seconds);
        let names: Vec<String> = d
            .train
            .iter()
            .map(|p| p.path().to_string_lossy().to_string())
            .collect();
        let mixed = d.train.iter().any(|s| s.weight().is_some());
        match names.iter().filter(|n| is_dataset(n)).count() {
            0 if mixed => Self::mixture(cfg, tokenization, retry),
            0 => Self::in_memory(cfg, tokenization, retry),
            _ if mixed => Err(Error::Config(format!(
                "`data.train` weights a sharded dataset ({}): weighted mixtures read data files into memory",
                names.join(", ")
            ))),
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
        let paths: Vec<PathBuf> = d.train.iter().map(|s| s.path().to_path_buf()).collect();
        let train = fetch_data_files(&paths, cache_dir.path(), retry)?;
        let (units, records, skipped, stats) = load_units(cfg, &t, &train)?;
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
                sources: vec![],
            },
            mixture: None,
        })
    }

    /// A weighted mixture: each source read and tokenised on its own, its units kept
    /// together so that draws know where they came from.
    fn mixture(cfg: &TrainConfig, t: Tokenization<'a>, retry: Duration) -> Result<Self> {
        let d = &cfg.data;
        let cache_dir = crate::checkpoint::staging_dir("janus-data-")?;
        let mut all: Option<Units> = None;
        let (mut counts, mut ranges, mut weights) = (Counts::default(), vec![], vec![]);
        for (k, src) in d.train.iter().enumerate() {
            let local = fetch_data_files(&[src.path().to_path_buf()], cache_dir.path(), retry)?;
            let (units, records, skipped, stats) = load_units(cfg, &t, &local)?;
            let name = src.path().display().to_string();
            if units.len() == 0 {
                return Err(Error::Data(format!(
                    "data.train[{k}] {name}: no example fits `data.max_seq_len` = {} ({} dropped)",
                    d.max_seq_len, stats.dropped
                )));
            }
            let start = all.as_ref().map_or(0, Units::len);
            ranges.push(start..start + units.len());
            weights.push(src.weight().unwrap_or(1.0));
            tracing::info!(source = %name, weight = src.weight(), records, units = units.len(), dropped = stats.dropped, "mixture source ready");
            counts.sources.push(SourceCounts {
                source: name,
                weight: src.weight().unwrap_or(1.0),
                records,
                units: units.len(),
                drawn: 0,
            });
            counts.records += records;
            counts.skipped += skipped;
            add_stats(&mut counts.stats, &stats);
            all = Some(match all {
                None => units,
                Some(a) => a.append(units)?,
            });
        }
        let units = all.expect("data.train is not empty");
        let per_epoch = d.mixture_samples.unwrap_or(units.len());
        tracing::info!(
            sources = ranges.len(),
            units = units.len(),
            per_epoch,
            "data ready (weighted mixture)"
        );
        Ok(Feed::Memory {
            units,
            order: vec![],
            order_epoch: u64::MAX,
            counts,
            mixture: Some(Mixture {
                ranges,
                weights,
                per_epoch,
            }),
        })
    }
}

/// Read and tokenise `files` as `cfg`'s method needs: units, records, skipped, stats.
fn load_units(
    cfg: &TrainConfig,
    t: &Tokenization,
    train: &[PathBuf],
) -> Result<(Units, usize, usize, TokenizeStats)> {
    let d = &cfg.data;
    Ok(match cfg.method {
        Method::Sft => {
            let (recs, ls) = data::load_records::<SftRecord>(train, d.skip_bad_records)?;
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
            let (recs, ls) = data::load_records::<PreferenceRecord>(train, d.skip_bad_records)?;
            let (pairs, stats) = t.pairs(&recs)?;
            (Units::Pairs(pairs), ls.rows, ls.skipped, stats)
        }
    })
}

fn add_stats(c: &mut TokenizeStats, st: &TokenizeStats) {
    c.kept += st.kept;
    c.truncated += st.truncated;
    c.dropped += st.dropped;
}

impl<'a> Feed<'a> {
    fn streamed(
        cfg: &TrainConfig,
        tokenization: Tokenization<'a>,
        data: ShardedData,
        share: Share,
    ) -> Result<Self> {
        let packing = cfg.data.packing && cfg.method == Method::Sft;
        if packing && !data.is_tokens() {
            return Err(Error::Config(format!(
                "`data.packing` with a streamed dataset needs token shards, whose lengths fix the packed rows and the step count before the first step; {} holds records: shard it with `janus data shard --tokenizer {} --prompt-format {}`, or set data.packing=false",
                data.url(),
                tokenization.tok.path.display(),
                format_name(cfg.data.prompt_format)
            )));
        }
        if data.is_tokens() {
            check_token_shards(&data, &tokenization)?;
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
        let s = &cfg.data.streaming;
        let mut streamed = Streamed {
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
            epoch_len: (u64::MAX, 0),
            rows: None,
            packing,
            method: cfg.method,
            skip_bad: cfg.data.skip_bad_records,
            tokenization,
            counts: Counts::default(),
        };
        let data = &streamed.data;
        let first = streamed.epoch_units(h.seed, 0);
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
            content = %data.index.content,
            shards = data.index.shards.len(),
            per_rank_per_epoch = first,
            packed = packing,
            "streaming data"
        );
        streamed.counts.records = records;
        Ok(Feed::Stream(Box::new(streamed)))
    }

    /// Optimizer steps of the whole run.
    pub fn total_steps(&self, h: &Hyperparameters, share: Share) -> u64 {
        if let Some(n) = h.max_steps {
            return n;
        }
        match self {
            Feed::Memory { units, mixture, .. } => {
                let per_epoch = mixture.as_ref().map_or(units.len(), |m| m.per_epoch);
                h.epochs * per_epoch.div_ceil(share.per_step()) as u64
            }
            Feed::Stream(s) => (0..h.epochs)
                .map(|e| s.epoch_units(h.seed, e).div_ceil(share.per_rank as u64))
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
                counts,
                mixture,
            } => {
                let per_epoch = mixture.as_ref().map_or(units.len(), |m| m.per_epoch);
                if cursor.position >= per_epoch {
                    cursor.epoch += 1;
                    cursor.position = 0;
                }
                if *order_epoch != cursor.epoch {
                    *order = match mixture {
                        Some(m) => m.order(cursor.seed, cursor.epoch),
                        None => epoch_order(units.len(), cursor.seed, cursor.epoch),
                    };
                    *order_epoch = cursor.epoch;
                }
                let start = cursor.position;
                let end = (start + share.per_step()).min(order.len());
                let step_ids = &order[start..end];
                let ids = step_ids
                    .chunks(share.per_rank)
                    .nth(share.rank)
                    .unwrap_or(&[]);
                cursor.position = end;
                if let Some(m) = mixture {
                    for &u in ids {
                        counts.sources[m.source_of(u)].drawn += 1;
                    }
                    // What each step drew (units numbered source after source, as the
                    // `mixture source ready` lines count them): RUST_LOG=...feed=debug.
                    tracing::debug!(epoch = cursor.epoch, position = start, units = ?ids, "mixture draw");
                }
                Ok(units.take(ids))
            }
            Feed::Stream(s) => s.next_step(cursor, share),
        }
    }
}

impl Streamed<'_> {
    fn plan_of(&self, seed: u64, epoch: u64, rank: usize) -> StreamPlan {
        StreamPlan {
            seed,
            epoch,
            rank,
            ..self.plan
        }
    }

    /// This rank's packed rows of `epoch` (see `ShardedData::packed_rows`).
    fn rank_rows(&self, seed: u64, epoch: u64, rank: usize) -> Vec<u64> {
        let t = &self.tokenization;
        self.data
            .packed_rows(
                &self.plan_of(seed, epoch, rank),
                |p, r| t.fitted_len(p, r),
                t.max_len,
            )
            .expect("packing was checked when the feed opened")
    }

    /// Units every rank consumes in `epoch`: the fewest any rank has (records, or
    /// packed rows), so all ranks take the same number of steps.
    fn epoch_units(&self, seed: u64, epoch: u64) -> u64 {
        if !self.packing {
            return self.data.epoch_samples(seed, epoch, self.plan.world);
        }
        (0..self.plan.world)
            .map(|r| self.rank_rows(seed, epoch, r).len() as u64)
            .min()
            .unwrap_or(0)
    }

    fn set_epoch(&mut self, seed: u64, epoch: u64) {
        self.epoch_len = (epoch, self.epoch_units(seed, epoch));
        self.rows = self
            .packing
            .then(|| self.rank_rows(seed, epoch, self.plan.rank));
    }

    /// In streaming, `cursor.position` counts this rank's units of the epoch (records,
    /// or packed rows; the same number on every rank).
    fn next_step(&mut self, cursor: &mut DataCursor, share: Share) -> Result<StepData> {
        if self.epoch_len.0 != cursor.epoch {
            self.set_epoch(cursor.seed, cursor.epoch);
        }
        if cursor.position as u64 >= self.epoch_len.1 {
            cursor.epoch += 1;
            cursor.position = 0;
            self.stream = None;
            self.set_epoch(cursor.seed, cursor.epoch);
        }
        if self.stream.is_none() || self.plan.epoch != cursor.epoch {
            self.plan.epoch = cursor.epoch;
            self.plan.seed = cursor.seed;
            // A packed position counts rows: start at the first record of the row.
            let start = match (&self.rows, cursor.position) {
                (Some(ends), p) if p > 0 => ends[p - 1],
                _ => cursor.position as u64,
            };
            let tokens = self.data.is_tokens();
            self.stream = Some(match (self.method, tokens) {
                (Method::Sft, false) => Records::Sft(self.data.stream(self.plan, start)?),
                (_, false) => Records::Preference(self.data.stream(self.plan, start)?),
                (Method::Sft, true) => {
                    Records::TokenSft(self.data.stream_token_seqs(self.plan, start)?)
                }
                (_, true) => Records::TokenPairs(self.data.stream_token_pairs(self.plan, start)?),
            });
        }
        let n = share
            .per_rank
            .min((self.epoch_len.1 - cursor.position as u64) as usize);
        let data = match &self.rows {
            Some(ends) => {
                let row_records: Vec<usize> = (cursor.position..cursor.position + n)
                    .map(|k| (ends[k] - if k == 0 { 0 } else { ends[k - 1] }) as usize)
                    .collect();
                let mut rows = Vec::with_capacity(n);
                for want in row_records {
                    let recs = self.take(want, share.rank, cursor.epoch)?;
                    let Records::TokenSft(_) = self.stream.as_ref().expect("opened above") else {
                        unreachable!("packing streams token shards")
                    };
                    let seqs = self.typed_tokens(recs)?;
                    let (ex, st) = self
                        .tokenization
                        .sft_tokens(seqs.into_iter().map(|s| (s.prompt, s.response)));
                    self.add_stats(&st);
                    let used: usize = ex.iter().map(|e| e.tokens.len() - 1).sum();
                    if ex.is_empty() || used > self.tokenization.max_len {
                        return Err(Error::Data(format!(
                            "{}: a packed row of rank {} holds {} examples / {used} tokens, which its {} does not predict: the shards do not match it",
                            self.data.url(),
                            share.rank,
                            ex.len(),
                            crate::data::shards::LENGTHS
                        )));
                    }
                    rows.push(ex);
                }
                StepData::Rows(rows)
            }
            None => {
                let recs = self.take(n, share.rank, cursor.epoch)?;
                self.tokenise(recs)?
            }
        };
        cursor.position += n;
        Ok(data)
    }

    /// The next `n` records of the stream (an error when it ends first).
    fn take(&mut self, n: usize, rank: usize, epoch: u64) -> Result<Taken> {
        let short = |got: usize| {
            Error::Data(format!(
                "{}: rank {rank} ran out of records in epoch {epoch} ({} short): the shards do not match {INDEX}",
                self.data.url(),
                n - got
            ))
        };
        let (got, taken) = match self.stream.as_mut().expect("opened above") {
            Records::Sft(s) => {
                let r = s.take(n)?;
                (r.len(), Taken::Sft(r))
            }
            Records::Preference(s) => {
                let r = s.take(n)?;
                (r.len(), Taken::Preference(r))
            }
            Records::TokenSft(s) => {
                let r = s.take(n)?;
                (r.len(), Taken::TokenSft(r))
            }
            Records::TokenPairs(s) => {
                let r = s.take(n)?;
                (r.len(), Taken::TokenPairs(r))
            }
        };
        if got < n {
            return Err(short(got));
        }
        Ok(taken)
    }

    /// A step's records as examples or pairs, tokenised here or read as ids.
    fn tokenise(&mut self, taken: Taken) -> Result<StepData> {
        Ok(match taken {
            Taken::Sft(recs) => {
                let recs = self.typed(recs)?;
                let (ex, st) = self.tokenization.sft(&recs)?;
                self.add_stats(&st);
                StepData::Examples(ex)
            }
            Taken::Preference(recs) => {
                let recs = self.typed(recs)?;
                let (pairs, st) = self.tokenization.pairs(&recs)?;
                self.add_stats(&st);
                StepData::Pairs(pairs)
            }
            Taken::TokenSft(recs) => {
                let seqs = self.typed_tokens(Taken::TokenSft(recs))?;
                let (ex, st) = self
                    .tokenization
                    .sft_tokens(seqs.into_iter().map(|s| (s.prompt, s.response)));
                self.add_stats(&st);
                StepData::Examples(ex)
            }
            Taken::TokenPairs(recs) => {
                let mut pairs = Vec::with_capacity(recs.len());
                for r in recs {
                    let p = r.parsed.map_err(|e| self.bad_sample(r.location, e))?;
                    let p = p.widen();
                    pairs.push((
                        (p.chosen.prompt, p.chosen.response),
                        (p.rejected.prompt, p.rejected.response),
                        p.margin,
                    ));
                }
                let (pairs, st) = self.tokenization.pairs_tokens(pairs);
                self.add_stats(&st);
                StepData::Pairs(pairs)
            }
        })
    }

    /// Token samples widened to ids: a sample that does not parse (or holds an id past
    /// the vocabulary) is corrupt data (the block's checksum passed, so the shard
    /// writer and reader disagree).
    fn typed_tokens(&self, taken: Taken) -> Result<Vec<TokenSeq>> {
        let Taken::TokenSft(recs) = taken else {
            unreachable!("token SFT records")
        };
        let mut out = Vec::with_capacity(recs.len());
        for r in recs {
            let s = r.parsed.map_err(|e| self.bad_sample(r.location, e))?;
            out.push(s.widen());
        }
        Ok(out)
    }

    fn bad_sample(&self, at: crate::data::stream::RecordLocation, e: String) -> Error {
        Error::Data(format!("{}: {e}", self.data.describe(at)))
    }

    fn add_stats(&mut self, st: &TokenizeStats) {
        add_stats(&mut self.counts.stats, st);
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

/// Records taken from a stream, by kind.
enum Taken {
    Sft(Vec<StreamedRecord<SftRecord>>),
    Preference(Vec<StreamedRecord<PreferenceRecord>>),
    TokenSft(Vec<StreamedRecord<SeqIds>>),
    TokenPairs(Vec<StreamedRecord<PairIds>>),
}

/// Token shards must come from this run's tokenizer and prompt format: the same ids
/// on-the-fly tokenisation would give.
fn check_token_shards(data: &ShardedData, t: &Tokenization) -> Result<()> {
    let index = &data.index;
    let made_with = index
        .tokens
        .as_ref()
        .map(|t| t.tokenizer_file.as_str())
        .unwrap_or("?");
    let shard_tok = index.tokenizer.as_deref().unwrap_or("");
    let format = format_name(t.format);
    if shard_tok != t.tok.identity {
        return Err(Error::Config(format!(
            "{}/{INDEX}: the shards were tokenised with {made_with} (sha256 {shard_tok}), but this job's tokenizer {} has sha256 {}: reshard with `janus data shard --tokenizer {} --prompt-format {format}`, or train with the tokenizer the shards were made with",
            data.url(),
            t.tok.path.display(),
            t.tok.identity,
            t.tok.path.display()
        )));
    }
    let shard_format = index.prompt_format.as_deref().unwrap_or("");
    if shard_format != format {
        return Err(Error::Config(format!(
            "{}/{INDEX}: the shards were tokenised in prompt format `{shard_format}`, this job's data.prompt_format is `{format}`: reshard with `--prompt-format {format}` or set data.prompt_format={shard_format}",
            data.url()
        )));
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A large epoch, so the bound on each source's count is tight (4 sd is 0.3-0.6% of
    /// its draws); sources of different sizes, each drawn many times over.
    #[test]
    fn a_mixture_epoch_draws_sources_by_weight_in_full_passes_over_each() {
        let m = Mixture {
            ranges: vec![0..50, 50..57, 57..90],
            weights: vec![0.72, 0.14, 0.14],
            per_epoch: 200_000,
        };
        let order = m.order(7, 3);
        assert_eq!(order.len(), m.per_epoch);
        assert_eq!(order, m.order(7, 3), "a function of (seed, epoch)");
        assert_ne!(order, m.order(7, 4));
        assert_ne!(order, m.order(8, 3));
        let n = order.len() as f64;
        let total: f64 = m.weights.iter().sum();
        for (k, r) in m.ranges.iter().enumerate() {
            let drawn: Vec<usize> = order.iter().copied().filter(|u| r.contains(u)).collect();
            let p = m.weights[k] / total;
            let (mean, sd) = (n * p, (n * p * (1.0 - p)).sqrt());
            assert!(
                (drawn.len() as f64 - mean).abs() <= 4.0 * sd,
                "source {k}: {} of {n} drawn, expected {mean} +- {}",
                drawn.len(),
                4.0 * sd
            );
            // Every pass over a source takes each of its units once, in a new order.
            let passes: Vec<&[usize]> = drawn.chunks_exact(r.len()).collect();
            for pass in &passes {
                let mut units = pass.to_vec();
                units.sort_unstable();
                assert_eq!(units, r.clone().collect::<Vec<_>>(), "source {k}");
            }
            assert_ne!(passes[0], passes[1], "source {k} repeats its order");
        }
    }
}
