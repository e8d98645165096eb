//! Streaming a sharded dataset: each rank fetches only its blocks, a bounded window
//! ahead, in an order fixed by (seed, epoch), from any position.
//!
//! Order of an epoch: all blocks of the dataset are permuted by (seed, epoch) and
//! dealt round-robin to the ranks; a rank reads its blocks in windows of
//! `window_blocks` consecutive blocks, and the records of a window are shuffled by
//! (seed, epoch, window). Memory is the window being read plus `prefetch_windows`
//! windows fetched ahead, whatever the size of the dataset. A position in the stream
//! is a record count, so a resume re-derives the same windows and skips into one.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::time::Duration;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use super::shards::{decode_block, RecordKind, ShardIndex, INDEX, TOKENS};
use super::tokens::{self, PairIds, SeqIds};
use crate::error::{Error, Result};
use crate::storage::Store;

/// A sharded dataset opened for reading.
#[derive(Clone)]
pub struct ShardedData {
    store: Store,
    pub index: ShardIndex,
    /// Every block of the dataset as (shard, block) indices, in index order.
    blocks: Vec<(u32, u32)>,
    /// Index (in dataset order) of each block's first sample.
    block_first: Vec<u64>,
    /// Token shards: every sample's lengths (`data::tokens`), checked against the index.
    lengths: Option<Arc<Vec<u32>>>,
}

/// How a stream turns a record's bytes into `T` (run in the decode threads). It gets
/// the record's slice of the decoded block, so `T` may keep it without a copy.
pub type Parse<T> = Arc<dyn Fn(&bytes::Bytes) -> std::result::Result<T, String> + Send + Sync>;

/// The JSON parse of record shards: serde_json. sonic-rs (SIMD) measured slower on
/// the typed records (`make bench-stream`: their `deserialize_with` fields and
/// untagged enum go through serde's buffered path), so it is only the comparison.
pub fn parse_json<T: DeserializeOwned>(b: &bytes::Bytes) -> std::result::Result<T, String> {
    serde_json::from_slice(b).map_err(|e| e.to_string())
}

/// sonic-rs's parse of the same records, which `janus data stream --parser sonic`
/// compares with.
pub fn parse_json_sonic<T: DeserializeOwned>(b: &bytes::Bytes) -> std::result::Result<T, String> {
    sonic_rs::from_slice(b).map_err(|e| e.to_string())
}

/// Where a record came from, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordLocation {
    pub shard: u32,
    pub block: u32,
    pub line: u32,
}

/// One record: its JSON line (a slice of the decoded block, not a copy), the line
/// parsed as `T` by the decode threads (or why it is not one), and its origin.
pub struct StreamedRecord<T> {
    pub line: bytes::Bytes,
    pub parsed: std::result::Result<T, String>,
    pub location: RecordLocation,
}

/// Which part of the data a stream reads, and how far it looks ahead.
#[derive(Debug, Clone, Copy)]
pub struct StreamPlan {
    pub seed: u64,
    pub epoch: u64,
    pub rank: usize,
    pub world: usize,
    /// Blocks read (concurrently) and shuffled together.
    pub window_blocks: usize,
    /// Windows fetched ahead of the one being consumed.
    pub prefetch_windows: usize,
}

fn permutation(n: usize, seed: u64, salt: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
        seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt.wrapping_mul(0xD1B5_4A32_D192_ED03),
    );
    order.shuffle(&mut rng);
    order
}

/// Whether `s` (a path or URL from `data.train`) names a sharded dataset: a
/// directory or prefix rather than a data file.
pub fn is_dataset(s: &str) -> bool {
    let s = s.trim_end_matches('/');
    !(s.ends_with(".jsonl")
        || s.ends_with(".ndjson")
        || s.ends_with(".json")
        || s.ends_with(".parquet"))
        || s.ends_with(INDEX)
}

