//! The trainer's backward passes give the gradients of the plain computation: the SFT
//! and ORPO heads (LM head and loss only on the positions that take part, in chunks)
//! equal the full-logits losses, and activation checkpointing (each layer recomputed
//! in the backward pass) equals keeping every activation.

use janus::data::{Batch, Example, Pair, PreferenceBatch};
use janus::loss::{orpo_loss, sft_loss};
use janus::model::ModelConfig;
use janus::optim::AdamWConfig;
use janus::train::{Trainer, LOSS_CHUNK_TOKENS};
use tch::{Device, Kind, Tensor};

fn grads(t: &Trainer) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> =
        t.vs.variables()
            .into_iter()
            .map(|(n, p)| (n, p.grad().copy()))
            .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn chunked_sft_backward_equals_the_full_logits_backward() {
    tch::manual_seed(9);
    let cfg = ModelConfig::small("mistral", 300, 32, 48, 2, 4, 2);
    let adam = AdamWConfig {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
    };
    let mut t = Trainer::new(&cfg, Kind::Float, Device::Cpu, adam, 1.0);
    // Enough loss positions for several chunks, with prompts that take no loss.
    let examples: Vec<Example> = [(1500usize, 100usize), (650, 640), (1200, 3)]
        .iter()
        .map(|&(n, p)| Example {
            tokens: Vec::<i64>::try_from(Tensor::randint_low(
                3,
                300,
                [n as i64],
                (Kind::Int64, Device::Cpu),
            ))
            .unwrap(),
            prompt_len: p,
        })
        .collect();
    let b = Batch::unpacked(&examples.iter().collect::<Vec<_>>(), 2, Device::Cpu);
    assert!(b.loss_tokens as usize > 2 * LOSS_CHUNK_TOKENS);
    let step_tokens = b.loss_tokens + 17; // as if another micro-batch shared the step

    let chunked = t.sft_backward(&b, step_tokens);
    let g_chunked = grads(&t);
    t.opt.zero_grad();
    let logits = t.model.forward(&b.input_ids, &b.positions, &b.layout);
    let full = sft_loss(&logits, &b.targets, step_tokens);
    full.backward();
    let g_full = grads(&t);

    assert!(
        (chunked - full.double_value(&[])).abs() < 1e-5,
        "{chunked} vs {}",
        full.double_value(&[])
    );
    for ((name, a), (_, b)) in g_chunked.iter().zip(&g_full) {
        let scale = b.abs().max().double_value(&[]).max(1e-12);
        let diff = (a - b).abs().max().double_value(&[]);
        assert!(
            diff <= 1e-5 * scale.max(1.0),
            "{name}: gradient differs by {diff} (max |g| {scale})"
        );
    }
}

fn random_example(n: usize, prompt: usize, vocab: i64) -> Example {
    Example {
        tokens: Vec::<i64>::try_from(Tensor::randint_low(
            3,
            vocab,
            [n as i64],
            (Kind::Int64, Device::Cpu),
        ))
        .unwrap(),
        prompt_len: prompt,
    }
}

fn assert_same_grads(a: &[(String, Tensor)], b: &[(String, Tensor)], tol: f64, what: &str) {
    for ((name, x), (_, y)) in a.iter().zip(b) {
        let diff = (x - y).abs().max().double_value(&[]);
        assert!(diff <= tol, "{what}: {name} differs by {diff}");
    }
}

