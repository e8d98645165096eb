//! Sharded datasets: records in zstd-compressed JSON-lines shards plus `index.json`.
//!
//! A shard is a sequence of independent zstd frames ("blocks", about `block_bytes` of
//! JSON lines each), so the concatenation is an ordinary `.jsonl.zst` file that `zstd -dc`
//! reads, and a reader can fetch any block alone with one ranged GET. `index.json` lists
//! every shard and block with its sample count, byte range and sha256, plus the source
//! files; it is written last, so a half-written dataset has no index and is never read.
//! The output is a function of the input bytes and the options only (no timestamps,
//! single-threaded compression), so the same input gives byte-identical shards.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::reader::read_rows;
use super::records::{PreferenceRecord, Record, SftRecord};
use crate::error::{Error, Result};
use crate::storage::{is_url, Store};

pub const INDEX: &str = "index.json";
pub const FORMAT: &str = "janus-shards/v1";
pub const DEFAULT_SHARD_BYTES: u64 = 64 << 20;
pub const DEFAULT_BLOCK_BYTES: u64 = 1 << 20;
pub const DEFAULT_LEVEL: i32 = 3;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardIndex {
    pub format: String,
    /// `records`: one JSON record per line, as in the source files.
    pub content: String,
    /// Which records: `sft`, `preference`, or `mixed`.
    pub records: RecordKind,
    pub samples: u64,
    /// Compressed bytes of all shards.
    pub bytes: u64,
    pub uncompressed_bytes: u64,
    /// Shards hold text records, so no tokenizer or prompt format is baked in; the
    /// fields exist for token-id shards and are null here.
    pub tokenizer: Option<String>,
    pub prompt_format: Option<String>,
    pub sources: Vec<SourceFile>,
    pub shards: Vec<ShardEntry>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    Sft,
    Preference,
    Mixed,
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
    block: Vec<u8>,
    block_samples: u64,
    shard: Vec<u8>,
    entry: ShardEntry,
    done: Vec<ShardEntry>,
    uncompressed: u64,
}

impl<'a> ShardWriter<'a> {
    fn new(out: &'a Store, opts: &'a ShardOptions) -> Self {
        let mut w = Self {
            out,
            opts,
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
        w.entry.name = shard_name(0);
        w
    }

    fn push(&mut self, line: &[u8]) -> Result<()> {
        self.block.extend_from_slice(line);
        self.block.push(b'\n');
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
            name: shard_name(self.done.len() + 1),
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

fn shard_name(i: usize) -> String {
    format!("shard-{i:05}.jsonl.zst")
}

/// Turn the data files of `input` into shards + `index.json` under `output`.
/// `on_file` is told each source file's (name, records) as it is done.
pub fn write_shards(
    input: &str,
    output: &Store,
    opts: &ShardOptions,
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
    let mut writer = ShardWriter::new(output, opts);
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
        let (records, skipped) = shard_file(&local, name, opts, &mut writer, &mut kinds)?;
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
    let index = ShardIndex {
        format: FORMAT.into(),
        content: "records".into(),
        records: match kinds {
            (true, false) => RecordKind::Sft,
            (false, true) => RecordKind::Preference,
            _ => RecordKind::Mixed,
        },
        samples,
        bytes: shards.iter().map(|s| s.bytes).sum(),
        uncompressed_bytes,
        tokenizer: None,
        prompt_format: None,
        sources,
        shards,
    };
    let mut json = serde_json::to_vec_pretty(&index).expect("index serializes");
    json.push(b'\n');
    // Last: until the index exists, the dataset does not.
    output.put_bytes(INDEX, json)?;
    Ok(index)
}

/// Shard one local file; returns (records written, records skipped).
fn shard_file(
    path: &Path,
    name: &str,
    opts: &ShardOptions,
    writer: &mut ShardWriter,
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
                // serde_json writes object keys in sorted order: stable bytes.
                writer.push(&serde_json::to_vec(&v).expect("a JSON value serializes"))?;
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
    Ok((written, skipped))
}

/// Decode one block's bytes (already checked) into its lines.
pub fn decode_block(frame: &[u8], what: &str) -> Result<Vec<u8>> {
    zstd::stream::decode_all(frame).map_err(|e| Error::Data(format!("{what}: {e}")))
}
