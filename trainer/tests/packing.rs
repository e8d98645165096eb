//! Packed and unpacked batches of the same examples give the same loss (within
//! 1e-5): packed examples never attend to each other and their positions restart,
//! and no `[t, t]` mask is built for it (per layer or at all).

use janus::data::{pack, Batch, Example};
use janus::loss::token_ce_sum;
use janus::model::{ModelConfig, Transformer};
use tch::{nn::VarStore, Device, Kind, Tensor};

fn loss(model: &Transformer, b: &Batch) -> f64 {
    let logits = tch::no_grad(|| model.forward(&b.input_ids, &b.positions, &b.layout));
    token_ce_sum(&logits, &b.targets).double_value(&[]) / b.loss_tokens as f64
}

#[test]
fn packed_and_unpacked_batches_give_the_same_loss() {
    tch::manual_seed(5);
    let cfg = ModelConfig::small("mistral", 97, 48, 80, 4, 6, 2);
    let vs = VarStore::new(Device::Cpu);
    let model = Transformer::new(&vs.root(), &cfg);
    let lens = [
        (17, 5),
        (9, 3),
        (23, 11),
        (6, 2),
        (14, 7),
        (30, 4),
        (11, 10),
    ];
    let examples: Vec<Example> = lens
        .iter()
        .map(|&(n, p)| Example {
            tokens: Vec::<i64>::try_from(Tensor::randint_low(
                3,
                97,
                [n],
                (Kind::Int64, Device::Cpu),
            ))
            .unwrap(),
            prompt_len: p,
        })
        .collect();
    let all: Vec<&Example> = examples.iter().collect();
    let unpacked = Batch::unpacked(&all, 2, Device::Cpu);

    let order: Vec<usize> = (0..examples.len()).collect();
    let rows = pack(&examples, &order, 40);
    assert!(
        rows.len() < examples.len(),
        "packing put {} examples in {} rows",
        examples.len(),
        rows.len()
    );
    assert!(rows.iter().any(|r| r.len() >= 2));
    let rows: Vec<Vec<&Example>> = rows
        .iter()
        .map(|r| r.iter().map(|&i| &examples[i]).collect())
        .collect();
    let packed = Batch::packed(&rows, 2, Device::Cpu);

    assert_eq!(unpacked.loss_tokens, packed.loss_tokens);
    let masks = janus::model::masks_built();
    let (a, b) = (loss(&model, &unpacked), loss(&model, &packed));
    assert!((a - b).abs() <= 1e-5, "unpacked {a} vs packed {b}");
    // A forward pass over 4 layers of packed rows built no mask: sequences are
    // attended segment by segment (flash's varlen kernel on CUDA).
    assert_eq!(
        janus::model::masks_built(),
        masks,
        "a [t, t] mask was built"
    );

    // Attending across the whole row, the examples would see each other: the check
    // above is not vacuous.
    let leaky = Batch {
        layout: janus::model::AttentionLayout::Causal,
        ..packed
    };
    let c = loss(&model, &leaky);
    assert!(
        (a - c).abs() > 1e-4,
        "a plain causal mask over packed rows should change the loss ({a} vs {c})"
    );
}

#[test]
fn packing_respects_the_row_capacity_and_keeps_every_example() {
    let examples: Vec<Example> = [10usize, 30, 5, 41, 8, 8, 20]
        .iter()
        .map(|&n| Example {
            tokens: vec![1; n],
            prompt_len: 1,
        })
        .collect();
    let order: Vec<usize> = (0..examples.len()).rev().collect();
    let rows = pack(&examples, &order, 40);
    let mut seen: Vec<usize> = rows.iter().flatten().copied().collect();
    seen.sort();
    assert_eq!(seen, (0..examples.len()).collect::<Vec<_>>());
    for r in &rows {
        let used: usize = r.iter().map(|&i| examples[i].tokens.len() - 1).sum();
        assert!(used <= 40, "row {r:?} holds {used} tokens");
    }
}