impl ShardedData {
    /// Open the dataset at `url` (a path, `file://`, `s3://`, ... ; `/index.json` optional).
    pub fn open(url: &str, retry: Duration) -> Result<Self> {
        let url = url.trim_end_matches('/');
        let url = url.strip_suffix(INDEX).unwrap_or(url).trim_end_matches('/');
        let store = Store::open(url, retry)?;
        let what = format!("{url}/{INDEX}");
        let bytes = store.get_bytes(INDEX).map_err(|e| {
            if e.is_not_found() {
                Error::Data(format!(
                    "{what}: no such object (a sharded dataset is written by `janus data shard`)"
                ))
            } else {
                e
            }
        })?;
        let index = ShardIndex::parse(&bytes, &what)?;
        let blocks: Vec<(u32, u32)> = index
            .shards
            .iter()
            .enumerate()
            .flat_map(|(s, sh)| (0..sh.blocks.len()).map(move |b| (s as u32, b as u32)))
            .collect();
        let block_first = blocks
            .iter()
            .scan(0u64, |n, &(s, b)| {
                let first = *n;
                *n += index.shards[s as usize].blocks[b as usize].samples;
                Some(first)
            })
            .collect();
        let lengths = match &index.tokens {
            Some(t) => Some(Arc::new(Self::fetch_lengths(&store, url, &index, t)?)),
            None => None,
        };
        Ok(Self {
            store,
            index,
            blocks,
            block_first,
            lengths,
        })
    }

    fn fetch_lengths(
        store: &Store,
        url: &str,
        index: &ShardIndex,
        t: &super::shards::TokenInfo,
    ) -> Result<Vec<u32>> {
        let what = format!("{url}/{}", t.lengths.name);
        let bytes = store.get_bytes(&t.lengths.name).map_err(|e| {
            if e.is_not_found() {
                Error::Data(format!("{what}: no such object (listed in {url}/{INDEX})"))
            } else {
                e
            }
        })?;
        let sum = hex::encode(Sha256::digest(&bytes));
        let want = index.samples as usize * tokens::lengths_per_sample(index.records) * 4;
        if sum != t.lengths.sha256 || bytes.len() != want {
            return Err(Error::Data(format!(
                "{what}: {} bytes with sha256 {sum}, {INDEX} says {want} bytes with sha256 {}: the dataset is corrupt",
                bytes.len(),
                t.lengths.sha256
            )));
        }
        Ok(bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect())
    }

    /// Whether the shards hold token ids (`janus data shard --tokenizer`).
    pub fn is_tokens(&self) -> bool {
        self.index.content == TOKENS
    }

    fn id_bytes(&self) -> u32 {
        self.index.tokens.as_ref().map(|t| t.id_bytes).unwrap_or(4)
    }

    fn vocab(&self) -> u64 {
        self.index
            .tokens
            .as_ref()
            .map(|t| t.vocab_size)
            .unwrap_or(u64::MAX)
    }

    pub fn url(&self) -> &str {
        self.store.url()
    }

    /// The blocks `rank` reads in `epoch`, in reading order.
    pub fn rank_blocks(&self, seed: u64, epoch: u64, rank: usize, world: usize) -> Vec<(u32, u32)> {
        permutation(self.blocks.len(), seed, epoch)
            .into_iter()
            .skip(rank)
            .step_by(world.max(1))
            .map(|i| self.blocks[i])
            .collect()
    }

    fn block_samples(&self, (s, b): (u32, u32)) -> u64 {
        self.index.shards[s as usize].blocks[b as usize].samples
    }

    /// Compressed bytes `rank` fetches in `epoch`.
    pub fn rank_bytes(&self, seed: u64, epoch: u64, rank: usize, world: usize) -> u64 {
        self.rank_blocks(seed, epoch, rank, world)
            .into_iter()
            .map(|(s, b)| self.index.shards[s as usize].blocks[b as usize].bytes)
            .sum()
    }

