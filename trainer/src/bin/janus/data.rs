//! `janus data shard`, `janus data stream` and `janus data inspect`; `janus data
//! synthesize` lives in its own module.

use std::io::Write;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use janus::data::shards::{self, RecordKind, ShardOptions, TokenSpec};
use janus::data::stream::{parse_json, parse_json_sonic, Parse, ShardedData, StreamPlan};
use janus::data::tokens::{PairIds, SeqIds, TokenSeq};
use janus::data::{PreferenceRecord, PromptFormat, SftRecord};
use janus::storage::Store;
use janus::{Error, Result};
use serde::de::{DeserializeOwned, IgnoredAny};
use serde_json::Value;

#[derive(Subcommand)]
pub enum DataCommand {
    /// Turn Multifaceted Collection records (JSONL/JSON/Parquet: a file, a directory or a
    /// URL of either) into compressed shards + index.json at --output (a path or URL).
    /// The same input gives byte-identical shards.
    Shard(ShardArgs),
    /// Stream one rank's records of a sharded dataset in training order: JSON lines on
    /// stdout, or with --stats only a throughput line (samples/s, MB/s, peak RSS).
    Stream(StreamArgs),
    /// Synthesize Multifaceted-Collection-style data from instructions through an
    /// OpenAI-compatible endpoint: preference sets, system messages, gold answers,
    /// rubrics and preference pairs, each stage resumable (`--stage` picks some).
    Synthesize(crate::synthesize::SynthesizeArgs),
    /// Show how a training config formats and tokenises its first records: the token
    /// ids and pieces, and which take loss (a `|` marks where the response starts).
    Inspect {
        /// Config file (as for `train`).
        #[arg(long, env = "JANUS_CONFIG")]
        config: Option<std::path::PathBuf>,
        #[arg(long)]
        preset: Option<String>,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Records to show.
        #[arg(short = 'n', long, default_value_t = 3)]
        records: usize,
        /// One JSON object per sequence instead of the text view.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub struct ShardArgs {
    #[arg(long)]
    input: String,
    #[arg(long)]
    output: String,
    /// Start a new shard at this compressed size (B, KiB, MiB, GiB).
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    shard_size: u64,
    /// Uncompressed records per block, the unit a rank fetches and shuffles.
    #[arg(long, default_value = "1MiB", value_parser = parse_size)]
    block_size: u64,
    /// zstd level.
    #[arg(long, default_value_t = shards::DEFAULT_LEVEL)]
    level: i32,
    /// Skip malformed records (counted in index.json) instead of failing.
    #[arg(long)]
    skip_bad_records: bool,
    /// Write token ids and loss boundaries instead of records, tokenised with this
    /// tokenizer.json as training tokenises them (the joint text); a run checks
    /// that its tokenizer is this one (sha256) before it starts.
    #[arg(long, requires = "prompt_format")]
    tokenizer: Option<std::path::PathBuf>,
    /// Prompt format of the token shards (mistral, chatml): must equal the job's
    /// data.prompt_format.
    #[arg(long, requires = "tokenizer", value_parser = parse_format)]
    prompt_format: Option<PromptFormat>,
    /// Seconds a request to object storage is retried.
    #[arg(long, default_value_t = 180)]
    retry_timeout_seconds: u64,
}

#[derive(Args)]
pub struct StreamArgs {
    #[arg(long)]
    dataset: String,
    #[arg(long, default_value_t = 0)]
    rank: usize,
    #[arg(long, default_value_t = 1)]
    world: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[arg(long, default_value_t = 0)]
    epoch: u64,
    /// Start at this record of the rank's share (as a resume does).
    #[arg(long, default_value_t = 0)]
    start: u64,
    #[arg(long, default_value_t = 4)]
    window_blocks: usize,
    #[arg(long, default_value_t = 2)]
    prefetch_windows: usize,
    #[arg(long)]
    stats: bool,
    /// Baseline for --stats: fetch the same shard bytes whole, without checking,
    /// decompressing or parsing them.
    #[arg(long, requires = "stats")]
    raw: bool,
    /// JSON parser of record shards for --stats (the trainer uses serde-json).
    #[arg(long, value_enum, default_value = "serde-json")]
    parser: Parser,
    #[arg(long, default_value_t = 180)]
    retry_timeout_seconds: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Parser {
    /// sonic-rs (SIMD), the comparison.
    Sonic,
    /// serde_json, what training uses.
    SerdeJson,
}

fn parse_format(s: &str) -> std::result::Result<PromptFormat, String> {
    serde_json::from_value(Value::String(s.to_string()))
        .map_err(|_| format!("unknown prompt format `{s}` (mistral, chatml)"))
}

pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("`{s}` is not a size"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        other => return Err(format!("unknown size unit `{other}` (B, KiB, MiB, GiB)")),
    };
    match n * mult {
        0 => Err("size must be > 0".into()),
        v => Ok(v),
    }
}

/// Read a stream to its end (writing each record's line, as `show` renders it, to
/// `out`, if given, until it closes); returns the records read. A record that does not
/// parse is an error naming it.
fn drain<T: Send + 'static>(
    stream: Result<janus::data::stream::RankStream<T>>,
    data: &ShardedData,
    mut out: Option<&mut dyn Write>,
    show: impl Fn(&[u8], &T) -> Vec<u8>,
) -> Result<u64> {
    let mut stream = stream?;
    let mut n = 0;
    while let Some(r) = stream.next_record()? {
        let t = r
            .parsed
            .map_err(|e| Error::Data(format!("{}: {e}", data.describe(r.location))))?;
        n += 1;
        if let Some(w) = out.as_mut() {
            if w.write_all(&show(&r.line, &t))
                .and_then(|_| w.write_all(b"\n"))
                .is_err()
            {
                break; // stdout closed (e.g. `| head`)
            }
        }
    }
    Ok(n)
}

