//! Token-id shards (`janus data shard --tokenizer T --prompt-format F`): the ids equal
//! on-the-fly tokenisation of the same records (byte-level BPE and a Mistral-style
//! SentencePiece tokenizer, both prompt formats, SFT and preference records); a run
//! refuses shards of another tokenizer or prompt format, naming both; packed streaming
//! knows its step count before the first step, uses every record once per epoch and
//! resumes bitwise.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use janus::config::{PromptFormat, TrainConfig, Truncation};
use janus::data::shards::{write_token_shards, ShardOptions, TokenSpec};
use janus::data::stream::{ShardedData, StreamPlan};
use janus::data::tokens::TokenSeq;
use janus::data::{Example, PreferenceRecord, SftRecord, Tokenization};
use janus::storage::Store;
use janus::tokenizer::Tokenizer;
use janus::train::{run, RunOptions, Summary};

const RETRY: Duration = Duration::from_secs(5);

fn plan() -> StreamPlan {
    StreamPlan {
        seed: 7,
        epoch: 0,
        rank: 0,
        world: 1,
        window_blocks: 3,
        prefetch_windows: 2,
    }
}

/// A Mistral-style SentencePiece tokenizer built by the `tokenizers` package.
fn sentencepiece(dir: &Path) -> PathBuf {
    let corpus = dir.join("corpus.txt");
    let values: Vec<serde_json::Value> = janus::sample::generate(24, 0).sft;
    std::fs::write(&corpus, janus::sample::tokenizer_corpus(&values).join("\n")).unwrap();
    let out = dir.join("tokenizer-sp.json");
    common::run_python(
        "mistral_tokenizer.py",
        &[
            "make",
            "--scheme",
            "first",
            "--corpus",
            corpus.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    out
}

fn token_shards(input: &Path, out: &Path, tok: &Tokenizer, file: &Path, format: PromptFormat) {
    let store = Store::open(&out.display().to_string(), RETRY).unwrap();
    let opts = ShardOptions {
        shard_bytes: 8 << 10,
        block_bytes: 2 << 10,
        ..Default::default()
    };
    let spec = TokenSpec {
        tokenizer: tok,
        tokenizer_file: file.display().to_string(),
        format,
    };
    write_token_shards(
        &input.display().to_string(),
        &store,
        &opts,
        &spec,
        RETRY,
        |_, _| {},
    )
    .unwrap();
}

fn count<K: Ord>(items: impl IntoIterator<Item = K>) -> BTreeMap<K, usize> {
    let mut m = BTreeMap::new();
    for k in items {
        *m.entry(k).or_default() += 1;
    }
    m
}

fn records<T: serde::de::DeserializeOwned>(path: &Path) -> Vec<T> {
    janus::data::read_rows(path)
        .unwrap()
        .into_iter()
        .map(|r| serde_json::from_value(r.value.unwrap()).unwrap())
        .collect()
}

/// SFT records with the hard cases of the tokenisation test: characters outside the
/// vocabulary, spaces and newlines at the boundary, an empty system message.
fn sft_input(dir: &Path, data: &Path) -> PathBuf {
    let mut text = std::fs::read_to_string(data.join("sft.jsonl")).unwrap();
    for r in [
        serde_json::json!({"system": "Réponds en français.", "prompt": "Qu'est-ce que la photosynthèse? 🌱", "output": "  La photosynthèse\nconvertit la lumière."}),
        serde_json::json!({"system": null, "prompt": "Say hi.\n", "output": "\nHi!"}),
    ] {
        text += &format!("{r}\n");
    }
    let p = dir.join("sft-input.jsonl");
    std::fs::write(&p, text).unwrap();
    p
}

fn tokenization(tok: &Tokenizer, format: PromptFormat, max_len: usize) -> Tokenization<'_> {
    Tokenization {
        tok,
        format,
        max_len,
        policy: Truncation::TruncateResponse,
        min_response: 1,
        ending: janus::data::Ending::Eos,
    }
}

#[test]
fn token_shards_equal_on_the_fly_tokenisation_for_bpe_and_sentencepiece() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (data, model) = common::tiny_setup(dir, 8);
    let sft_path = sft_input(dir, &data);
    let pref_path = data.join("preference.parquet");
    let sft: Vec<SftRecord> = records(&sft_path);
    let prefs: Vec<PreferenceRecord> = records(&pref_path);
    for (name, file) in [
        ("bpe", model.join("tokenizer.json")),
        ("sentencepiece", sentencepiece(dir)),
    ] {
        let tok = Tokenizer::from_file(&file).unwrap();
        for format in [PromptFormat::Mistral, PromptFormat::Chatml] {
            let what = format!("{name} {format:?}");
            let t = tokenization(&tok, format, 4096);
            // SFT: every sample is the joint-text encoding of one record.
            let out = dir.join(format!("sft-{name}-{format:?}"));
            token_shards(&sft_path, &out, &tok, &file, format);
            let ds = ShardedData::open(&out.display().to_string(), RETRY).unwrap();
            assert_eq!(ds.index.content, "tokens");
            assert_eq!(ds.index.tokenizer.as_deref(), Some(tok.identity.as_str()));
            // Not every tokenizer/format gives several 2 KiB blocks of this small set.
            assert!(
                ds.index
                    .shards
                    .iter()
                    .map(|s| s.blocks.len())
                    .sum::<usize>()
                    >= 1
            );
            let mut s = ds.stream_token_seqs(plan(), 0).unwrap();
            let mut got = vec![];
            while let Some(r) = s.next_record().unwrap() {
                got.push(r.parsed.unwrap().widen());
            }
            let want: Vec<TokenSeq> = sft
                .iter()
                .map(|r| {
                    let (prompt, response) = t.encode(&r.system, &r.prompt, &r.output).unwrap();
                    TokenSeq { prompt, response }
                })
                .collect();
            let key = |s: &TokenSeq| (s.prompt.clone(), s.response.clone());
            assert_eq!(
                count(got.iter().map(key)),
                count(want.iter().map(key)),
                "{what}: token shard samples differ from on-the-fly tokenisation"
            );
            // And the run's examples, after its length policy, are the same: with a
            // max_len at the median length, some are kept and some cut.
            let mut lens: Vec<usize> = want
                .iter()
                .map(|s| s.prompt.len() + s.response.len())
                .collect();
            lens.sort();
            let short = tokenization(&tok, format, lens[lens.len() / 2]);
            let (from_shards, st1) =
                short.sft_tokens(got.into_iter().map(|s| (s.prompt, s.response)));
            let (on_the_fly, st2) = short.sft(&sft).unwrap();
            assert!(
                st1.kept > 0 && st1.truncated + st1.dropped > 0,
                "{what}: {st1:?}"
            );
            assert_eq!(st1, st2, "{what}");
            let ex = |e: &Example| (e.tokens.clone(), e.prompt_len);
            assert_eq!(
                count(from_shards.iter().map(ex)),
                count(on_the_fly.iter().map(ex)),
                "{what}"
            );

            // Preference pairs: chosen and rejected, each from the joint text.
            let out = dir.join(format!("pref-{name}-{format:?}"));
            token_shards(&pref_path, &out, &tok, &file, format);
            let ds = ShardedData::open(&out.display().to_string(), RETRY).unwrap();
            let mut s = ds.stream_token_pairs(plan(), 0).unwrap();
            let mut got = vec![];
            while let Some(r) = s.next_record().unwrap() {
                let p = r.parsed.unwrap().widen();
                got.push((
                    (p.chosen.prompt, p.chosen.response),
                    (p.rejected.prompt, p.rejected.response),
                    p.margin.to_bits(),
                ));
            }
            let want: Vec<_> = prefs
                .iter()
                .map(|r| {
                    (
                        t.encode(&r.system, &r.prompt, &r.chosen).unwrap(),
                        t.encode(&r.system, &r.prompt, &r.rejected).unwrap(),
                        r.margin.unwrap_or(0.0).to_bits(),
                    )
                })
                .collect();
            assert_eq!(count(got), count(want), "{what}: preference samples differ");
        }
    }
}