    /// Records each rank reads in `epoch`.
    pub fn rank_samples(&self, seed: u64, epoch: u64, world: usize) -> Vec<u64> {
        (0..world)
            .map(|r| {
                self.rank_blocks(seed, epoch, r, world)
                    .into_iter()
                    .map(|b| self.block_samples(b))
                    .sum()
            })
            .collect()
    }

    /// Records every rank consumes in `epoch`: the fewest any rank has, so all ranks
    /// take the same number of steps (the others' surplus waits for the next epoch's
    /// deal).
    pub fn epoch_samples(&self, seed: u64, epoch: u64, world: usize) -> u64 {
        self.rank_samples(seed, epoch, world)
            .into_iter()
            .min()
            .unwrap_or(0)
    }

    /// The rank's windows of `plan.epoch`: consecutive runs of its blocks.
    fn windows(&self, plan: &StreamPlan) -> Vec<Vec<(u32, u32)>> {
        self.rank_blocks(plan.seed, plan.epoch, plan.rank, plan.world)
            .chunks(plan.window_blocks.max(1))
            .map(<[_]>::to_vec)
            .collect()
    }

    /// Seed salt of the record shuffle inside window `i` of `epoch`.
    fn window_salt(epoch: u64, i: usize) -> u64 {
        epoch.wrapping_mul(1 << 32) ^ i as u64 ^ (1 << 63)
    }

    /// Token shards of SFT samples: the rows greedy packing makes of this rank's
    /// stream of `plan.epoch` (see `tokens::pack_rows`; one past each row's last
    /// record), computed from the lengths table alone. `fitted(prompt, response)` is
    /// a sample's token count under the run's length policy (`None`: dropped).
    pub fn packed_rows(
        &self,
        plan: &StreamPlan,
        fitted: impl Fn(usize, usize) -> Option<usize>,
        capacity: usize,
    ) -> Result<Vec<u64>> {
        let lengths = match (&self.lengths, self.index.records) {
            (Some(l), RecordKind::Sft) => l,
            _ => {
                return Err(Error::Config(format!(
                    "{}: packing needs token shards of SFT records (`janus data shard --tokenizer ... --prompt-format ...`)",
                    self.url()
                )))
            }
        };
        let mut order = Vec::new();
        let mut sizes = Vec::new();
        for (i, w) in self.windows(plan).iter().enumerate() {
            let ids: Vec<u64> = w
                .iter()
                .flat_map(|&(s, b)| {
                    let first = self.block_first[self.block_pos(s, b)];
                    first..first + self.block_samples((s, b))
                })
                .collect();
            let perm = permutation(ids.len(), plan.seed, Self::window_salt(plan.epoch, i));
            sizes.push(ids.len());
            order.extend(perm.into_iter().map(|j| ids[j] as usize));
        }
        Ok(tokens::pack_rows(
            &sizes,
            |i| {
                fitted(
                    lengths[2 * order[i]] as usize,
                    lengths[2 * order[i] + 1] as usize,
                )
            },
            capacity,
        ))
    }

    /// Position of block (s, b) in dataset order.
    fn block_pos(&self, s: u32, b: u32) -> usize {
        let before: usize = self.index.shards[..s as usize]
            .iter()
            .map(|sh| sh.blocks.len())
            .sum();
        before + b as usize
    }

