//! Generation against transformers: greedy tokens equal `generate(do_sample=False)`
//! on tiny random Mistral (sliding window, SentencePiece-style tokenizer) and Llama
//! (tied embeddings, byte-level BPE) models with ragged batches, also when sequences
//! join a running batch; the KV-cache path gives the full forward pass's logits;
//! the logits processors equal transformers'; seeded sampling is reproducible; EOS
//! and stop strings end a sequence; bf16 runs.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use janus::config::{DeviceChoice, Dtype};
use janus::generate::sampling::process_logits;
use janus::generate::{Engine, EngineOptions, FinishReason, LoadedModel, Request, SamplingParams};
use janus::model::AttentionLayout;
use rand::{Rng, SeedableRng};
use tch::{Device, Kind, Tensor};

const VOCAB: usize = 384;

/// A tiny random HF model made by transformers, with a tokenizer, shared by the tests
/// of this file (made once: each takes several seconds of Python).
fn hf_model(arch: &'static str) -> &'static Path {
    static MISTRAL: OnceLock<PathBuf> = OnceLock::new();
    static LLAMA: OnceLock<PathBuf> = OnceLock::new();
    let cell = if arch == "mistral" { &MISTRAL } else { &LLAMA };
    cell.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let model = dir.join(arch);
        let mut args = vec!["make", "--arch", arch, "--out", model.to_str().unwrap()];
        args.extend(["--vocab", "384"]);
        if arch == "mistral" {
            // Prompts and answers longer than the window: it cuts attention in both
            // the prefill and the decode steps.
            args.extend(["--sliding-window", "8"]);
        }
        common::run_python("hf_reference.py", &args);
        let corpus = dir.join("corpus.txt");
        std::fs::write(
            &corpus,
            "the quick brown fox jumps over the lazy dog\n".repeat(20),
        )
        .unwrap();
        let tok = model.join("tokenizer.json");
        if arch == "mistral" {
            let t = common::run_python(
                "mistral_tokenizer.py",
                &[
                    "make",
                    "--scheme",
                    "first",
                    "--corpus",
                    corpus.to_str().unwrap(),
                    "--out",
                    tok.to_str().unwrap(),
                    "--vocab",
                    "300",
                ],
            );
            assert!(t.contains("vocab"), "{t}");
        } else {
            janus::tokenizer::Tokenizer::train_bpe(
                std::iter::repeat_n("the quick brown fox".to_string(), 20),
                300,
                &tok,
            )
            .unwrap();
        }
        model
    })
}

fn load(dir: &Path, dtype: Dtype) -> LoadedModel {
    LoadedModel::load_dir(dir, dtype, DeviceChoice::Cpu).unwrap()
}

/// Prompts of different lengths (BOS first), deterministic.
fn prompts(lens: &[usize], seed: u64) -> Vec<Vec<i64>> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    lens.iter()
        .map(|&n| {
            std::iter::once(1)
                .chain((1..n).map(|_| rng.random_range(3..VOCAB as i64)))
                .collect()
        })
        .collect()
}

fn hf_greedy(model: &Path, prompts: &[Vec<i64>], max_new: usize) -> Vec<Vec<i64>> {
    let file = model
        .parent()
        .unwrap()
        .join(format!("prompts-{}.json", prompts.len()));
    std::fs::write(&file, serde_json::to_string(prompts).unwrap()).unwrap();
    let out = common::run_python(
        "hf_generation.py",
        &[
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--prompts",
            file.to_str().unwrap(),
            "--max-new-tokens",
            &max_new.to_string(),
        ],
    );
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    serde_json::from_value(v["tokens"].clone()).unwrap()
}

/// Our greedy tokens, `max_new[i]` for prompt i, `max_batch` sequences at a time.
fn our_greedy(
    m: LoadedModel,
    prompts: &[Vec<i64>],
    max_new: &[usize],
    max_batch: usize,
) -> Vec<Vec<i64>> {
    let mut engine = Engine::new(
        m,
        EngineOptions {
            max_batch,
            max_prefill_tokens: 4096,
        },
    );
    let reqs = prompts
        .iter()
        .zip(max_new)
        .map(|(p, &n)| Request::new(p.clone(), SamplingParams::greedy(), n))
        .collect();
    engine
        .generate(reqs, |_, _| Ok(()))
        .unwrap()
        .into_iter()
        .map(|c| c.tokens)
        .collect()
}

