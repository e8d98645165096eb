//! The decoder body's forward pass for training and the backward pass that finishes
//! it, with or without activation checkpointing. The loss head works on the detached
//! final hidden states (so it can run in chunks); `BodyPass::backward` takes their
//! gradient from there back into every parameter.
//!
//! With checkpointing only each layer's input is kept; the backward pass recomputes
//! one layer at a time from its input and backpropagates through it, as
//! `torch.utils.checkpoint` does around each decoder layer in transformers/TRL.
//!
//! Staged (`forward` with `staged`, for overlapping the gradient reduction with the
//! backward pass): the graph is cut between layers as checkpointing cuts it, and the
//! backward pass runs one layer at a time, so that after each layer the caller learns
//! that the gradients of that layer's parameters are final and can start reducing them
//! (`Stage`). The arithmetic is the same as one backward pass through the whole graph.

use tch::{Kind, Tensor};

use crate::model::{AttentionLayout, LayerContext, Transformer};

pub struct BodyPass<'a> {
    /// Final hidden states `[b, t, hidden]`, detached and requiring grad: the head's input.
    pub hidden: Tensor,
    ctx: LayerContext<'a>,
    saved: Saved,
}

/// How far a backward pass has come: every parameter used only at or after this point
/// of the forward pass has its gradient (`Head`: the final norm, and the loss head,
/// which ran before; `Layer(i)`: decoder layer `i` and everything after it; `Embedding`:
/// all of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Head,
    Layer(usize),
    Embedding,
}

impl Stage {
    /// The stages in the order a backward pass reaches them, numbered from 0 (`Head`)
    /// to `layers + 1` (`Embedding`).
    pub fn index(self, layers: usize) -> usize {
        match self {
            Stage::Head => 0,
            Stage::Layer(i) => layers - i,
            Stage::Embedding => layers + 1,
        }
    }

    /// The stage after which the gradient of the parameter `name` (HF names) is final.
    pub fn of_parameter(name: &str, layers: usize) -> usize {
        if let Some(rest) = name.strip_prefix("model.layers.") {
            if let Some(i) = rest.split('.').next().and_then(|i| i.parse::<usize>().ok()) {
                if i < layers {
                    return Stage::Layer(i).index(layers);
                }
            }
            return Stage::Embedding.index(layers);
        }
        match name {
            // The final norm and the heads (a tied LM head is the embedding's weight).
            "model.norm.weight" | "lm_head.weight" | "score.weight" | "score.bias" => 0,
            _ => Stage::Embedding.index(layers),
        }
    }
}

enum Saved {
    /// The whole autograd graph of the pass.
    Graph { normed: Tensor },
    /// The graph cut between layers: the embedding's output, each layer's detached
    /// input and its output.
    Staged {
        embedded: Tensor,
        layers: Vec<(Tensor, Tensor)>,
        last: Tensor,
        normed: Tensor,
    },
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
        Self::forward_staged(model, input_ids, positions, layout, checkpoint, false)
    }

    /// As `forward`; with `staged` (and without checkpointing, which is staged anyway)
    /// the graph is cut between layers so that `backward_staged` reports each layer.
    pub fn forward_staged(
        model: &Transformer,
        input_ids: &Tensor,
        positions: &Tensor,
        layout: &'a AttentionLayout,
        checkpoint: bool,
        staged: bool,
    ) -> Self {
        let embedded = model.embed(input_ids);
        let ctx = model.context(positions, layout, embedded.kind());
        let saved = if staged && !checkpoint {
            let mut layers = Vec::with_capacity(model.num_layers());
            let mut x = embedded.detach().set_requires_grad(true);
            for i in 0..model.num_layers() {
                let y = model.layer(i, &x, &ctx);
                let next = y.detach().set_requires_grad(true);
                layers.push((std::mem::replace(&mut x, next), y));
            }
            let normed = model.final_norm(&x);
            Saved::Staged {
                embedded,
                layers,
                last: x,
                normed,
            }
        } else if checkpoint {
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
            Saved::Graph { normed }
            | Saved::Staged { normed, .. }
            | Saved::Checkpointed { normed, .. } => normed,
        };
        let hidden = normed.detach().set_requires_grad(true);
        Self { hidden, ctx, saved }
    }

    /// Backpropagate the gradient the head left on `hidden` into the parameters.
    pub fn backward(self, model: &Transformer) {
        self.backward_staged(model, &mut |_| {})
    }

    /// As `backward`, telling `done` each stage it finished (of a staged or
    /// checkpointed pass; a plain one finishes `Embedding` only). Every stage is
    /// reported, also when the head left no gradient.
    pub fn backward_staged(self, model: &Transformer, done: &mut dyn FnMut(Stage)) {
        let n = model.num_layers();
        let g = self.hidden.grad();
        if !g.defined() {
            done(Stage::Head);
            for i in (0..n).rev() {
                done(Stage::Layer(i));
            }
            return done(Stage::Embedding);
        }
        // d/dx of sum(x * g) is g: a backward pass seeded with g.
        let seed = |x: &Tensor, g: &Tensor| (x * g).sum(Kind::Float).backward();
        match self.saved {
            Saved::Graph { normed } => seed(&normed, &g),
            Saved::Staged {
                embedded,
                mut layers,
                last,
                normed,
            } => {
                seed(&normed, &g);
                done(Stage::Head);
                let mut g = last.grad();
                drop((normed, last));
                for i in (0..n).rev() {
                    let (x, y) = layers.pop().expect("one pair per layer");
                    seed(&y, &g);
                    drop(y);
                    g = x.grad();
                    done(Stage::Layer(i));
                }
                seed(&embedded, &g);
            }
            Saved::Checkpointed {
                embedded,
                mut inputs,
                last,
                normed,
            } => {
                seed(&normed, &g);
                done(Stage::Head);
                let mut g = last.grad();
                drop((normed, last));
                for i in (0..n).rev() {
                    let x = inputs
                        .pop()
                        .expect("one input per layer")
                        .set_requires_grad(true);
                    let y = model.layer(i, &x, &self.ctx);
                    seed(&y, &g);
                    g = x.grad();
                    done(Stage::Layer(i));
                }
                seed(&embedded, &g);
            }
        }
        done(Stage::Embedding);
    }
}