fn records<T: DeserializeOwned + Send + 'static>(
    data: &ShardedData,
    plan: StreamPlan,
    start: u64,
    parser: Parser,
) -> Result<u64> {
    let parse: Parse<T> = match parser {
        Parser::Sonic => std::sync::Arc::new(parse_json_sonic::<T>),
        Parser::SerdeJson => std::sync::Arc::new(parse_json::<T>),
    };
    drain(data.stream_with(plan, start, parse), data, None, |_, _| {
        Vec::new()
    })
}

fn seq_json(s: &TokenSeq) -> Value {
    serde_json::json!({"prompt": s.prompt, "response": s.response})
}

/// A token-shard stream: samples as JSON lines (`{"prompt": [ids], "response": [ids]}`,
/// or chosen/rejected/margin for pairs) to `out`, or only counted.
fn token_samples(
    data: &ShardedData,
    plan: StreamPlan,
    start: u64,
    out: Option<&mut dyn Write>,
) -> Result<u64> {
    match data.index.records {
        RecordKind::Sft => drain(
            data.stream_token_seqs(plan, start),
            data,
            out,
            |_, s: &SeqIds| seq_json(&s.widen()).to_string().into_bytes(),
        ),
        _ => drain(
            data.stream_token_pairs(plan, start),
            data,
            out,
            |_, p: &PairIds| {
                let p = p.widen();
                serde_json::json!({"chosen": seq_json(&p.chosen), "rejected": seq_json(&p.rejected), "margin": p.margin})
                    .to_string()
                    .into_bytes()
            },
        ),
    }
}

pub fn run(cmd: DataCommand, terminal: bool) -> Result<()> {
    match cmd {
        DataCommand::Inspect {
            config,
            preset,
            overrides,
            records,
            json,
        } => inspect(config, preset, overrides, records, json),
        DataCommand::Shard(a) => shard(a, terminal),
        DataCommand::Stream(a) => stream(a),
        DataCommand::Synthesize(a) => crate::synthesize::run(a, terminal),
    }
}