fn greedy_conformance(arch: &'static str) {
    let dir = hf_model(arch);
    let ps = prompts(&[3, 7, 12], 11);
    let reference = hf_greedy(dir, &ps, 12);
    eprintln!("{arch}: transformers greedy = {reference:?}");
    // All prompts in one ragged batch.
    let ours = our_greedy(load(dir, Dtype::Float32), &ps, &[12, 12, 12], 3);
    assert_eq!(ours, reference, "{arch}: one ragged batch");
    // Two at a time, the second finishing early: the third prompt (longer than the
    // running rows) joins a batch that is decoding, which pads the batch's cache.
    let max_new = [12, 5, 9];
    let ours = our_greedy(load(dir, Dtype::Float32), &ps, &max_new, 2);
    for (i, n) in max_new.iter().enumerate() {
        let want: Vec<i64> = reference[i].iter().take(*n).copied().collect();
        assert_eq!(ours[i], want, "{arch}: prompt {i} joining a running batch");
    }
}

#[test]
fn greedy_matches_transformers_mistral_ragged_batch() {
    greedy_conformance("mistral");
}

#[test]
fn greedy_matches_transformers_llama_ragged_batch() {
    greedy_conformance("llama");
}

/// Full-forward logits `[n, vocab]` of one unpadded sequence.
fn full_logits(m: &LoadedModel, ids: &[i64]) -> Tensor {
    let n = ids.len() as i64;
    let t = Tensor::from_slice(ids).view([1, n]);
    let pos = Tensor::arange(n, (Kind::Int64, Device::Cpu)).view([1, n]);
    tch::no_grad(|| m.model.forward(&t, &pos, &AttentionLayout::Causal))
        .get(0)
        .to_kind(Kind::Float)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn kv_cache_logits_equal_full_forward() {
    let m = load(hf_model("mistral"), Dtype::Float32);
    let seqs = prompts(&[6, 14, 11], 5);
    let full: Vec<Tensor> = seqs.iter().map(|s| full_logits(&m, s)).collect();
    let (b, width) = (3i64, 14i64);
    // A left-padded batch: 9 columns in one prefill, then the rest one at a time.
    let mut ids = vec![0i64; 42];
    let mut pos = vec![0i64; 42];
    let mut valid = vec![false; 42];
    for (r, s) in seqs.iter().enumerate() {
        let pad = 14 - s.len();
        for (j, &t) in s.iter().enumerate() {
            let k = r * 14 + pad + j;
            (ids[k], pos[k], valid[k]) = (t, j as i64, true);
        }
    }
    let ids = Tensor::from_slice(&ids).view([b, width]);
    let pos = Tensor::from_slice(&pos).view([b, width]);
    let valid = Tensor::from_slice(&valid).view([b, width]);
    let mut cache = m.model.new_cache(b, Kind::Float, Device::Cpu);
    let mut worst: f64 = 0.0;
    let mut col = 0;
    for chunk in [9, 1, 1, 1, 1, 1] {
        let h = m.model.forward_cached(
            &ids.narrow(1, col, chunk),
            &pos.narrow(1, col, chunk),
            &valid.narrow(1, col, chunk),
            &mut cache,
        );
        let logits = tch::no_grad(|| m.model.lm_head(&h));
        for (r, s) in seqs.iter().enumerate() {
            let pad = 14 - s.len() as i64;
            for c in col..col + chunk {
                if c >= pad {
                    let d = max_diff(&logits.get(r as i64).get(c - col), &full[r].get(c - pad));
                    worst = worst.max(d);
                }
            }
        }
        col += chunk;
    }
    assert_eq!(cache.len(), 14);
    // Sequences leave and join: keep rows 2 and 0, then a fourth sequence prefilled
    // on its own joins them; one more token for each is still the full forward's.
    cache.retain(&[2, 0]);
    let late = prompts(&[4], 9).remove(0);
    let mut other = m.model.new_cache(1, Kind::Float, Device::Cpu);
    let n = late.len() as i64;
    let _ = m.model.forward_cached(
        &Tensor::from_slice(&late[..3]).view([1, 3]),
        &Tensor::arange(3, (Kind::Int64, Device::Cpu)).view([1, 3]),
        &Tensor::ones([1, 3], (Kind::Bool, Device::Cpu)),
        &mut other,
    );
    cache.extend(other);
    let next = [seqs[2].clone(), seqs[0].clone(), late[..3].to_vec()];
    let step_ids = Tensor::from_slice(&[7i64, 8, late[3]]).view([3, 1]);
    let step_pos =
        Tensor::from_slice(&[seqs[2].len() as i64, seqs[0].len() as i64, 3]).view([3, 1]);
    let h = m.model.forward_cached(
        &step_ids,
        &step_pos,
        &Tensor::ones([3, 1], (Kind::Bool, Device::Cpu)),
        &mut cache,
    );
    let logits = tch::no_grad(|| m.model.lm_head(&h));
    for (r, (prefix, t)) in next.iter().zip([7i64, 8, late[3]]).enumerate() {
        let mut s = prefix.clone();
        s.push(t);
        let f = full_logits(&m, &s);
        worst = worst.max(max_diff(
            &logits.get(r as i64).get(0),
            &f.get(s.len() as i64 - 1),
        ));
    }
    assert_eq!(n, 4);
    eprintln!("max |cached - full| = {worst:e}");
    assert!(
        worst <= 1e-4,
        "KV-cache logits differ from the full forward by {worst}"
    );
}

#[test]
fn logits_processors_match_transformers() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let params = [
        (0.7, Some(20), 0.8, 1.3),
        (1.0, None, 0.5, 1.0),
        (1.5, Some(5), 1.0, 1.1),
        (1.0, Some(400), 0.95, 1.03),
    ];
    let mut cases = vec![];
    let mut ours = vec![];
    for (temperature, top_k, top_p, penalty) in params {
        let logits: Vec<f32> = (0..VOCAB).map(|_| rng.random_range(-4.0..4.0)).collect();
        let input_ids: Vec<i64> = (0..8).map(|_| rng.random_range(0..VOCAB as i64)).collect();
        let p = SamplingParams {
            temperature,
            top_p,
            top_k,
            repetition_penalty: penalty,
            seed: 0,
        };
        let seen = Tensor::zeros([1, VOCAB as i64], (Kind::Bool, Device::Cpu));
        let _ = seen
            .get(0)
            .index_fill_(0, &Tensor::from_slice(&input_ids), 1);
        ours.push(process_logits(
            &Tensor::from_slice(&logits).view([1, -1]),
            Some(&seen),
            &[&p],
        ));
        cases.push(serde_json::json!({
            "logits": logits, "input_ids": input_ids, "temperature": temperature,
            "top_k": top_k, "top_p": top_p, "repetition_penalty": penalty,
        }));
    }
    // The same rows processed together, each with its own settings.
    let all: Vec<SamplingParams> = params
        .iter()
        .map(
            |&(temperature, top_k, top_p, repetition_penalty)| SamplingParams {
                temperature,
                top_p,
                top_k,
                repetition_penalty,
                seed: 0,
            },
        )
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cases.json");
    std::fs::write(&file, serde_json::to_string(&cases).unwrap()).unwrap();
    let out = common::run_python(
        "hf_generation.py",
        &["process", "--input", file.to_str().unwrap()],
    );
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let batch_logits = Tensor::stack(
        &cases
            .iter()
            .map(|c| {
                let l: Vec<f32> = serde_json::from_value(c["logits"].clone()).unwrap();
                Tensor::from_slice(&l)
            })
            .collect::<Vec<_>>(),
        0,
    );
    let batch_seen = Tensor::zeros([4, VOCAB as i64], (Kind::Bool, Device::Cpu));
    for (r, c) in cases.iter().enumerate() {
        let ids: Vec<i64> = serde_json::from_value(c["input_ids"].clone()).unwrap();
        let _ = batch_seen
            .get(r as i64)
            .index_fill_(0, &Tensor::from_slice(&ids), 1);
    }
    let refs: Vec<&SamplingParams> = all.iter().collect();
    let batched = process_logits(&batch_logits, Some(&batch_seen), &refs);
    for (r, row) in v["scores"].as_array().unwrap().iter().enumerate() {
        for (which, got) in [
            ("alone", ours[r].get(0)),
            ("batched", batched.get(r as i64)),
        ] {
            let got: Vec<f32> = Vec::try_from(got).unwrap();
            let mut kept = 0;
            for (i, want) in row.as_array().unwrap().iter().enumerate() {
                match want.as_f64() {
                    None => assert!(
                        got[i].is_infinite(),
                        "case {r} ({which}): token {i} should be removed"
                    ),
                    Some(w) => {
                        kept += 1;
                        assert!(
                            (got[i] as f64 - w).abs() < 1e-5,
                            "case {r} ({which}) token {i}: {} vs {w}",
                            got[i]
                        );
                    }
                }
            }
            assert!(
                kept >= 1 && (r == 3 || kept < VOCAB),
                "case {r}: {kept} tokens kept"
            );
        }
    }
}