#[test]
fn chunked_orpo_backward_equals_the_full_logits_backward() {
    tch::manual_seed(4);
    let cfg = ModelConfig::small("mistral", 300, 32, 48, 2, 4, 2);
    let adam = AdamWConfig {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
    };
    let mut t = Trainer::new(&cfg, Kind::Float, Device::Cpu, adam, 1.0);
    // Long enough that the needed positions span several chunks.
    let pairs: Vec<Pair> = [(900usize, 40usize, 700usize), (500, 30, 820)]
        .iter()
        .map(|&(c, p, r)| {
            let chosen = random_example(c, p, 300);
            let mut rejected = random_example(r, p, 300);
            rejected.tokens[..p].copy_from_slice(&chosen.tokens[..p]);
            Pair {
                chosen,
                rejected,
                margin: 0.0,
                id: 0,
            }
        })
        .collect();
    for nll_on_prompt in [false, true] {
        let b = PreferenceBatch::new(
            &pairs.iter().collect::<Vec<_>>(),
            2,
            nll_on_prompt,
            Device::Cpu,
        );
        let (nll_tokens, n) = (b.nll_tokens + 5, b.pairs + 1);
        t.opt.zero_grad();
        let (chunked, sums) = t.orpo_backward(&b, 0.1, nll_tokens, n);
        let g_chunked = grads(&t);
        t.opt.zero_grad();
        let logits = t.model.forward(
            &b.input_ids,
            &b.positions,
            &janus::model::AttentionLayout::Causal,
        );
        let (full, full_sums) = orpo_loss(&logits, &b, 0.1, nll_tokens, n);
        full.backward();
        let g_full = grads(&t);
        assert!(
            (chunked - full.double_value(&[])).abs() < 1e-5,
            "{chunked} vs {}",
            full.double_value(&[])
        );
        assert!((sums.log_odds_ratio_sum - full_sums.log_odds_ratio_sum).abs() < 1e-5);
        assert!((sums.nll_sum - full_sums.nll_sum).abs() < 1e-3);
        assert_same_grads(&g_chunked, &g_full, 1e-5, "chunked ORPO");
    }
}

#[test]
fn checkpointed_layers_give_the_gradients_of_plain_layers() {
    tch::manual_seed(6);
    let cfg = ModelConfig::small("mistral", 200, 48, 96, 3, 6, 2);
    let adam = AdamWConfig {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
    };
    let mut t = Trainer::new(&cfg, Kind::Float, Device::Cpu, adam, 1.0);
    let examples: Vec<Example> = [(70usize, 9usize), (40, 3), (55, 20)]
        .iter()
        .map(|&(n, p)| random_example(n, p, 200))
        .collect();
    let refs: Vec<&Example> = examples.iter().collect();
    let rows: Vec<Vec<&Example>> = vec![refs[..2].to_vec(), refs[2..].to_vec()];
    for (what, b) in [
        ("unpacked", Batch::unpacked(&refs, 2, Device::Cpu)),
        ("packed", Batch::packed(&rows, 2, Device::Cpu)),
    ] {
        t.checkpointing = false;
        t.opt.zero_grad();
        let plain = t.sft_backward(&b, b.loss_tokens);
        let g_plain = grads(&t);
        t.checkpointing = true;
        t.opt.zero_grad();
        let ckpt = t.sft_backward(&b, b.loss_tokens);
        let g_ckpt = grads(&t);
        assert!(
            (plain - ckpt).abs() < 1e-6,
            "{what}: loss {plain} vs {ckpt}"
        );
        assert_same_grads(&g_plain, &g_ckpt, 1e-6, what);
    }
    // ORPO too.
    let pair = Pair {
        chosen: random_example(30, 6, 200),
        rejected: random_example(26, 6, 200),
        margin: 0.0,
        id: 0,
    };
    let pb = PreferenceBatch::new(&[&pair], 2, false, Device::Cpu);
    t.checkpointing = false;
    t.opt.zero_grad();
    let (a, _) = t.orpo_backward(&pb, 0.1, pb.nll_tokens, 1);
    let g_plain = grads(&t);
    t.checkpointing = true;
    t.opt.zero_grad();
    let (b, _) = t.orpo_backward(&pb, 0.1, pb.nll_tokens, 1);
    assert!((a - b).abs() < 1e-6, "orpo: {a} vs {b}");
    assert_same_grads(&g_plain, &grads(&t), 1e-6, "orpo");
}
