//! The decoder body's forward pass for training and the backward pass that finishes
//! it, with or without activation checkpointing. The loss head works on the detached
//! final hidden states (so it can run in chunks); `BodyPass::backward` takes their
//! gradient from there back into every parameter.
//!
//! With checkpointing only each layer's input is kept; the backward pass recomputes
//! one layer at a time from its input and backpropagates through it, as
//! `torch.utils.checkpoint` does around each decoder layer in transformers/TRL.

use tch::{Kind, Tensor};

use crate::model::{AttentionLayout, LayerContext, Transformer};

pub struct BodyPass<'a> {
    /// Final hidden states `[b, t, hidden]`, detached and requiring grad: the head's input.
    pub hidden: Tensor,
    ctx: LayerContext<'a>,
    saved: Saved,
}

enum Saved {
    /// The whole autograd graph of the pass.
    Graph { normed: Tensor },
    /// Layer inputs only (no graph), and the graph of the embedding and final norm.
    Checkpointed {
        embedded: Tensor,
        inputs: Vec<Tensor>,
        last: Tensor,
        normed: Tensor,
    },
}

impl<'a> BodyPass<'a> {
    pub fn forward(
        model: &Transformer,
        input_ids: &Tensor,
        positions: &Tensor,
        layout: &'a AttentionLayout,
        checkpoint: bool,
    ) -> Self {
        let embedded = model.embed(input_ids);
        let ctx = model.context(positions, layout, embedded.kind());
        let saved = if checkpoint {
            let mut inputs = Vec::with_capacity(model.num_layers());
            let mut x = embedded.detach();
            tch::no_grad(|| {
                for i in 0..model.num_layers() {
                    let next = model.layer(i, &x, &ctx);
                    inputs.push(std::mem::replace(&mut x, next));
                }
            });
            let last = x.set_requires_grad(true);
            let normed = model.final_norm(&last);
            Saved::Checkpointed {
                embedded,
                inputs,
                last,
                normed,
            }
        } else {
            let mut x = embedded;
            for i in 0..model.num_layers() {
                x = model.layer(i, &x, &ctx);
            }
            Saved::Graph {
                normed: model.final_norm(&x),
            }
        };
        let normed = match &saved {
            Saved::Graph { normed } | Saved::Checkpointed { normed, .. } => normed,
        };
        let hidden = normed.detach().set_requires_grad(true);
        Self { hidden, ctx, saved }
    }

    /// Backpropagate the gradient the head left on `hidden` into the parameters.
    pub fn backward(self, model: &Transformer) {
        let g = self.hidden.grad();
        if !g.defined() {
            return;
        }
        // d/dx of sum(x * g) is g: a backward pass seeded with g.
        let seed = |x: &Tensor, g: &Tensor| (x * g).sum(Kind::Float).backward();
        match self.saved {
            Saved::Graph { normed } => seed(&normed, &g),
            Saved::Checkpointed {
                embedded,
                mut inputs,
                last,
                normed,
            } => {
                seed(&normed, &g);
                let mut g = last.grad();
                drop((normed, last));
                for i in (0..model.num_layers()).rev() {
                    let x = inputs
                        .pop()
                        .expect("one input per layer")
                        .set_requires_grad(true);
                    let y = model.layer(i, &x, &self.ctx);
                    seed(&y, &g);
                    g = x.grad();
                }
                seed(&embedded, &g);
            }
        }
    }
}
