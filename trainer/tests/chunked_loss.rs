//! The trainer's SFT backward (LM head and loss only on loss positions, in chunks)
//! gives the same loss and gradients as the plain full-logits computation.

use janus::data::{Batch, Example};
use janus::loss::sft_loss;
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
    let logits = t.model.forward(&b.input_ids, &b.positions, &b.mask);
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
