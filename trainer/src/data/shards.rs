//! Sharded datasets: records in zstd-compressed JSON-lines shards plus `index.json`.
//!
//! A shard is a sequence of independent zstd frames ("blocks", about `block_bytes` of
//! JSON lines each), so the concatenation is an ordinary `.jsonl.zst` file that `zstd -dc`
//! reads, and a reader can fetch any block alone with one ranged GET. `index.json` lists
//! every shard and block with its sample count, byte range and sha256, plus the source
//! files; it is written last, so a half-written dataset has no index and is never read.
//! The output is a function of the input bytes and the options only (no timestamps,
//! single-threaded compression), so the same input gives byte-identical shards.
//!
//! With a tokenizer and a prompt format, the shards hold token ids and loss
//! boundaries instead of JSON (`content: tokens`, see `data::tokens`), and the index
//! names the tokenizer by the sha256 of its `tokenizer.json`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::reader::read_rows;
pub use super::records::RecordKind;
use super::records::{PreferenceRecord, Record, SftRecord};
use super::tokens::{self, TokenPair, TokenSeq};
use super::{PromptFormat, Tokenization};
use crate::config::Truncation;
use crate::error::{Error, Result};
use crate::storage::{is_url, Store};
use crate::tokenizer::Tokenizer;

pub const INDEX: &str = "index.json";
pub const FORMAT: &str = "janus-shards/v1";
pub const DEFAULT_SHARD_BYTES: u64 = 64 << 20;
pub const DEFAULT_BLOCK_BYTES: u64 = 1 << 20;
pub const DEFAULT_LEVEL: i32 = 3;
/// Per-sample lengths of a token dataset (`data::tokens`).
pub const LENGTHS: &str = "lengths.u32";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardIndex {
    pub format: String,
    /// `records`: one JSON record per line, as in the source files; `tokens`: token
    /// ids and loss boundaries (`data::tokens`).
    pub content: String,
    /// Which records: `sft`, `preference`, or `mixed`.
    pub records: RecordKind,
    pub samples: u64,
    /// Compressed bytes of all shards.
    pub bytes: u64,
    pub uncompressed_bytes: u64,
    /// Token shards: sha256 of the `tokenizer.json` that made them, and the prompt
    /// format; null for record shards (no tokenizer is baked in).
    pub tokenizer: Option<String>,
    pub prompt_format: Option<String>,
    pub sources: Vec<SourceFile>,
    pub shards: Vec<ShardEntry>,
    /// How token shards store their ids (absent for record shards).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<TokenInfo>,
}