    /// A stream of this rank's records of `plan.epoch`, starting at record `start`.
    /// Records are parsed as `T` in the decode threads (`serde::de::IgnoredAny` to only
    /// check that they are JSON).
    pub fn stream<T: DeserializeOwned + Send + 'static>(
        &self,
        plan: StreamPlan,
        start: u64,
    ) -> Result<RankStream<T>> {
        self.stream_with(plan, start, Arc::new(parse_json::<T>))
    }

    /// This rank's samples of token shards of SFT records, as slices of their blocks.
    pub fn stream_token_seqs(&self, plan: StreamPlan, start: u64) -> Result<RankStream<SeqIds>> {
        self.expect_tokens(RecordKind::Sft)?;
        let (w, vocab) = (self.id_bytes(), self.vocab());
        self.stream_with(
            plan,
            start,
            Arc::new(move |b| tokens::parse_sft(b, w, vocab)),
        )
    }

    /// This rank's samples of token shards of preference records.
    pub fn stream_token_pairs(&self, plan: StreamPlan, start: u64) -> Result<RankStream<PairIds>> {
        self.expect_tokens(RecordKind::Preference)?;
        let (w, vocab) = (self.id_bytes(), self.vocab());
        self.stream_with(
            plan,
            start,
            Arc::new(move |b| tokens::parse_pair(b, w, vocab)),
        )
    }

    fn expect_tokens(&self, kind: RecordKind) -> Result<()> {
        if !self.is_tokens() || self.index.records != kind {
            return Err(Error::Data(format!(
                "{}: holds {} {:?} records, expected token shards of {kind:?} records",
                self.url(),
                self.index.content,
                self.index.records
            )));
        }
        Ok(())
    }

    /// A stream whose records `parse` turns into `T`.
    pub fn stream_with<T: Send + 'static>(
        &self,
        plan: StreamPlan,
        start: u64,
        parse: Parse<T>,
    ) -> Result<RankStream<T>> {
        let window = plan.window_blocks.max(1);
        let windows = self.windows(&plan);
        // Find the window holding record `start`.
        let (mut first, mut before) = (windows.len(), 0u64);
        for (i, w) in windows.iter().enumerate() {
            let n: u64 = w.iter().map(|&b| self.block_samples(b)).sum();
            if before + n > start {
                first = i;
                break;
            }
            before += n;
        }
        let skip = (start - before) as usize;
        let (tx, rx) = sync_channel(plan.prefetch_windows);
        let data = Arc::new(self.clone());
        // Decoded blocks alive at once: the window consumed, those queued and those
        // fetched ahead.
        let buffers = BlockBuffers::new((2 * plan.prefetch_windows + 2) * window);
        let handle = std::thread::Builder::new()
            .name("janus-data".into())
            .spawn(move || {
                // Blocks are fetched on the I/O runtime and decoded as each arrives,
                // `prefetch_windows` windows ahead of the one being sent; this thread
                // shuffles each window and hands it over.
                let mut fetching = std::collections::VecDeque::new();
                let mut next = first;
                loop {
                    while next < windows.len() && fetching.len() <= plan.prefetch_windows {
                        let blocks = &windows[next];
                        let got = data.fetch_decoded(blocks, window, parse.clone(), &buffers);
                        fetching.push_back((next, got));
                        next += 1;
                    }
                    let Some((i, pending)) = fetching.pop_front() else {
                        return;
                    };
                    let salt = Self::window_salt(plan.epoch, i);
                    let r = pending
                        .wait()
                        .map_err(|e| data.not_found_is_bad_data(e))
                        .map(|blocks| {
                            let mut recs: Vec<_> = blocks.into_iter().flatten().collect();
                            let order = permutation(recs.len(), plan.seed, salt);
                            let mut slots: Vec<Option<StreamedRecord<T>>> =
                                recs.drain(..).map(Some).collect();
                            order
                                .into_iter()
                                .map(|j| slots[j].take().expect("a permutation"))
                                .collect::<Vec<_>>()
                        });
                    let failed = r.is_err();
                    // The consumer hung up (stream dropped): stop fetching.
                    if tx.send(r).is_err() || failed {
                        return;
                    }
                }
            })
            .map_err(|e| Error::io("starting the data thread", e))?;
        Ok(RankStream {
            rx,
            current: Vec::new().into_iter(),
            skip,
            _thread: handle,
        })
    }

    fn not_found_is_bad_data(&self, e: Error) -> Error {
        if e.is_not_found() {
            Error::Data(format!("{e} (listed in {}/{INDEX})", self.url()))
        } else {
            e
        }
    }

    /// Start fetching the blocks of one window, each verified, decompressed and parsed
    /// into its records as soon as it arrives (blocks side by side).
    fn fetch_decoded<T: Send + 'static>(
        self: &Arc<Self>,
        blocks: &[(u32, u32)],
        in_flight: usize,
        parse: Parse<T>,
        buffers: &BlockBuffers,
    ) -> crate::storage::Pending<Vec<Vec<StreamedRecord<T>>>> {
        let parts: Vec<(String, std::ops::Range<u64>)> = blocks
            .iter()
            .map(|&(s, b)| {
                let shard = &self.index.shards[s as usize];
                let blk = &shard.blocks[b as usize];
                (shard.name.clone(), blk.offset..blk.offset + blk.bytes)
            })
            .collect();
        let (data, ids, buffers) = (self.clone(), blocks.to_vec(), buffers.clone());
        let decode = move |i: usize, frame: bytes::Bytes| {
            let (s, b) = ids[i];
            Ok(data
                .decode_block(s, b, &frame, &buffers)?
                .into_iter()
                .map(|(line, location)| StreamedRecord {
                    parsed: parse(&line),
                    line,
                    location,
                })
                .collect())
        };
        self.store
            .spawn_get_ranges_then(parts, in_flight, Arc::new(decode))
    }

    /// The lines of one verified, decompressed block.
    fn decode_block(
        &self,
        s: u32,
        b: u32,
        frame: &bytes::Bytes,
        buffers: &BlockBuffers,
    ) -> Result<Vec<(bytes::Bytes, RecordLocation)>> {
        let shard = &self.index.shards[s as usize];
        let blk = &shard.blocks[b as usize];
        let what = format!(
            "{}/{} block {b} (bytes {}..{})",
            self.url(),
            shard.name,
            blk.offset,
            blk.offset + blk.bytes
        );
        let sum = hex::encode(Sha256::digest(frame));
        if sum != blk.sha256 {
            return Err(Error::Data(format!(
                "{what}: checksum mismatch (sha256 {sum}, index.json says {}): the shard is corrupt or was rewritten after its index",
                blk.sha256
            )));
        }
        let mut text = buffers.take();
        decode_block(frame, &what, &mut text)?;
        let text = buffers.share(text);
        let mut out = Vec::with_capacity(blk.samples as usize);
        let location = |n: usize| RecordLocation {
            shard: s,
            block: b,
            line: n as u32 + 1,
        };
        if self.is_tokens() {
            let ranges = tokens::split_samples(&text, self.index.records, self.id_bytes())
                .map_err(|e| Error::Data(format!("{what}: {e}")))?;
            for r in ranges {
                out.push((text.slice(r), location(out.len())));
            }
        } else {
            let mut start = 0;
            for i in memchr_iter(&text) {
                if i > start {
                    out.push((text.slice(start..i), location(out.len())));
                }
                start = i + 1;
            }
        }
        if out.len() as u64 != blk.samples {
            return Err(Error::Data(format!(
                "{what}: holds {} records, index.json says {}",
                out.len(),
                blk.samples
            )));
        }
        Ok(out)
    }

    /// Fetch every shard whole and drop the bytes (`in_flight` at a time, in 16 MiB
    /// ranges): the raw read speed a stream is compared with. Returns the bytes read.
    pub fn fetch_raw(&self, in_flight: usize) -> Result<u64> {
        const PART: u64 = 16 << 20;
        let parts: Vec<(String, std::ops::Range<u64>)> = self
            .index
            .shards
            .iter()
            .flat_map(|s| {
                (0..s.bytes.div_ceil(PART))
                    .map(move |i| (s.name.clone(), i * PART..((i + 1) * PART).min(s.bytes)))
            })
            .collect();
        let mut total = 0;
        // A window of parts at a time, so memory stays bounded like the stream's.
        for chunk in parts.chunks(in_flight.max(1)) {
            total += self
                .store
                .get_ranges(chunk, in_flight)?
                .iter()
                .map(|b| b.len() as u64)
                .sum::<u64>();
        }
        Ok(total)
    }

    /// `url/shard-00001.jsonl.zst block 3 line 17`, for error messages.
    pub fn describe(&self, l: RecordLocation) -> String {
        format!(
            "{}/{} block {} line {}",
            self.url(),
            self.index.shards[l.shard as usize].name,
            l.block,
            l.line
        )
    }
}