fn train_cli(dir: &Path, model: &Path, data: &Path, extra: &[&str]) -> std::process::Output {
    let mut cmd = common::janus();
    cmd.args(["train", "--preset", "tiny"]);
    for o in common::tiny_overrides(dir, model, data, extra) {
        cmd.args(["--set", &o]);
    }
    cmd.args(["--set", "hyperparameters.max_steps=2"]);
    cmd.output().unwrap()
}

#[test]
fn a_run_refuses_token_shards_of_another_tokenizer_or_prompt_format_naming_both() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (data, model) = common::tiny_setup(dir, 4);
    let sp = sentencepiece(dir);
    let sp_tok = Tokenizer::from_file(&sp).unwrap();
    let job_tok = Tokenizer::from_file(&model.join("tokenizer.json")).unwrap();
    let sft = data.join("sft.jsonl");
    let other = dir.join("tok-sp");
    token_shards(&sft, &other, &sp_tok, &sp, PromptFormat::Mistral);
    let out = train_cli(dir, &model, &other, &["data.packing=false"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    for needle in [
        sp_tok.identity.as_str(),
        job_tok.identity.as_str(),
        sp.to_str().unwrap(),
        "janus data shard --tokenizer",
    ] {
        assert!(err.contains(needle), "no `{needle}` in: {err}");
    }

    let chatml = dir.join("tok-chatml");
    token_shards(
        &sft,
        &chatml,
        &job_tok,
        &model.join("tokenizer.json"),
        PromptFormat::Chatml,
    );
    let out = train_cli(dir, &model, &chatml, &["data.prompt_format=mistral"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains("prompt format `chatml`") && err.contains("`mistral`"),
        "{err}"
    );

    // Record shards cannot be packed in a stream: the message says how to get token shards.
    let mut shard = common::janus();
    shard
        .args(["data", "shard", "--input"])
        .arg(&sft)
        .arg("--output")
        .arg(dir.join("records"));
    common::run_ok(shard);
    let out = train_cli(dir, &model, &dir.join("records"), &["data.packing=true"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.contains("--tokenizer"), "{err}");
}

fn train_packed(dir: &Path, model: &Path, data: &Path, job: &str, stop: Option<u64>) -> Summary {
    let mut o = common::tiny_overrides(
        dir,
        model,
        data,
        &[
            "data.packing=true",
            "data.max_seq_len=512",
            "data.streaming.window_blocks=2",
            "hyperparameters.epochs=3",
            "hyperparameters.max_steps=null",
            "hyperparameters.micro_batch_size=2",
            "hyperparameters.gradient_accumulation_steps=1",
            "checkpoint.every_steps=7",
            "checkpoint.keep=0",
        ],
    );
    o.push(format!("job={job}"));
    o.push(format!(
        "output_dir={}",
        dir.join(format!("out-{job}")).display()
    ));
    let cfg = TrainConfig::resolve(Some("tiny"), None, &o).unwrap();
    run(
        &cfg,
        &RunOptions {
            stop_after_steps: stop,
            progress_bar: false,
            world: None,
            stop: None,
            attempt: None,
        },
    )
    .unwrap()
}

#[test]
fn packed_streaming_knows_its_steps_uses_every_record_and_resumes_bitwise() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (data, model) = common::tiny_setup(dir, 16);
    let file = model.join("tokenizer.json");
    let tok = Tokenizer::from_file(&file).unwrap();
    let ds = dir.join("tok");
    token_shards(
        &data.join("sft.jsonl"),
        &ds,
        &tok,
        &file,
        PromptFormat::Mistral,
    );
    let records = records::<SftRecord>(&data.join("sft.jsonl")).len();

    let straight = train_packed(dir, &model, &ds, "straight", None);
    assert!(straight.finished);
    // The step count was fixed before the first step and the run took exactly it.
    assert_eq!(straight.steps_completed, straight.total_steps);
    // Three epochs, each using every record once (world 1), several to a row.
    let used = straight.tokenize.kept + straight.tokenize.truncated;
    assert_eq!(used, 3 * records, "{:?}", straight.tokenize);
    assert!(
        straight.total_steps * 2 < 3 * records as u64 / 2,
        "{} steps for {records} records x 3 epochs at 2 rows per step: rows are not packed",
        straight.total_steps
    );

    let first = train_packed(dir, &model, &ds, "resumed", Some(7));
    assert!(!first.finished);
    let second = train_packed(dir, &model, &ds, "resumed", None);
    assert_eq!(second.resumed_from_step, Some(7));
    assert_eq!(second.total_steps, straight.total_steps);
    let w = |job: &str| common::read_bytes(&dir.join(format!("out-{job}/model.safetensors")));
    assert!(
        w("straight") == w("resumed"),
        "resumed packed stream differs from the straight run"
    );
    assert_eq!(straight.last_loss, second.last_loss);
}