pub const RECORDS: &str = "records";
pub const TOKENS: &str = "tokens";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenInfo {
    /// Bytes per id (2 or 4, little-endian).
    pub id_bytes: u32,
    pub vocab_size: u64,
    pub bos_id: i64,
    pub eos_id: i64,
    /// The tokenizer file as `janus data shard --tokenizer` was given it.
    pub tokenizer_file: String,
    /// Every sample's (prompt, response) token counts, `u32` little-endian, in index
    /// order: what packing and the step count are planned from.
    pub lengths: ObjectEntry,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObjectEntry {
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceFile {
    pub path: String,
    pub records: u64,
    pub skipped: u64,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardEntry {
    pub name: String,
    pub samples: u64,
    pub bytes: u64,
    pub sha256: String,
    pub blocks: Vec<BlockEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockEntry {
    pub offset: u64,
    pub bytes: u64,
    pub samples: u64,
    pub sha256: String,
}

impl ShardIndex {
    /// Parse and sanity-check an index (`what` names it in errors).
    pub fn parse(bytes: &[u8], what: &str) -> Result<Self> {
        let index: ShardIndex = serde_json::from_slice(bytes)
            .map_err(|e| Error::Data(format!("{what}: not a shard index: {e}")))?;
        if index.format != FORMAT {
            return Err(Error::Data(format!(
                "{what}: format `{}`, this trainer reads `{FORMAT}`",
                index.format
            )));
        }
        match (index.content.as_str(), &index.tokens) {
            (RECORDS, None) => {}
            (TOKENS, Some(t)) if [2, 4].contains(&t.id_bytes) => {
                if index.tokenizer.is_none() || index.prompt_format.is_none() {
                    return Err(Error::Data(format!(
                        "{what}: token shards without `tokenizer` or `prompt_format`"
                    )));
                }
                if index.records == RecordKind::Mixed {
                    return Err(Error::Data(format!(
                        "{what}: token shards hold one kind of record, this index says mixed"
                    )));
                }
            }
            (TOKENS, _) => {
                return Err(Error::Data(format!(
                    "{what}: token shards need a `tokens` entry with id_bytes 2 or 4"
                )))
            }
            (other, _) => {
                return Err(Error::Data(format!(
                    "{what}: content `{other}`, expected `{RECORDS}` or `{TOKENS}`"
                )))
            }
        }
        for s in &index.shards {
            let (samples, bytes) = s
                .blocks
                .iter()
                .fold((0, 0), |(n, b), blk| (n + blk.samples, b + blk.bytes));
            if samples != s.samples || bytes != s.bytes {
                return Err(Error::Data(format!(
                    "{what}: shard {} lists {} samples / {} bytes but its blocks add up to {samples} / {bytes}",
                    s.name, s.samples, s.bytes
                )));
            }
        }
        Ok(index)
    }
}

/// How `janus data shard` cuts its output.
#[derive(Debug, Clone)]
pub struct ShardOptions {
    /// Start a new shard once a shard's compressed size reaches this.
    pub shard_bytes: u64,
    /// Close a block (one zstd frame) once its uncompressed JSON lines reach this.
    pub block_bytes: u64,
    pub level: i32,
    pub skip_bad_records: bool,
}

impl Default for ShardOptions {
    fn default() -> Self {
        Self {
            shard_bytes: DEFAULT_SHARD_BYTES,
            block_bytes: DEFAULT_BLOCK_BYTES,
            level: DEFAULT_LEVEL,
            skip_bad_records: false,
        }
    }
}

/// Data files named by `input`: a file, a directory, or a URL of either (every
/// `.jsonl`, `.ndjson`, `.json`, `.parquet` object directly below it), sorted by name.
pub fn input_files(input: &str, retry: std::time::Duration) -> Result<Vec<(String, InputFile)>> {
    let is_data = |n: &str| {
        [".jsonl", ".ndjson", ".json", ".parquet"]
            .iter()
            .any(|e| n.ends_with(e))
    };
    if !is_url(input) {
        let p = PathBuf::from(input);
        if p.is_dir() {
            let mut names: Vec<String> = std::fs::read_dir(&p)
                .map_err(|e| Error::io(input.to_string(), e))?
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| is_data(n))
                .collect();
            names.sort();
            return Ok(names
                .into_iter()
                .map(|n| (n.clone(), InputFile::Local(p.join(&n))))
                .collect());
        }
        if !p.exists() {
            return Err(Error::Data(format!("{input}: no such file or directory")));
        }
        let name = p.file_name().map(|n| n.to_string_lossy().to_string());
        return Ok(vec![(name.unwrap_or_default(), InputFile::Local(p))]);
    }
    if is_data(input) {
        let (dir, name) = input.rsplit_once('/').expect("a URL has a /");
        let store = Store::open(dir, retry)?;
        if !store.exists(name)? {
            return Err(Error::Data(format!("{input}: no such object")));
        }
        return Ok(vec![(
            name.to_string(),
            InputFile::Remote(store, name.into()),
        )]);
    }
    let store = Store::open(input, retry)?;
    let files: Vec<_> = store
        .list_objects("")?
        .into_iter()
        .filter(|(n, _)| is_data(n))
        .map(|(n, _)| (n.clone(), InputFile::Remote(store.clone(), n)))
        .collect();
    if files.is_empty() {
        return Err(Error::Data(format!(
            "{input}: no .jsonl, .json or .parquet objects there"
        )));
    }
    Ok(files)
}

pub enum InputFile {
    Local(PathBuf),
    Remote(Store, String),
}

/// Which record type a JSON object is (preference first: it also has a prompt).
fn classify(v: &Value) -> std::result::Result<RecordKind, String> {
    let pref = serde_json::from_value::<PreferenceRecord>(v.clone()).map_err(|e| e.to_string());
    if let Ok(r) = &pref {
        r.check()?;
        return Ok(RecordKind::Preference);
    }
    match serde_json::from_value::<SftRecord>(v.clone()) {
        Ok(r) => {
            r.check()?;
            Ok(RecordKind::Sft)
        }
        Err(sft) => Err(format!(
            "neither an SFT record ({sft}) nor a preference record ({})",
            pref.err().unwrap_or_default()
        )),
    }
}

/// Writes blocks into shards and shards into the output store.
struct ShardWriter<'a> {
    out: &'a Store,
    opts: &'a ShardOptions,
    /// Shard file suffix: `jsonl.zst` or `tokens.zst`.
    ext: &'static str,
    block: Vec<u8>,
    block_samples: u64,
    shard: Vec<u8>,
    entry: ShardEntry,
    done: Vec<ShardEntry>,
    uncompressed: u64,
}

impl<'a> ShardWriter<'a> {
    fn new(out: &'a Store, opts: &'a ShardOptions, ext: &'static str) -> Self {
        let mut w = Self {
            out,
            opts,
            ext,
            block: Vec::new(),
            block_samples: 0,
            shard: Vec::new(),
            entry: ShardEntry {
                name: String::new(),
                samples: 0,
                bytes: 0,
                sha256: String::new(),
                blocks: vec![],
            },
            done: vec![],
            uncompressed: 0,
        };
        w.entry.name = shard_name(0, ext);
        w
    }

    fn push(&mut self, line: &[u8]) -> Result<()> {
        self.block.extend_from_slice(line);
        self.block.push(b'\n');
        self.sample_done()
    }

    /// A sample already appended to `self.block` (token shards write in place).
    fn sample_done(&mut self) -> Result<()> {
        self.block_samples += 1;
        if self.block.len() as u64 >= self.opts.block_bytes {
            self.close_block()?;
        }
        Ok(())
    }

    fn close_block(&mut self) -> Result<()> {
        if self.block_samples == 0 {
            return Ok(());
        }
        let frame = zstd::bulk::compress(&self.block, self.opts.level)
            .map_err(|e| Error::io("zstd compression", e))?;
        self.uncompressed += self.block.len() as u64;
        self.entry.blocks.push(BlockEntry {
            offset: self.shard.len() as u64,
            bytes: frame.len() as u64,
            samples: self.block_samples,
            sha256: hex::encode(Sha256::digest(&frame)),
        });
        self.entry.samples += self.block_samples;
        self.shard.extend_from_slice(&frame);
        self.block.clear();
        self.block_samples = 0;
        if self.shard.len() as u64 >= self.opts.shard_bytes {
            self.close_shard()?;
        }
        Ok(())
    }

    fn close_shard(&mut self) -> Result<()> {
        if self.entry.samples == 0 {
            return Ok(());
        }
        let bytes = std::mem::take(&mut self.shard);
        self.entry.bytes = bytes.len() as u64;
        self.entry.sha256 = hex::encode(Sha256::digest(&bytes));
        self.out.put_bytes(&self.entry.name, bytes)?;
        let next = ShardEntry {
            name: shard_name(self.done.len() + 1, self.ext),
            samples: 0,
            bytes: 0,
            sha256: String::new(),
            blocks: vec![],
        };
        self.done.push(std::mem::replace(&mut self.entry, next));
        Ok(())
    }

    fn finish(mut self) -> Result<(Vec<ShardEntry>, u64)> {
        self.close_block()?;
        self.close_shard()?;
        Ok((self.done, self.uncompressed))
    }
}

fn shard_name(i: usize, ext: &str) -> String {
    format!("shard-{i:05}.{ext}")
}

/// What token shards are made with.
pub struct TokenSpec<'a> {
    pub tokenizer: &'a Tokenizer,
    /// The tokenizer file as the user named it (recorded in the index).
    pub tokenizer_file: String,
    pub format: PromptFormat,
}

/// Tokenises records (in parallel, in order) and appends them to the shards; keeps
/// the lengths table.
struct TokenSink<'a> {
    spec: &'a TokenSpec<'a>,
    id_bytes: u32,
    lengths: Vec<u32>,
    /// Records of the current batch, with their locations.
    pending: Vec<(String, Value, RecordKind)>,
}