/// Decoded blocks' buffers, reused once every record of a block is dropped. A fresh
/// buffer per block (1 MiB) is a fresh mapping that the kernel zeroes and faults in,
/// then unmaps on whichever thread drops the last record (the consumer): `perf` of a
/// token stream put a third of its time in the kernel.
#[derive(Clone)]
struct BlockBuffers {
    free: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    /// At most this many buffers wait for reuse (those the stream holds at once).
    keep: usize,
}

/// A decoded block shared by its records: returns its buffer when the last is dropped.
struct PooledBlock {
    buf: Vec<u8>,
    pool: BlockBuffers,
}

impl AsRef<[u8]> for PooledBlock {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for PooledBlock {
    fn drop(&mut self) {
        let mut free = self.pool.free.lock().unwrap_or_else(|e| e.into_inner());
        if free.len() < self.pool.keep {
            free.push(std::mem::take(&mut self.buf));
        }
    }
}

impl BlockBuffers {
    fn new(keep: usize) -> Self {
        Self {
            free: Arc::default(),
            keep,
        }
    }

    fn take(&self) -> Vec<u8> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        free.pop().unwrap_or_default()
    }

    fn share(&self, buf: Vec<u8>) -> bytes::Bytes {
        bytes::Bytes::from_owner(PooledBlock {
            buf,
            pool: self.clone(),
        })
    }
}

