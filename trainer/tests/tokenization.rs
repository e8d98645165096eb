//! Examples are tokenised as Hugging Face tokenises the whole formatted text: with
//! Mistral-style SentencePiece tokenizers (Metaspace with prepend_scheme `first` and
//! `always`, and the older Prepend/Replace normalizer; byte fallback; <unk> <s> </s>)
//! built by the Python `tokenizers` package, our ids equal `tokenizers`' ids of the
//! joint text in both prompt formats, and the loss starts at the response's first
//! token. Encoding prompt and response apart would not give the same ids.

mod common;

use std::path::{Path, PathBuf};

use janus::config::{PromptFormat, Truncation};
use janus::data::{SftRecord, Tokenization};
use janus::tokenizer::Tokenizer;

fn records() -> Vec<SftRecord> {
    let mut v: Vec<SftRecord> = janus::sample::generate(4, 1)
        .sft
        .into_iter()
        .take(6)
        .map(|r| serde_json::from_value(r).unwrap())
        .collect();
    // Characters outside the vocabulary (byte fallback), leading spaces and newlines
    // next to the boundary, an empty system message.
    v.push(SftRecord {
        system: "Réponds en français, s'il te plaît.".into(),
        prompt: "Qu'est-ce que la photosynthèse? 🌱".into(),
        output: "  La photosynthèse\nconvertit la lumière en énergie.".into(),
    });
    v.push(SftRecord {
        system: String::new(),
        prompt: "Say hi.\n".into(),
        output: "\nHi!".into(),
    });
    v
}

fn build_tokenizer(dir: &Path, scheme: &str) -> PathBuf {
    let corpus = dir.join("corpus.txt");
    let values: Vec<serde_json::Value> = janus::sample::generate(24, 0).sft;
    std::fs::write(&corpus, janus::sample::tokenizer_corpus(&values).join("\n")).unwrap();
    let out = dir.join(format!("tokenizer-{scheme}.json"));
    common::run_python(
        "mistral_tokenizer.py",
        &[
            "make",
            "--scheme",
            scheme,
            "--corpus",
            corpus.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    out
}

/// `tokenizers`' ids and character offsets of each text (no special tokens).
fn reference(
    tokenizer: &Path,
    texts: &[String],
    dir: &Path,
) -> Vec<(Vec<i64>, Vec<janus::tokenizer::Span>)> {
    let file = dir.join("texts.json");
    std::fs::write(&file, serde_json::to_vec(texts).unwrap()).unwrap();
    let out = common::run_python(
        "mistral_tokenizer.py",
        &[
            "encode",
            "--tokenizer",
            tokenizer.to_str().unwrap(),
            "--texts",
            file.to_str().unwrap(),
        ],
    );
    let v: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    v.into_iter()
        .map(|e| {
            (
                serde_json::from_value(e["ids"].clone()).unwrap(),
                serde_json::from_value(e["offsets"].clone()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn ids_equal_the_hf_tokenizer_on_the_joint_text_with_the_loss_at_the_response() {
    let tmp = tempfile::tempdir().unwrap();
    for scheme in ["first", "always", "legacy"] {
        let path = build_tokenizer(tmp.path(), scheme);
        let tok = Tokenizer::from_file(&path).unwrap();
        assert_eq!((tok.bos_id, tok.eos_id), (1, 2));
        let mut apart_differs = false;
        for format in [PromptFormat::Mistral, PromptFormat::Chatml] {
            let t = Tokenization {
                tok: &tok,
                format,
                max_len: 4096,
                policy: Truncation::TruncateResponse,
                min_response: 1,
                ending: janus::data::Ending::Eos,
            };
            let recs = records();
            let (examples, stats) = t.sft(&recs).unwrap();
            assert_eq!(stats.kept, recs.len());
            let prompts: Vec<String> = recs
                .iter()
                .map(|r| format.prompt(&r.system, &r.prompt))
                .collect();
            let responses: Vec<String> = recs.iter().map(|r| format.response(&r.output)).collect();
            let joint: Vec<String> = prompts
                .iter()
                .zip(&responses)
                .map(|(p, r)| format!("{p}{r}"))
                .collect();
            let refs = reference(&path, &joint, tmp.path());
            for (i, (ex, (ids, offsets))) in examples.iter().zip(&refs).enumerate() {
                let mut want = vec![tok.bos_id];
                want.extend(ids);
                want.push(tok.eos_id);
                assert_eq!(
                    ex.tokens, want,
                    "{scheme} {format:?} record {i}: ids differ from tokenizers"
                );
                // The response's first token: the first whose characters reach past
                // the prompt's.
                let boundary = prompts[i].chars().count();
                let first = offsets
                    .iter()
                    .position(|&(s, e)| e > boundary || s >= boundary)
                    .unwrap();
                assert_eq!(
                    ex.prompt_len,
                    1 + first,
                    "{scheme} {format:?} record {i}: loss boundary"
                );
                let decoded = tok.decode(&ex.tokens[ex.prompt_len..]).unwrap();
                let head: String = recs[i].output.trim_start().chars().take(4).collect();
                assert!(
                    decoded.contains(&head),
                    "{scheme} {format:?} record {i}: response decodes to {decoded:?}"
                );
                // What encoding the two strings apart would have given.
                let mut apart = vec![tok.bos_id];
                apart.extend(tok.encode(&prompts[i]).unwrap());
                apart.extend(tok.encode(&responses[i]).unwrap());
                apart.push(tok.eos_id);
                apart_differs |= apart != want;
            }
        }
        // ChatML's response starts a new word with no space before it, so encoding it
        // alone adds a word-start marker; so does the older normalizer, always.
        assert!(
            apart_differs,
            "{scheme}: encoding prompt and response apart gave the joint ids for every record, so this test would not catch it"
        );
    }
}

#[test]
fn data_inspect_shows_the_tokens_and_which_take_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (data, model) = common::tiny_setup(dir, 2);
    let path = build_tokenizer(dir, "first");
    let mut cmd = common::janus();
    cmd.args(["data", "inspect", "--preset", "tiny", "-n", "2", "--json"]);
    for o in common::tiny_overrides(dir, &model, &data.join("sft.jsonl"), &[]) {
        cmd.args(["--set", &o]);
    }
    cmd.args(["--set", &format!("model.tokenizer={}", path.display())]);
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    for l in &lines {
        assert!(
            l["location"].as_str().unwrap().contains("sft.jsonl:"),
            "{l}"
        );
        let tokens = l["tokens"].as_array().unwrap();
        let prompt = l["prompt_tokens"].as_u64().unwrap() as usize;
        assert_eq!(tokens[0]["piece"], "<s>");
        assert_eq!(tokens.last().unwrap()["piece"], "</s>");
        assert!(tokens[..prompt].iter().all(|t| t["loss"] == false));
        assert!(tokens[prompt..].iter().all(|t| t["loss"] == true));
    }
    // The text view marks where the loss starts.
    let mut cmd = common::janus();
    cmd.args(["data", "inspect", "--preset", "tiny", "-n", "1"]);
    for o in common::tiny_overrides(dir, &model, &data.join("sft.jsonl"), &[]) {
        cmd.args(["--set", &o]);
    }
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("-- response --") && text.contains("| "),
        "{text}"
    );
}