fn shard(a: ShardArgs, terminal: bool) -> Result<()> {
    let ShardArgs {
        input,
        output,
        shard_size,
        block_size,
        level,
        skip_bad_records,
        tokenizer,
        prompt_format,
        retry_timeout_seconds,
    } = a;
    let retry = Duration::from_secs(retry_timeout_seconds);
    let tok = match &tokenizer {
        Some(p) => Some(janus::tokenizer::Tokenizer::from_file(p)?),
        None => None,
    };
    let opts = ShardOptions {
        shard_bytes: shard_size,
        block_bytes: block_size.min(shard_size),
        level,
        skip_bad_records,
    };
    let out = Store::open(&output, retry)?;
    let bar = terminal.then(|| {
        let b = ProgressBar::new_spinner();
        b.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {pos} files {msg}")
                .expect("valid template"),
        );
        b.enable_steady_tick(Duration::from_millis(200));
        b
    });
    let t = Instant::now();
    let mut records = 0u64;
    let on_file = |name: &str, n: u64| {
        records += n;
        match &bar {
            Some(b) => {
                b.inc(1);
                b.set_message(format!("{records} records, last {name}"));
            }
            None => tracing::info!(file = name, records = n, "sharded"),
        }
    };
    let index = match (&tok, prompt_format) {
        (Some(t), Some(format)) => {
            let spec = TokenSpec {
                tokenizer: t,
                tokenizer_file: tokenizer
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                format,
            };
            shards::write_token_shards(&input, &out, &opts, &spec, retry, on_file)?
        }
        _ => shards::write_shards(&input, &out, &opts, retry, on_file)?,
    };
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let line = serde_json::json!({
        "output": out.url(),
        "shards": index.shards.len(),
        "blocks": index.shards.iter().map(|s| s.blocks.len()).sum::<usize>(),
        "samples": index.samples,
        "bytes": index.bytes,
        "uncompressed_bytes": index.uncompressed_bytes,
        "records": index.records,
        "content": index.content,
        "seconds": t.elapsed().as_secs_f64(),
    });
    println!("{line}");
    Ok(())
}

fn stream(a: StreamArgs) -> Result<()> {
    let StreamArgs {
        dataset,
        rank,
        world,
        seed,
        epoch,
        start,
        window_blocks,
        prefetch_windows,
        stats,
        raw,
        parser,
        retry_timeout_seconds,
    } = a;
    if world == 0 || rank >= world {
        return Err(Error::Config(format!(
            "--rank {rank} --world {world}: need 0 <= rank < world"
        )));
    }
    let data = ShardedData::open(&dataset, Duration::from_secs(retry_timeout_seconds))?;
    let plan = StreamPlan {
        seed,
        epoch,
        rank,
        world,
        window_blocks,
        prefetch_windows,
    };
    let t = Instant::now();
    if raw {
        let bytes = data.fetch_raw(window_blocks)?;
        let secs = t.elapsed().as_secs_f64();
        println!(
            "{}",
            serde_json::json!({
                "dataset": data.url(), "raw": true, "bytes": bytes, "seconds": secs,
                "mb_per_second": bytes as f64 / secs / 1e6,
                "peak_rss_mib": crate::bench::peak_rss_mib(),
            })
        );
        return Ok(());
    }
    // What a trainer gets: records parsed as the dataset's type; or the lines.
    let n = match (stats, data.is_tokens(), data.index.records) {
        (true, true, _) => token_samples(&data, plan, start, None)?,
        (true, false, RecordKind::Sft) => records::<SftRecord>(&data, plan, start, parser)?,
        (true, false, RecordKind::Preference) => {
            records::<PreferenceRecord>(&data, plan, start, parser)?
        }
        (true, false, RecordKind::Mixed) => records::<Value>(&data, plan, start, parser)?,
        (false, tokens, _) => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let n = if tokens {
                token_samples(&data, plan, start, Some(&mut out))?
            } else {
                drain(
                    data.stream::<IgnoredAny>(plan, start),
                    &data,
                    Some(&mut out),
                    |line, _| line.to_vec(),
                )?
            };
            let _ = out.flush();
            n
        }
    };
    if stats {
        let secs = t.elapsed().as_secs_f64();
        // Bytes fetched (compressed, as stored: what `cat` of the shards reads)
        // and the JSON they decode to.
        let fetched = data.rank_bytes(seed, epoch, rank, world);
        let decoded =
            data.index.uncompressed_bytes as f64 * n as f64 / data.index.samples.max(1) as f64;
        println!(
            "{}",
            serde_json::json!({
                "dataset": data.url(), "rank": rank, "world": world, "samples": n,
                "bytes": fetched, "seconds": secs,
                "samples_per_second": n as f64 / secs,
                "mb_per_second": fetched as f64 / secs / 1e6,
                "decoded_mb_per_second": decoded / secs / 1e6,
                "content": data.index.content,
                "parser": if data.is_tokens() { "tokens" } else if parser == Parser::Sonic { "sonic-rs" } else { "serde_json" },
                "peak_rss_mib": crate::bench::peak_rss_mib(),
            })
        );
    }
    Ok(())
}