fn sampled(m: LoadedModel, requests: Vec<Request>) -> Vec<Vec<i64>> {
    let mut e = Engine::new(m, EngineOptions::default());
    e.generate(requests, |_, _| Ok(()))
        .unwrap()
        .into_iter()
        .map(|c| c.tokens)
        .collect()
}

#[test]
fn seeded_sampling_is_reproducible() {
    let dir = hf_model("llama");
    let ps = prompts(&[5, 9, 3], 21);
    let params = |seed| SamplingParams {
        temperature: 1.0,
        top_p: 0.9,
        top_k: Some(50),
        repetition_penalty: 1.03,
        seed,
    };
    let req = |p: &Vec<i64>, seed| {
        let mut r = Request::new(p.clone(), params(seed), 16);
        r.ignore_eos = true;
        r
    };
    let alone = sampled(load(dir, Dtype::Float32), vec![req(&ps[0], 7)]);
    let again = sampled(load(dir, Dtype::Float32), vec![req(&ps[0], 7)]);
    assert_eq!(alone, again, "same seed, same tokens");
    // The same request in a batch with others (its stream is its own).
    let batch = sampled(
        load(dir, Dtype::Float32),
        vec![req(&ps[1], 1), req(&ps[0], 7), req(&ps[2], 2)],
    );
    assert_eq!(
        batch[1], alone[0],
        "a seeded request does not depend on its batch"
    );
    let other = sampled(load(dir, Dtype::Float32), vec![req(&ps[0], 8)]);
    assert_ne!(other[0], alone[0], "another seed, other tokens");
    let greedy = our_greedy(load(dir, Dtype::Float32), &ps[..1], &[16], 1);
    assert_ne!(greedy[0], alone[0], "sampling is not greedy");
}