/// Offsets of the newlines of `text`.
fn memchr_iter(text: &[u8]) -> impl Iterator<Item = usize> + '_ {
    text.iter()
        .enumerate()
        .filter(|(_, &c)| c == b'\n')
        .map(|(i, _)| i)
}

/// One rank's records of one epoch, fetched ahead by a background thread.
pub struct RankStream<T> {
    rx: Receiver<Result<Vec<StreamedRecord<T>>>>,
    current: std::vec::IntoIter<StreamedRecord<T>>,
    /// Records still to drop from the first window (a resume inside it).
    skip: usize,
    _thread: std::thread::JoinHandle<()>,
}

impl<T> RankStream<T> {
    /// The next record, or None at the end of this rank's share.
    pub fn next_record(&mut self) -> Result<Option<StreamedRecord<T>>> {
        loop {
            if let Some(r) = self.current.next() {
                return Ok(Some(r));
            }
            match self.rx.recv() {
                Ok(window) => {
                    let mut it = window?.into_iter();
                    for _ in 0..std::mem::take(&mut self.skip) {
                        it.next();
                    }
                    self.current = it;
                }
                Err(_) => return Ok(None),
            }
        }
    }

    /// Up to `n` records (fewer only at the end of the share).
    pub fn take(&mut self, n: usize) -> Result<Vec<StreamedRecord<T>>> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match self.next_record()? {
                Some(r) => out.push(r),
                None => break,
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blocks_buffer_is_reused_once_its_last_record_is_dropped() {
        let pool = BlockBuffers::new(1);
        let mut buf = pool.take();
        buf.extend_from_slice(b"abc\ndef\n");
        let ptr = buf.as_ptr();
        let block = pool.share(buf);
        let record = block.slice(0..3);
        drop(block);
        assert!(
            pool.free.lock().unwrap().is_empty(),
            "a record still reads it"
        );
        assert_eq!(&record[..], b"abc");
        drop(record);
        let again = pool.take();
        assert_eq!(again.as_ptr(), ptr);
        assert!(again.capacity() >= 8);
        // The pool keeps no more than the stream holds at once.
        drop((pool.share(vec![1]), pool.share(vec![2])));
        assert_eq!(pool.free.lock().unwrap().len(), 1);
    }
}