fn inspect(
    config: Option<std::path::PathBuf>,
    preset: Option<String>,
    overrides: Vec<String>,
    records: usize,
    json: bool,
) -> Result<()> {
    let cfg =
        janus::config::TrainConfig::resolve(preset.as_deref(), config.as_deref(), &overrides)?;
    let tok_path = cfg
        .model
        .tokenizer
        .clone()
        .unwrap_or_else(|| cfg.model.path.join("tokenizer.json"));
    if janus::storage::is_url(&tok_path.to_string_lossy()) {
        return Err(Error::Config(format!(
            "{}: `data inspect` reads a local tokenizer; set model.tokenizer to a local tokenizer.json",
            tok_path.display()
        )));
    }
    let tok = janus::tokenizer::Tokenizer::from_file(&tok_path)?;
    let seqs = janus::data::inspect::inspect(&cfg, &tok, records)?;
    let mut out = std::io::stdout().lock();
    for s in &seqs {
        let line = if json {
            serde_json::to_string(s).expect("serializes")
        } else {
            render(s, &tok)
        };
        if writeln!(out, "{line}").is_err() {
            break;
        }
    }
    Ok(())
}

fn render(s: &janus::data::inspect::Inspected, tok: &janus::tokenizer::Tokenizer) -> String {
    let Some(tokens) = &s.tokens else {
        return format!(
            "== {} ({}): dropped by the truncation policy\n",
            s.location, s.part
        );
    };
    let ids = |loss: bool| -> Vec<i64> {
        tokens
            .iter()
            .filter(|t| t.loss == loss)
            .map(|t| t.id)
            .collect()
    };
    let text = |v: Vec<i64>| tok.decode(&v).unwrap_or_default();
    let mut r = format!(
        "== {} ({}): {} tokens, {} prompt (no loss) + {} response (loss){}\n",
        s.location,
        s.part,
        tokens.len(),
        s.prompt_tokens,
        s.response_tokens,
        if s.truncated {
            ", response truncated"
        } else {
            ""
        }
    );
    r += &format!(
        "-- prompt --\n{}\n-- response --\n{}\n-- tokens --\n",
        text(ids(false)),
        text(ids(true))
    );
    let pieces: Vec<String> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mark = if i == s.prompt_tokens { "| " } else { "" };
            format!("{mark}{}:{}", t.id, t.piece)
        })
        .collect();
    r += &pieces.join(" ");
    r.push('\n');
    r
}
