//! Micro-batches as tensors. Targets are pre-shifted: `targets[j]` is the token after
//! `input_ids[j]`, or `IGNORE` where no loss is taken (prompt, padding).

use tch::{Device, Tensor};

use super::examples::{Example, Pair};
use crate::model::{AttentionLayout, Segments};

/// Target value that takes no loss (PyTorch's `ignore_index` default).
pub const IGNORE: i64 = -100;

/// A causal-LM micro-batch (SFT).
pub struct Batch {
    pub input_ids: Tensor,
    pub targets: Tensor,
    pub positions: Tensor,
    pub layout: AttentionLayout,
    /// Targets that take loss.
    pub loss_tokens: i64,
    /// Real (non-pad) input tokens.
    pub tokens: i64,
    /// Sum over the real sequences (each packed example one) of their length squared:
    /// the attention term of the model FLOPs (`metrics::ModelFlops`).
    pub attention_squares: i64,
}

/// Rows of host data before they become tensors.
struct Rows {
    ids: Vec<i64>,
    targets: Vec<i64>,
    positions: Vec<i64>,
    /// Per row, the lengths of its examples and of its trailing padding.
    segments: Vec<Vec<i64>>,
    response: Vec<bool>,
    width: usize,
    tokens: i64,
    /// Sum of the examples' input lengths squared.
    squares: i64,
}

impl Rows {
    /// Lay out rows of examples (several per row when packing), right-padded to the
    /// longest row.
    fn new(rows: &[Vec<&Example>], pad_id: i64) -> Self {
        let width = rows
            .iter()
            .map(|r| r.iter().map(|e| e.tokens.len() - 1).sum::<usize>())
            .max()
            .unwrap_or(0)
            .max(1);
        let n = rows.len() * width;
        let mut out = Rows {
            ids: Vec::with_capacity(n),
            targets: Vec::with_capacity(n),
            positions: Vec::with_capacity(n),
            segments: Vec::with_capacity(rows.len()),
            response: Vec::with_capacity(n),
            width,
            tokens: 0,
            squares: 0,
        };
        for row in rows {
            let mut used = 0;
            let mut lens = Vec::with_capacity(row.len() + 1);
            for e in row {
                let len = e.tokens.len() - 1;
                out.ids.extend_from_slice(&e.tokens[..len]);
                out.targets.extend_from_slice(&e.tokens[1..]);
                out.positions.extend(0..len as i64);
                lens.push(len as i64);
                out.squares += (len * len) as i64;
                // Target j is token j + 1: it is a response token when j + 1 >= prompt_len.
                out.response.extend((0..len).map(|j| j + 1 >= e.prompt_len));
                used += len;
            }
            out.tokens += used as i64;
            let pad = width - used;
            out.ids.extend(std::iter::repeat_n(pad_id, pad));
            out.targets.extend(std::iter::repeat_n(IGNORE, pad));
            out.positions.extend(std::iter::repeat_n(0, pad));
            lens.push(pad as i64);
            out.segments.push(lens);
            out.response.extend(std::iter::repeat_n(false, pad));
        }
        out
    }

    fn tensor(&self, v: &[i64], device: Device) -> Tensor {
        Tensor::from_slice(v)
            .view([-1, self.width as i64])
            .to_device(device)
    }

    fn masked_targets(&self, keep: impl Fn(usize) -> bool) -> Vec<i64> {
        self.targets
            .iter()
            .enumerate()
            .map(|(i, &t)| if keep(i) { t } else { IGNORE })
            .collect()
    }
}

impl Batch {
    /// One example per row; loss on response tokens only.
    pub fn unpacked(examples: &[&Example], pad_id: i64, device: Device) -> Self {
        let rows: Vec<Vec<&Example>> = examples.iter().map(|e| vec![*e]).collect();
        Self::build(&rows, pad_id, device, false)
    }

    /// Several examples per row; each attends only to itself and positions restart.
    pub fn packed(rows: &[Vec<&Example>], pad_id: i64, device: Device) -> Self {
        Self::build(rows, pad_id, device, true)
    }

    fn build(rows: &[Vec<&Example>], pad_id: i64, device: Device, packed: bool) -> Self {
        let r = Rows::new(rows, pad_id);
        let targets = r.masked_targets(|i| r.response[i]);
        let loss_tokens = targets.iter().filter(|&&t| t != IGNORE).count() as i64;
        let layout = if packed {
            AttentionLayout::Packed(Segments::new(r.segments.clone(), r.width as i64, device))
        } else {
            AttentionLayout::Causal
        };
        Self {
            input_ids: r.tensor(&r.ids, device),
            targets: r.tensor(&targets, device),
            positions: r.tensor(&r.positions, device),
            layout,
            loss_tokens,
            tokens: r.tokens,
            attention_squares: r.squares,
        }
    }
}