#[test]
fn eos_and_stop_strings_end_generation() {
    // Byte-level BPE: the random model's tokens decode to plenty of plain characters.
    let dir = hf_model("llama");
    let ps = prompts(&[6], 4);
    let mut r = Request::new(ps[0].clone(), SamplingParams::greedy(), 16);
    r.ignore_eos = true;
    let mut e = Engine::new(load(dir, Dtype::Float32), EngineOptions::default());
    let free = e
        .generate(vec![r.clone()], |_, _| Ok(()))
        .unwrap()
        .remove(0);
    assert_eq!((free.tokens.len(), free.finish), (16, FinishReason::Length));
    // The model's own 4th token declared an end-of-sequence token: it stops there.
    let mut m = load(dir, Dtype::Float32);
    m.eos = vec![free.tokens[3]];
    let first = free
        .tokens
        .iter()
        .position(|t| *t == free.tokens[3])
        .unwrap();
    let mut e = Engine::new(m, EngineOptions::default());
    let mut eos_req = r.clone();
    eos_req.ignore_eos = false;
    let c = e.generate(vec![eos_req], |_, _| Ok(())).unwrap().remove(0);
    assert_eq!(c.finish, FinishReason::Stop);
    assert_eq!(c.tokens, free.tokens[..=first].to_vec());
    // A stop string from the middle of the free text: the text ends before it.
    let text = free.text.clone();
    let chars: Vec<char> = text.chars().collect();
    eprintln!("free text: {text:?}");
    assert!(chars.len() >= 6, "{text:?}");
    let at = (chars.len() / 2..chars.len() - 1)
        .find(|&i| {
            chars[i..i + 2]
                .iter()
                .all(|c| *c != '\u{FFFD}' && !c.is_whitespace())
        })
        .expect("two plain characters in the second half");
    let stop: String = chars[at..at + 2].iter().collect();
    let mut stop_req = r;
    stop_req.stop = vec![stop.clone()];
    let mut e = Engine::new(load(dir, Dtype::Float32), EngineOptions::default());
    let c = e.generate(vec![stop_req], |_, _| Ok(())).unwrap().remove(0);
    assert_eq!(c.finish, FinishReason::Stop);
    assert_eq!(
        c.text,
        text[..text.find(&stop).unwrap()],
        "stop {stop:?} in {text:?}"
    );
    assert!(c.tokens.len() < 16);
}

#[test]
fn bf16_generation_runs_with_the_cache() {
    let dir = hf_model("llama");
    let m = load(dir, Dtype::Bfloat16);
    assert_eq!(m.kind, Kind::BFloat16);
    let ps = prompts(&[4, 9], 2);
    let full = full_logits(&m, &ps[1]);
    let mut cache = m.model.new_cache(1, Kind::BFloat16, Device::Cpu);
    let n = ps[1].len() as i64;
    let h = m.model.forward_cached(
        &Tensor::from_slice(&ps[1]).view([1, n]),
        &Tensor::arange(n, (Kind::Int64, Device::Cpu)).view([1, n]),
        &Tensor::ones([1, n], (Kind::Bool, Device::Cpu)),
        &mut cache,
    );
    let cached = tch::no_grad(|| m.model.lm_head(&h))
        .get(0)
        .to_kind(Kind::Float);
    assert!(max_diff(&cached, &full) < 0.05, "bf16 cached vs full");
    let out = our_greedy(m, &ps, &[8, 8], 2);
    assert!(out.iter().all(|t| !t.is_empty() && t.len() <= 8), "{out:?}");
}
