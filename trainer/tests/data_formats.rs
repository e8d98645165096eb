//! Loading the Multifaceted Collection formats: field variants, JSONL and Parquet,
//! malformed records named by file and line (or skipped and counted), truncation
//! that keeps the response's start and is counted.

mod common;

use std::path::Path;

use janus::config::Truncation;
use janus::data::{
    load_records, write_jsonl, write_parquet, PreferenceRecord, PromptFormat, SftRecord,
    Tokenization,
};
use janus::tokenizer::Tokenizer;
use serde_json::json;

fn write_lines(path: &Path, lines: &[&str]) {
    std::fs::write(path, lines.join("\n")).unwrap();
}

#[test]
fn sft_variants_load_from_jsonl_and_parquet_alike() {
    let dir = tempfile::tempdir().unwrap();
    let rows = vec![
        json!({"main_source": "m", "original_source": "o", "system": "Be brief.", "prompt": "P1", "output": "O1",
               "preference_set": [{"dimension": "style", "subdimension": "s", "preference": "p", "description": "d"}]}),
        json!({"system": null, "instruction": "P2", "output": "O2"}),
        json!({"instruction": "P3", "output": "O3"}),
    ];
    let jsonl = dir.path().join("sft.jsonl");
    let parquet = dir.path().join("sft.parquet");
    write_jsonl(&jsonl, &rows).unwrap();
    write_parquet(&parquet, &rows).unwrap();
    for f in [&jsonl, &parquet] {
        let (recs, stats) = load_records::<SftRecord>(std::slice::from_ref(f), false).unwrap();
        assert_eq!(stats.rows, 3);
        assert_eq!(
            recs[0],
            SftRecord {
                system: "Be brief.".into(),
                prompt: "P1".into(),
                output: "O1".into()
            }
        );
        assert_eq!(
            recs[1],
            SftRecord {
                system: "".into(),
                prompt: "P2".into(),
                output: "O2".into()
            }
        );
        assert_eq!(recs[2].prompt, "P3");
    }
}

#[test]
fn preference_pairs_accept_strings_and_message_lists() {
    let dir = tempfile::tempdir().unwrap();
    let rows = [
        json!({"system": "S", "prompt": "P", "chosen": [{"role": "user", "content": "P"}, {"role": "assistant", "content": "good"}],
               "rejected": [{"role": "user", "content": "P"}, {"role": "assistant", "content": "bad"}]}),
        json!({"system": "S", "instruction": "P", "chosen": "good2", "rejected": "bad2"}),
    ];
    let p = dir.path().join("pref.parquet");
    write_parquet(&p, &rows[..1]).unwrap();
    let j = dir.path().join("pref.jsonl");
    write_jsonl(&j, &rows[1..]).unwrap();
    let (recs, _) = load_records::<PreferenceRecord>(&[p, j], false).unwrap();
    assert_eq!(
        (recs[0].chosen.as_str(), recs[0].rejected.as_str()),
        ("good", "bad")
    );
    assert_eq!(
        (recs[1].chosen.as_str(), recs[1].prompt.as_str()),
        ("good2", "P")
    );
}

#[test]
fn a_malformed_record_is_named_by_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.jsonl");
    write_lines(
        &f,
        &[
            r#"{"prompt": "a", "output": "b"}"#,
            r#"{"prompt": "a", "output": "b"}"#,
            r#"{"prompt": "a"}"#,
        ],
    );
    let e = load_records::<SftRecord>(std::slice::from_ref(&f), false).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("bad.jsonl:3") && msg.contains("output"),
        "{msg}"
    );
    assert_eq!(e.exit_code(), janus_crds::exit_code::BAD_INPUT);

    write_lines(
        &f,
        &[
            r#"{"prompt": "a", "output": "b"}"#,
            r#"{"prompt": "a", "output": "#,
        ],
    );
    let msg = load_records::<SftRecord>(std::slice::from_ref(&f), false)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("bad.jsonl:2") && msg.contains("invalid JSON"),
        "{msg}"
    );

    let pq = dir.path().join("bad.parquet");
    write_parquet(
        &pq,
        &[
            json!({"prompt": "a", "output": "b"}),
            json!({"prompt": "a", "output": ""}),
        ],
    )
    .unwrap();
    let msg = load_records::<SftRecord>(&[pq], false)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("bad.parquet:row 1") && msg.contains("`output` is empty"),
        "{msg}"
    );

    let pref = dir.path().join("pref.jsonl");
    write_lines(
        &pref,
        &[
            r#"{"prompt": "p", "chosen": [{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}], "rejected": "r"}"#,
        ],
    );
    let msg = load_records::<PreferenceRecord>(&[pref], false)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("pref.jsonl:1"), "{msg}");
}

#[test]
fn bad_records_can_be_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("mixed.jsonl");
    write_lines(
        &f,
        &[
            r#"{"prompt": "a", "output": "b"}"#,
            "not json",
            r#"{"output": "b"}"#,
            r#"{"prompt": "c", "output": "d"}"#,
        ],
    );
    let (recs, stats) = load_records::<SftRecord>(&[f], true).unwrap();
    assert_eq!(recs.len(), 2);
    assert_eq!(stats.skipped, 2);
    assert_eq!(stats.rows, 4);
}

#[test]
fn truncation_keeps_the_response_start_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let (data, model) = common::tiny_setup(dir.path(), 4);
    let tok = Tokenizer::from_file(&model.join("tokenizer.json")).unwrap();
    let long = "word ".repeat(200);
    let recs = vec![
        SftRecord {
            system: "S".into(),
            prompt: "short".into(),
            output: "ok".into(),
        },
        SftRecord {
            system: "S".into(),
            prompt: "short".into(),
            output: long.clone(),
        },
        SftRecord {
            system: "S".into(),
            prompt: long.clone(),
            output: "ok".into(),
        },
    ];
    let mut t = Tokenization {
        tok: &tok,
        format: PromptFormat::Mistral,
        max_len: 64,
        policy: Truncation::TruncateResponse,
        min_response: 8,
        ending: janus::data::Ending::Eos,
    };
    let (ex, stats) = t.sft(&recs).unwrap();
    assert_eq!((stats.kept, stats.truncated, stats.dropped), (1, 1, 1));
    assert_eq!(ex.len(), 2);
    let e = &ex[1];
    assert_eq!(e.tokens.len(), 64);
    assert_eq!(e.tokens[0], tok.bos_id);
    let resp = tok.encode(&PromptFormat::Mistral.response(&long)).unwrap();
    assert_eq!(
        &e.tokens[e.prompt_len..],
        &resp[..64 - e.prompt_len],
        "the response keeps its start"
    );
    assert_eq!(
        *ex[0].tokens.last().unwrap(),
        tok.eos_id,
        "a whole example ends with EOS"
    );

    t.policy = Truncation::Drop;
    let (_, stats) = t.sft(&recs).unwrap();
    assert_eq!((stats.kept, stats.truncated, stats.dropped), (1, 0, 2));

    let pairs = load_records::<PreferenceRecord>(&[data.join("preference.jsonl")], false)
        .unwrap()
        .0;
    let t = Tokenization {
        format: PromptFormat::Chatml,
        max_len: 512,
        policy: Truncation::TruncateResponse,
        ..t
    };
    let (p, stats) = t.pairs(&pairs).unwrap();
    assert_eq!(stats.kept, pairs.len());
    assert_eq!(
        p[0].chosen.tokens[..p[0].chosen.prompt_len],
        p[0].rejected.tokens[..p[0].rejected.prompt_len]
    );
}