/// Greedily pack examples (in `order`) into rows of at most `capacity` input tokens.
pub fn pack(examples: &[Example], order: &[usize], capacity: usize) -> Vec<Vec<usize>> {
    let mut rows: Vec<Vec<usize>> = Vec::new();
    let mut used = usize::MAX;
    for &i in order {
        let len = examples[i].tokens.len() - 1;
        if used.saturating_add(len) > capacity {
            rows.push(Vec::new());
            used = 0;
        }
        rows.last_mut().expect("a row was pushed").push(i);
        used += len;
    }
    rows
}

/// A micro-batch of preference pairs: rows `0..n` are the chosen answers, rows
/// `n..2n` the rejected ones, right-padded to a common width.
pub struct PreferenceBatch {
    pub input_ids: Tensor,
    /// Every real next token (prompt and response).
    pub targets: Tensor,
    pub positions: Tensor,
    /// 1.0 on response targets: the log-probabilities ORPO compares.
    pub response_mask: Tensor,
    /// 1.0 on the chosen rows' targets that enter the NLL term.
    pub nll_mask: Tensor,
    pub pairs: i64,
    pub nll_tokens: i64,
    pub tokens: i64,
    /// As `Batch::attention_squares` (each row one sequence).
    pub attention_squares: i64,
    /// The pairs' ids (`Pair::id`), in row order.
    pub ids: Vec<usize>,
}

impl PreferenceBatch {
    pub fn new(pairs: &[&Pair], pad_id: i64, nll_on_prompt: bool, device: Device) -> Self {
        let rows: Vec<Vec<&Example>> = pairs
            .iter()
            .map(|p| vec![&p.chosen])
            .chain(pairs.iter().map(|p| vec![&p.rejected]))
            .collect();
        let r = Rows::new(&rows, pad_id);
        let chosen_cells = pairs.len() * r.width;
        let response: Vec<f32> = r.response.iter().map(|&b| b as u8 as f32).collect();
        let nll: Vec<f32> = (0..r.targets.len())
            .map(|i| {
                (i < chosen_cells && r.targets[i] != IGNORE && (nll_on_prompt || r.response[i]))
                    as u8 as f32
            })
            .collect();
        let nll_tokens = nll.iter().filter(|&&x| x > 0.0).count() as i64;
        let floats = |v: &[f32]| {
            Tensor::from_slice(v)
                .view([-1, r.width as i64])
                .to_device(device)
        };
        Self {
            input_ids: r.tensor(&r.ids, device),
            targets: r.tensor(&r.targets, device),
            positions: r.tensor(&r.positions, device),
            response_mask: floats(&response),
            nll_mask: floats(&nll),
            pairs: pairs.len() as i64,
            nll_tokens,
            tokens: r.tokens,
            attention_squares: r.squares,
            ids: pairs.iter().map(|p| p.id).collect(),
        }
    }
}

/// Pairs as whole sequences for a reward model: rows `0..n` chosen, `n..2n` rejected,
/// every token an input, right-padded; the reward is read at each row's last token.
pub struct RewardBatch {
    pub input_ids: Tensor,
    pub positions: Tensor,
    /// Index of each row's last token in the flattened `[2n * t]` batch.
    pub last: Tensor,
    /// Per pair, the margin the loss subtracts.
    pub margins: Tensor,
    pub pairs: i64,
    pub tokens: i64,
    /// As `Batch::attention_squares` (each row one sequence).
    pub attention_squares: i64,
}

impl RewardBatch {
    pub fn new(pairs: &[&Pair], pad_id: i64, device: Device) -> Self {
        let seqs: Vec<&[i64]> = pairs
            .iter()
            .map(|p| p.chosen.tokens.as_slice())
            .chain(pairs.iter().map(|p| p.rejected.tokens.as_slice()))
            .collect();
        let width = seqs.iter().map(|s| s.len()).max().unwrap_or(1).max(1);
        let mut ids = Vec::with_capacity(seqs.len() * width);
        let mut positions = Vec::with_capacity(seqs.len() * width);
        let mut last = Vec::with_capacity(seqs.len());
        for (row, s) in seqs.iter().enumerate() {
            ids.extend_from_slice(s);
            ids.extend(std::iter::repeat_n(pad_id, width - s.len()));
            positions.extend(0..s.len() as i64);
            positions.extend(std::iter::repeat_n(0, width - s.len()));
            last.push((row * width + s.len().max(1) - 1) as i64);
        }
        let grid = |v: &[i64]| {
            Tensor::from_slice(v)
                .view([-1, width as i64])
                .to_device(device)
        };
        let margins: Vec<f32> = pairs.iter().map(|p| p.margin as f32).collect();
        Self {
            input_ids: grid(&ids),
            positions: grid(&positions),
            last: Tensor::from_slice(&last).to_device(device),
            margins: Tensor::from_slice(&margins).to_device(device),
            pairs: pairs.len() as i64,
            tokens: seqs.iter().map(|s| s.len() as i64).sum(),
            attention_squares: seqs.iter().map(|s| (s.len() * s.len()) as i64).sum(),
        }
    }
}