/// Records tokenised together (across the cores).
const TOKENIZE_BATCH: usize = 2048;

enum Tokenised {
    Sft(TokenSeq),
    Pair(TokenPair),
}

impl TokenSink<'_> {
    fn tokenise_one(
        t: &Tokenization,
        v: Value,
        kind: RecordKind,
    ) -> std::result::Result<Tokenised, String> {
        let seq = |(prompt, response): (Vec<i64>, Vec<i64>)| TokenSeq { prompt, response };
        let err = |e: Error| e.to_string();
        Ok(match kind {
            RecordKind::Sft => {
                let r: SftRecord = serde_json::from_value(v).map_err(|e| e.to_string())?;
                Tokenised::Sft(seq(t
                    .encode(&r.system, &r.prompt, &r.output)
                    .map_err(err)?))
            }
            _ => {
                let r: PreferenceRecord = serde_json::from_value(v).map_err(|e| e.to_string())?;
                Tokenised::Pair(TokenPair {
                    chosen: seq(t.encode(&r.system, &r.prompt, &r.chosen).map_err(err)?),
                    rejected: seq(t.encode(&r.system, &r.prompt, &r.rejected).map_err(err)?),
                    margin: r.margin.unwrap_or(0.0),
                })
            }
        })
    }

    fn flush(&mut self, writer: &mut ShardWriter) -> Result<()> {
        let pending = std::mem::take(&mut self.pending);
        let t = Tokenization {
            tok: self.spec.tokenizer,
            format: self.spec.format,
            max_len: usize::MAX,
            policy: Truncation::TruncateResponse,
            min_response: 0,
            ending: super::Ending::Eos,
        };
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let per = pending.len().div_ceil(threads).max(1);
        let mut chunks: Vec<Vec<(String, Value, RecordKind)>> = Vec::new();
        let mut it = pending.into_iter().peekable();
        while it.peek().is_some() {
            chunks.push(it.by_ref().take(per).collect());
        }
        let done: Vec<Vec<(String, std::result::Result<Tokenised, String>)>> =
            std::thread::scope(|scope| {
                let handles: Vec<_> = chunks
                    .into_iter()
                    .map(|chunk| {
                        let t = &t;
                        scope.spawn(move || {
                            chunk
                                .into_iter()
                                .map(|(loc, v, kind)| (loc, Self::tokenise_one(t, v, kind)))
                                .collect()
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("tokenise thread"))
                    .collect()
            });
        for (location, r) in done.into_iter().flatten() {
            let r = r.map_err(|e| Error::Data(format!("{location}: {e}")))?;
            let len = |s: &TokenSeq| [s.prompt.len() as u32, s.response.len() as u32];
            match &r {
                Tokenised::Sft(s) => {
                    self.lengths.extend(len(s));
                    tokens::put_sft(&mut writer.block, s, self.id_bytes);
                }
                Tokenised::Pair(p) => {
                    self.lengths.extend(len(&p.chosen));
                    self.lengths.extend(len(&p.rejected));
                    tokens::put_pair(&mut writer.block, p, self.id_bytes);
                }
            }
            writer.sample_done()?;
        }
        Ok(())
    }
}

/// Turn the data files of `input` into shards + `index.json` under `output`.
/// `on_file` is told each source file's (name, records) as it is done.
pub fn write_shards(
    input: &str,
    output: &Store,
    opts: &ShardOptions,
    retry: std::time::Duration,
    on_file: impl FnMut(&str, u64),
) -> Result<ShardIndex> {
    write_dataset(input, output, opts, None, retry, on_file)
}

/// Like `write_shards`, but the shards hold the records' token ids and loss
/// boundaries as `spec` tokenises them (`data::tokens`).
pub fn write_token_shards(
    input: &str,
    output: &Store,
    opts: &ShardOptions,
    spec: &TokenSpec,
    retry: std::time::Duration,
    on_file: impl FnMut(&str, u64),
) -> Result<ShardIndex> {
    write_dataset(input, output, opts, Some(spec), retry, on_file)
}

fn write_dataset(
    input: &str,
    output: &Store,
    opts: &ShardOptions,
    spec: Option<&TokenSpec>,
    retry: std::time::Duration,
    mut on_file: impl FnMut(&str, u64),
) -> Result<ShardIndex> {
    if output.exists(INDEX)? {
        return Err(Error::Config(format!(
            "{}/{INDEX} exists: refusing to overwrite a dataset (choose a new --output)",
            output.url()
        )));
    }
    let files = input_files(input, retry)?;
    if files.is_empty() {
        return Err(Error::Data(format!("{input}: no data files")));
    }
    let scratch = crate::checkpoint::staging_dir("janus-shard-")?;
    let mut writer = ShardWriter::new(
        output,
        opts,
        if spec.is_some() {
            "tokens.zst"
        } else {
            "jsonl.zst"
        },
    );
    let mut sink = spec.map(|spec| TokenSink {
        spec,
        id_bytes: tokens::id_bytes_for(spec.tokenizer.vocab_size()),
        lengths: Vec::new(),
        pending: Vec::new(),
    });
    let mut sources = Vec::with_capacity(files.len());
    let mut kinds = (false, false);
    for (i, (name, file)) in files.iter().enumerate() {
        let local: PathBuf = match file {
            InputFile::Local(p) => p.clone(),
            InputFile::Remote(store, rel) => {
                let p = scratch.path().join(format!("{i}-{rel}"));
                store.get_file(rel, &p)?;
                p
            }
        };
        let (records, skipped) =
            shard_file(&local, name, opts, &mut writer, sink.as_mut(), &mut kinds)?;
        let bytes = std::fs::read(&local).map_err(|e| Error::io(name.clone(), e))?;
        sources.push(SourceFile {
            path: name.clone(),
            records,
            skipped,
            bytes: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(&bytes)),
        });
        if matches!(file, InputFile::Remote(..)) {
            let _ = std::fs::remove_file(&local);
        }
        on_file(name, records);
    }
    let (shards, uncompressed_bytes) = writer.finish()?;
    let samples = shards.iter().map(|s| s.samples).sum();
    if samples == 0 {
        return Err(Error::Data(format!("{input}: no usable records")));
    }
    let tokens = match (&sink, spec) {
        (Some(sink), Some(spec)) => {
            let bytes: Vec<u8> = sink.lengths.iter().flat_map(|l| l.to_le_bytes()).collect();
            let entry = ObjectEntry {
                name: LENGTHS.into(),
                bytes: bytes.len() as u64,
                sha256: hex::encode(Sha256::digest(&bytes)),
            };
            output.put_bytes(LENGTHS, bytes)?;
            Some(TokenInfo {
                id_bytes: sink.id_bytes,
                vocab_size: spec.tokenizer.vocab_size() as u64,
                bos_id: spec.tokenizer.bos_id,
                eos_id: spec.tokenizer.eos_id,
                tokenizer_file: spec.tokenizer_file.clone(),
                lengths: entry,
            })
        }
        _ => None,
    };
    let index = ShardIndex {
        format: FORMAT.into(),
        content: if tokens.is_some() { TOKENS } else { RECORDS }.into(),
        records: match kinds {
            (true, false) => RecordKind::Sft,
            (false, true) => RecordKind::Preference,
            _ => RecordKind::Mixed,
        },
        samples,
        bytes: shards.iter().map(|s| s.bytes).sum(),
        uncompressed_bytes,
        tokenizer: spec.map(|s| s.tokenizer.identity.clone()),
        prompt_format: spec.map(|s| format_name(s.format)),
        sources,
        shards,
        tokens,
    };
    let mut json = serde_json::to_vec_pretty(&index).expect("index serializes");
    json.push(b'\n');
    // Last: until the index exists, the dataset does not.
    output.put_bytes(INDEX, json)?;
    Ok(index)
}

/// The name of a prompt format in configs and indexes (`mistral`, `chatml`).
pub fn format_name(f: PromptFormat) -> String {
    serde_json::to_value(f)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .expect("a prompt format serializes as a string")
}

/// Shard one local file; returns (records written, records skipped).
fn shard_file(
    path: &Path,
    name: &str,
    opts: &ShardOptions,
    writer: &mut ShardWriter,
    mut sink: Option<&mut TokenSink>,
    kinds: &mut (bool, bool),
) -> Result<(u64, u64)> {
    let (mut written, mut skipped) = (0, 0);
    for row in read_rows(path)? {
        // Name the file as the user gave it, not a download's scratch path.
        let location = row.location.replacen(&path.display().to_string(), name, 1);
        let checked = row.value.and_then(|v| {
            let kind = classify(&v)?;
            Ok((v, kind))
        });
        match checked {
            Ok((v, kind)) => {
                match kind {
                    RecordKind::Sft => kinds.0 = true,
                    _ => kinds.1 = true,
                }
                match sink.as_deref_mut() {
                    Some(sink) => {
                        if kinds.0 && kinds.1 {
                            return Err(Error::Data(format!(
                                "{location}: a {} record among {} records: token shards hold one kind (shard SFT and preference data apart)",
                                if kind == RecordKind::Sft { "SFT" } else { "preference" },
                                if kind == RecordKind::Sft { "preference" } else { "SFT" },
                            )));
                        }
                        sink.pending.push((location, v, kind));
                        if sink.pending.len() >= TOKENIZE_BATCH {
                            sink.flush(writer)?;
                        }
                    }
                    // serde_json writes object keys in sorted order: stable bytes.
                    None => {
                        writer.push(&serde_json::to_vec(&v).expect("a JSON value serializes"))?
                    }
                }
                written += 1;
            }
            Err(e) if opts.skip_bad_records => {
                skipped += 1;
                tracing::warn!(%location, error = %e, "skipping bad record");
            }
            Err(e) => {
                return Err(Error::Data(format!(
                    "{location}: {e} (--skip-bad-records skips bad records)"
                )))
            }
        }
    }
    if let Some(sink) = sink {
        sink.flush(writer)?;
    }
    Ok((written, skipped))
}

/// Decode one block's bytes (already checked) into `out`, cleared first so its
/// capacity is reused. The writer's frames record their decoded size, so `out` grows at
/// most once, to that size; a frame without it (or claiming more than a block can
/// hold) is decoded as a stream.
pub fn decode_block(frame: &[u8], what: &str, out: &mut Vec<u8>) -> Result<()> {
    out.clear();
    let err = |e: std::io::Error| Error::Data(format!("{what}: {e}"));
    match zstd::zstd_safe::get_frame_content_size(frame) {
        Ok(Some(n)) if n <= MAX_BLOCK_DECODED => {
            out.reserve(n as usize);
            zstd::bulk::Decompressor::new()
                .and_then(|mut d| d.decompress_to_buffer(frame, out))
                .map_err(err)?;
        }
        _ => zstd::stream::copy_decode(frame, &mut *out).map_err(err)?,
    }
    Ok(())
}

/// The largest decoded block `decode_block` allocates up front (blocks are
/// `--block-size`, 1 MiB by default).
const MAX_BLOCK_DECODED: u64 = 1 << 30;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_decode_into_a_reused_buffer_with_or_without_their_size_in_the_frame() {
        let text: Vec<u8> = (0..50_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        // Ours (bulk: the frame records its size) and a streamed frame (it does not).
        let sized = zstd::bulk::compress(&text, DEFAULT_LEVEL).unwrap();
        let mut streamed = zstd::stream::Encoder::new(Vec::new(), DEFAULT_LEVEL).unwrap();
        std::io::Write::write_all(&mut streamed, &text).unwrap();
        let streamed = streamed.finish().unwrap();
        assert_eq!(
            zstd::zstd_safe::get_frame_content_size(&streamed).unwrap(),
            None
        );
        let mut out = b"left over from the last block".to_vec();
        decode_block(&sized, "a", &mut out).unwrap();
        assert_eq!(out, text);
        let ptr = out.as_ptr();
        decode_block(&streamed, "b", &mut out).unwrap();
        assert_eq!(out, text);
        assert_eq!(out.as_ptr(), ptr, "the buffer is reused, not reallocated");
        let e = decode_block(&sized[..sized.len() - 4], "shard-00000 block 3", &mut out);
        assert!(e.unwrap_err().to_string().contains("shard-00000 block 3"));
    }
}
