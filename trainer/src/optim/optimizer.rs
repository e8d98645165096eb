//! The optimizer of a run: AdamW over the trainable parameters, with fp32 master
//! weights and moments in mixed precision, replicated on every rank or partitioned
//! across the ranks (ZeRO stage 1).
//!
//! Replicated: gradients are all-reduced, every rank updates every parameter. With
//! master weights the update runs on fp32 copies and the result is copied to the bf16
//! parameters; without (fp32 models, or `optimizer.master_weights: false`) the
//! parameters are updated in place, as `torch.optim.AdamW` does.
//!
//! Sharded: the parameters (sorted by name) are laid end to end and cut into buckets
//! of whole parameters; each bucket is padded to a multiple of the world size and rank
//! `r` owns the `r`-th equal segment of every bucket. Gradients are reduce-scattered
//! bucket by bucket into an fp32 gradient shard, each rank updates its segments of the
//! master weights and moments, and the new parameters are all-gathered. The
//! checkpointed state is the full per-parameter tensors (`master.<name>`,
//! `exp_avg.<name>`, `exp_avg_sq.<name>`), whatever the number of ranks, so a run can
//! resume on another one.
//!
//! Overlapped (`distributed.overlap`): the step's gradient reduction is a `Reduction`
//! whose buckets the trainer starts while the last micro-batch's backward pass is
//! still running, each as soon as the pass has finished all of its parameters (as DDP
//! does), in an order every rank shares; with ZeRO-1 each bucket's all-gather is
//! started as soon as its update is done, beside the next bucket's update. At most
//! `IN_FLIGHT_BUCKETS` buckets are in flight, so the buffers stay a few buckets in
//! size. The buckets, the sums and the updates are those of the plain step.

use tch::{Kind, Tensor};

use super::adamw::{adamw_update, adamw_update_scaled, AdamWConfig};
use crate::dist::{all_reduce_f64, grad_buckets, Collective, Op};
use crate::error::{Error, Result};
use crate::model::{SafetensorsFile, TensorSpec};

pub struct Optimizer {
    pub config: AdamWConfig,
    /// Updates applied so far (bias correction uses it).
    pub step: u64,
    params: Vec<(String, Tensor)>,
    /// Kind of the master weights and moments.
    state_kind: Kind,
    /// Whether master weights exist apart from the parameters.
    master: bool,
    state: State,
    /// Seconds in the gradient reduction since the last `take_reduce_seconds`.
    reduce_seconds: f64,
    /// Synchronise this CUDA device around the timed collectives, so that their time
    /// is the device's, not the time to enqueue them (benchmarks: it costs overlap).
    pub sync_device: Option<tch::Device>,
}

/// Buckets in flight at once when overlapping (each a bucket of `bucket_bytes`).
pub const IN_FLIGHT_BUCKETS: usize = 4;

/// One step's gradient reduction, bucket by bucket (see the module doc).
pub struct Reduction {
    kind: Kind,
    overlap: bool,
    /// Per bucket: the stage of the backward pass after which its gradients are final
    /// (`train::Stage::index`), its parameters, and its buffer while in flight.
    buckets: Vec<PlannedBucket>,
    /// Bucket indices in the order they are started: by stage, then by index.
    order: Vec<usize>,
    /// How many of `order` were started.
    started: usize,
    /// Started and not yet finished (settled).
    in_flight: Vec<usize>,
}

struct PlannedBucket {
    stage: usize,
    params: Vec<usize>,
    buf: Option<Tensor>,
}

impl Reduction {
    /// Whether every bucket was started.
    pub fn all_started(&self) -> bool {
        self.started == self.order.len()
    }
}

enum State {
    /// Nothing allocated yet: the master weights equal the parameters and the moments
    /// are zero. Kept until the first use so that `shard` builds the partitioned state
    /// straight from the parameters, never holding the replicated state beside it (on a
    /// 7B model that would be 12 bytes per parameter on every rank at start-up).
    Fresh,
    Replicated {
        /// fp32 copies of the parameters when `master`.
        master: Vec<Tensor>,
        exp_avg: Vec<Tensor>,
        exp_avg_sq: Vec<Tensor>,
    },
    Sharded(Sharded),
}

struct Sharded {
    layout: Layout,
    master: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    /// This rank's segments of the reduced gradient, fp32.
    grad: Tensor,
}

/// How the parameters are cut into buckets and segments (see the module doc).
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    pub rank: usize,
    pub world: usize,
    pub buckets: Vec<Bucket>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    /// (parameter index, offset in the bucket, elements)
    pub members: Vec<(usize, usize, usize)>,
    /// Elements of the bucket before padding.
    pub len: usize,
    /// Elements per rank (`len` rounded up to the world size, divided by it).
    pub seg: usize,
    /// Where this bucket's segment starts in the rank's flat shard.
    pub shard_offset: usize,
}

impl Layout {
    /// Buckets of whole parameters of about `bucket_elems` elements each (a larger
    /// parameter is a bucket of its own).
    pub fn new(numels: &[usize], bucket_elems: usize, rank: usize, world: usize) -> Self {
        let mut buckets: Vec<Bucket> = Vec::new();
        let mut shard_offset = 0;
        let mut i = 0;
        while i < numels.len() {
            let mut members = Vec::new();
            let mut len = 0;
            while i < numels.len() && (members.is_empty() || len + numels[i] <= bucket_elems) {
                members.push((i, len, numels[i]));
                len += numels[i];
                i += 1;
            }
            let seg = len.div_ceil(world);
            buckets.push(Bucket {
                members,
                len,
                seg,
                shard_offset,
            });
            shard_offset += seg;
        }
        Self {
            rank,
            world,
            buckets,
        }
    }

    /// Elements of one rank's flat shard.
    pub fn shard_len(&self) -> usize {
        self.buckets.iter().map(|b| b.seg).sum()
    }
}

impl Bucket {
    fn padded(&self, world: usize) -> usize {
        self.seg * world
    }

    /// Pieces of the parameters inside segment `rank`: (parameter index, offset in the
    /// parameter, offset in the segment, elements).
    pub fn owned(&self, rank: usize) -> Vec<(usize, usize, usize, usize)> {
        let (lo, hi) = (rank * self.seg, (rank + 1) * self.seg);
        self.members
            .iter()
            .filter_map(|&(p, off, n)| {
                let (a, b) = (off.max(lo), (off + n).min(hi));
                // `then_some` would evaluate `b - a` eagerly and underflow.
                if a < b {
                    Some((p, a - off, a - lo, b - a))
                } else {
                    None
                }
            })
            .collect()
    }
}

fn flat(t: &Tensor) -> Tensor {
    t.view([-1])
}

impl Optimizer {
    /// Replicated AdamW over `params` (sorted by name here, so saved state lines up);
    /// with `master`, fp32 master weights and moments (parameters of another kind are
    /// copied), otherwise moments of each parameter's kind.
    pub fn new(mut params: Vec<(String, Tensor)>, config: AdamWConfig, master: bool) -> Self {
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let param_kind = params.first().map(|(_, p)| p.kind()).unwrap_or(Kind::Float);
        let master = master && param_kind != Kind::Float;
        let state_kind = if master { Kind::Float } else { param_kind };
        Self {
            config,
            step: 0,
            state: State::Fresh,
            params,
            state_kind,
            master,
            reduce_seconds: 0.0,
            sync_device: None,
        }
    }

    /// The initial state of parameter `i`, one tensor per `state_names` entry.
    fn initial_state(&self, i: usize) -> Vec<Tensor> {
        let p = &self.params[i].1;
        let zeros = || p.zeros_like().to_kind(self.state_kind);
        let mut out = vec![zeros(), zeros()];
        if self.master {
            out.insert(0, tch::no_grad(|| p.detach().to_kind(Kind::Float)));
        }
        out
    }

    /// Allocate the replicated state if nothing is allocated yet.
    fn ensure_state(&mut self) {
        if !matches!(self.state, State::Fresh) {
            return;
        }
        let (mut master, mut exp_avg, mut exp_avg_sq) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..self.params.len() {
            let mut parts = self.initial_state(i);
            exp_avg_sq.push(parts.pop().expect("moment"));
            exp_avg.push(parts.pop().expect("moment"));
            master.extend(parts.pop());
        }
        self.state = State::Replicated {
            master,
            exp_avg,
            exp_avg_sq,
        };
    }

    pub fn params(&self) -> impl Iterator<Item = &Tensor> {
        self.params.iter().map(|(_, p)| p)
    }

    pub fn named_params(&self) -> &[(String, Tensor)] {
        &self.params
    }

    pub fn has_master_weights(&self) -> bool {
        self.master
    }

    pub fn is_sharded(&self) -> bool {
        matches!(self.state, State::Sharded(_))
    }

    /// The sharded layout, when sharded.
    pub fn layout(&self) -> Option<&Layout> {
        match &self.state {
            State::Sharded(s) => Some(&s.layout),
            State::Fresh | State::Replicated { .. } => None,
        }
    }

    /// Partition the state across `world` ranks (ZeRO-1), keeping its values. Call
    /// before the first step (or restore) on every rank with the same arguments.
    pub fn shard(&mut self, rank: usize, world: usize, bucket_bytes: usize) {
        let numels: Vec<usize> = self.params.iter().map(|(_, p)| p.numel()).collect();
        let bucket_elems = (bucket_bytes / self.state_kind.elt_size_in_bytes()).max(1);
        let layout = Layout::new(&numels, bucket_elems, rank, world);
        let device = self.params.first().map(|(_, p)| p.device());
        let device = device.unwrap_or(tch::Device::Cpu);
        let n = layout.shard_len() as i64;
        let mut master = Tensor::zeros([n], (self.state_kind, device));
        let mut exp_avg = master.zeros_like();
        let mut exp_avg_sq = master.zeros_like();
        let fresh = matches!(self.state, State::Fresh);
        let empty = Vec::new();
        let (m0, a0, s0) = match &self.state {
            State::Fresh => (&empty, &empty, &empty),
            State::Replicated {
                master,
                exp_avg,
                exp_avg_sq,
            } => (master, exp_avg, exp_avg_sq),
            State::Sharded(_) => return,
        };
        tch::no_grad(|| {
            for b in &layout.buckets {
                for (p, at, off, len) in b.owned(rank) {
                    let dst =
                        |t: &mut Tensor| t.narrow(0, (b.shard_offset + off) as i64, len as i64);
                    let src = |t: &Tensor| flat(t).narrow(0, at as i64, len as i64);
                    let value = if self.master && !fresh {
                        &m0[p]
                    } else {
                        &self.params[p].1
                    };
                    dst(&mut master).copy_(&src(value));
                    if !fresh {
                        dst(&mut exp_avg).copy_(&src(&a0[p]));
                        dst(&mut exp_avg_sq).copy_(&src(&s0[p]));
                    }
                }
            }
        });
        let grad = Tensor::zeros([n], (Kind::Float, device));
        self.state = State::Sharded(Sharded {
            layout,
            master,
            exp_avg,
            exp_avg_sq,
            grad,
        });
    }

    /// Seconds the replicated path spent reducing gradients since the last call (the
    /// sharded path's reduce-scatter is counted as optimizer time).
    pub fn take_reduce_seconds(&mut self) -> f64 {
        std::mem::take(&mut self.reduce_seconds)
    }

    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            p.zero_grad();
        }
    }

    /// One optimizer step from the accumulated gradients of this rank: reduce them
    /// over the ranks (summed in `reduce_kind`), clip to `max_grad_norm` (0: off),
    /// update with learning rate `lr`. Returns the global gradient norm before clipping.
    pub fn step(
        &mut self,
        comm: &mut dyn Collective,
        lr: f64,
        max_grad_norm: f64,
        reduce_kind: Kind,
        bucket_bytes: usize,
    ) -> Result<f64> {
        let r = self.reduction(reduce_kind, bucket_bytes, &|_| 0, false);
        self.step_reduced(comm, r, lr, max_grad_norm)
    }

    /// The reduction of this step's gradients in buckets of about `bucket_bytes` (the
    /// sharded layout's buckets when sharded). `stage_of` names the stage of the
    /// backward pass after which a parameter's gradient is final (the trainer's
    /// `Stage::of_parameter`), a bucket's stage being its last parameter's; buckets
    /// start by stage, then in order. With `overlap` the collectives are started
    /// (`Collective::start`), else run one after another.
    pub fn reduction(
        &mut self,
        kind: Kind,
        bucket_bytes: usize,
        stage_of: &dyn Fn(&str) -> usize,
        overlap: bool,
    ) -> Reduction {
        self.ensure_state();
        let groups: Vec<Vec<usize>> = match &self.state {
            State::Sharded(s) => s
                .layout
                .buckets
                .iter()
                .map(|b| b.members.iter().map(|m| m.0).collect())
                .collect(),
            State::Fresh | State::Replicated { .. } => {
                let sizes: Vec<usize> = self
                    .params
                    .iter()
                    .map(|(_, p)| p.numel() * p.kind().elt_size_in_bytes())
                    .collect();
                grad_buckets(&sizes, bucket_bytes)
                    .into_iter()
                    .map(|r| r.collect())
                    .collect()
            }
        };
        let buckets: Vec<PlannedBucket> = groups
            .into_iter()
            .map(|params| PlannedBucket {
                stage: params
                    .iter()
                    .map(|&p| stage_of(&self.params[p].0))
                    .max()
                    .unwrap_or(0),
                params,
                buf: None,
            })
            .collect();
        let mut order: Vec<usize> = (0..buckets.len()).collect();
        order.sort_by_key(|&i| (buckets[i].stage, i));
        Reduction {
            kind,
            overlap,
            buckets,
            order,
            started: 0,
            in_flight: Vec::new(),
        }
    }

    fn sync(&self) {
        if let Some(tch::Device::Cuda(i)) = self.sync_device {
            tch::Cuda::synchronize(i as i64);
        }
    }

    /// Start the reduction of every bucket whose gradients are final once the backward
    /// pass reached stage `stage` (`train::Stage::index`), in `r`'s order.
    pub fn advance(
        &mut self,
        r: &mut Reduction,
        comm: &mut dyn Collective,
        stage: usize,
    ) -> Result<()> {
        if comm.is_noop() && !self.is_sharded() {
            r.started = r.order.len();
            return Ok(());
        }
        self.sync();
        let t = std::time::Instant::now();
        while r.started < r.order.len() && r.buckets[r.order[r.started]].stage <= stage {
            let i = r.order[r.started];
            r.started += 1;
            let buf = self.bucket_buffer(r, i);
            if r.overlap {
                comm.start(
                    if self.is_sharded() {
                        Op::ReduceScatter
                    } else {
                        Op::AllReduce
                    },
                    &buf,
                )?;
                r.buckets[i].buf = Some(buf);
                r.in_flight.push(i);
                if r.in_flight.len() >= IN_FLIGHT_BUCKETS {
                    self.settle(r, comm)?;
                }
            } else {
                let mut buf = buf;
                if self.is_sharded() {
                    comm.reduce_scatter_sum(&mut buf)?;
                } else {
                    comm.all_reduce_sum(&mut buf)?;
                }
                self.finish(r, i, &buf);
            }
        }
        self.sync();
        self.reduce_seconds += t.elapsed().as_secs_f64();
        Ok(())
    }

    /// Wait for the buckets in flight and put their sums where the update reads them.
    fn settle(&mut self, r: &mut Reduction, comm: &mut dyn Collective) -> Result<()> {
        if r.in_flight.is_empty() {
            return Ok(());
        }
        comm.wait()?;
        for i in std::mem::take(&mut r.in_flight) {
            let buf = r.buckets[i].buf.take().expect("in flight");
            self.finish(r, i, &buf);
        }
        Ok(())
    }

    /// Bucket `i`'s gradients, flat in the reduction's kind (padded to a multiple of
    /// the ranks when sharded).
    fn bucket_buffer(&self, r: &Reduction, i: usize) -> Tensor {
        let members = &r.buckets[i].params;
        let mut parts: Vec<Tensor> = members
            .iter()
            .map(|&p| {
                let g = flat(&self.params[p].1.grad());
                if g.kind() == r.kind {
                    g
                } else {
                    g.to_kind(r.kind)
                }
            })
            .collect();
        if let State::Sharded(s) = &self.state {
            let b = &s.layout.buckets[i];
            let pad = b.padded(s.layout.world) - b.len;
            if pad > 0 {
                parts.push(Tensor::zeros([pad as i64], (r.kind, s.grad.device())));
            }
        }
        Tensor::cat(&parts, 0)
    }

    /// Bucket `i`'s reduced `buf` into the gradients (replicated) or this rank's
    /// gradient shard (sharded).
    fn finish(&mut self, r: &Reduction, i: usize, buf: &Tensor) {
        tch::no_grad(|| match &mut self.state {
            State::Sharded(s) => {
                let b = &s.layout.buckets[i];
                s.grad
                    .narrow(0, b.shard_offset as i64, b.seg as i64)
                    .copy_(&buf.narrow(0, (s.layout.rank * b.seg) as i64, b.seg as i64));
            }
            State::Fresh | State::Replicated { .. } => {
                let mut offset = 0;
                for &p in &r.buckets[i].params {
                    let mut g = self.params[p].1.grad();
                    let n = g.numel() as i64;
                    g.copy_(&buf.narrow(0, offset, n).view_as(&g));
                    offset += n;
                }
            }
        });
    }

    /// The step of `step`, its reduction `r` started so far by `advance` (the rest is
    /// started here).
    pub fn step_reduced(
        &mut self,
        comm: &mut dyn Collective,
        mut r: Reduction,
        lr: f64,
        max_grad_norm: f64,
    ) -> Result<f64> {
        self.advance(&mut r, comm, usize::MAX)?;
        self.sync();
        let t = std::time::Instant::now();
        self.settle(&mut r, comm)?;
        self.sync();
        self.reduce_seconds += t.elapsed().as_secs_f64();
        self.ensure_state();
        self.step += 1;
        let (step, c) = (self.step, self.config);
        match &mut self.state {
            State::Fresh => unreachable!("allocated above"),
            State::Replicated {
                master,
                exp_avg,
                exp_avg_sq,
            } => {
                let params: Vec<Tensor> =
                    self.params.iter().map(|(_, p)| p.shallow_clone()).collect();
                if master.is_empty() {
                    // The update of `torch.optim.AdamW` on the parameters themselves,
                    // the clipping folded into it.
                    let grads: Vec<Tensor> = params.iter().map(|p| p.grad()).collect();
                    let norm = global_norm(&grads);
                    let coef = clip_coef(norm, max_grad_norm);
                    for (((p, g), m), v) in params.iter().zip(&grads).zip(exp_avg).zip(exp_avg_sq) {
                        if g.defined() {
                            let mut p = p.shallow_clone();
                            adamw_update_scaled(&mut p, g, m, v, lr, step, &c, coef);
                        }
                    }
                    return Ok(norm);
                }
                let grads: Vec<Tensor> = params.iter().map(|p| p.grad()).collect();
                let norm = global_norm(&grads);
                let coef = clip_coef(norm, max_grad_norm);
                for (((p, w), m), v) in params.iter().zip(master).zip(exp_avg).zip(exp_avg_sq) {
                    let g = p.grad().to_kind(Kind::Float);
                    adamw_update_scaled(w, &g, m, v, lr, step, &c, coef);
                    tch::no_grad(|| p.shallow_clone().copy_(w));
                }
                Ok(norm)
            }
            State::Sharded(s) => {
                let (gather, secs) = (r.overlap, &mut self.reduce_seconds);
                s.update(
                    &self.params,
                    comm,
                    lr,
                    step,
                    &c,
                    max_grad_norm,
                    gather,
                    secs,
                    self.sync_device,
                )
            }
        }
    }

    /// Names, kinds and shapes of the checkpointed state, in the order `gather_state`
    /// produces it.
    pub fn state_specs(&self) -> Vec<TensorSpec> {
        let mut out = Vec::with_capacity(3 * self.params.len());
        for (name, p) in &self.params {
            for prefix in self.state_names() {
                out.push(TensorSpec {
                    name: format!("{prefix}.{name}"),
                    kind: self.state_kind,
                    shape: p.size(),
                });
            }
        }
        out
    }

    fn state_names(&self) -> &'static [&'static str] {
        if self.master {
            &["master", "exp_avg", "exp_avg_sq"]
        } else {
            &["exp_avg", "exp_avg_sq"]
        }
    }

    /// Hand every state tensor, whole, to `sink` in `state_specs` order. A collective
    /// when sharded: every rank calls it (the segments are all-gathered bucket by
    /// bucket), and each gets the full tensors.
    pub fn gather_state(
        &self,
        comm: &mut dyn Collective,
        sink: &mut dyn FnMut(&str, &Tensor) -> Result<()>,
    ) -> Result<()> {
        let names = self.state_names();
        match &self.state {
            State::Fresh => {
                for (i, (name, _)) in self.params.iter().enumerate() {
                    for (prefix, t) in names.iter().zip(self.initial_state(i)) {
                        sink(&format!("{prefix}.{name}"), &t)?;
                    }
                }
                Ok(())
            }
            State::Replicated {
                master,
                exp_avg,
                exp_avg_sq,
            } => {
                for (i, (name, _)) in self.params.iter().enumerate() {
                    let mut parts = vec![&exp_avg[i], &exp_avg_sq[i]];
                    if self.master {
                        parts.insert(0, &master[i]);
                    }
                    for (prefix, t) in names.iter().zip(parts) {
                        sink(&format!("{prefix}.{name}"), t)?;
                    }
                }
                Ok(())
            }
            State::Sharded(s) => {
                let l = &s.layout;
                let mut sources = vec![&s.exp_avg, &s.exp_avg_sq];
                if self.master {
                    sources.insert(0, &s.master);
                }
                for b in &l.buckets {
                    let mut full = Vec::with_capacity(sources.len());
                    for src in &sources {
                        let mut buf = Tensor::zeros(
                            [b.padded(l.world) as i64],
                            (self.state_kind, src.device()),
                        );
                        tch::no_grad(|| {
                            buf.narrow(0, (l.rank * b.seg) as i64, b.seg as i64)
                                .copy_(&src.narrow(0, b.shard_offset as i64, b.seg as i64))
                        });
                        comm.all_gather(&mut buf)?;
                        full.push(buf);
                    }
                    for &(p, off, n) in &b.members {
                        let (name, param) = &self.params[p];
                        for (prefix, buf) in names.iter().zip(&full) {
                            let t = buf
                                .narrow(0, off as i64, n as i64)
                                .view(param.size().as_slice());
                            sink(&format!("{prefix}.{name}"), &t)?;
                        }
                    }
                }
                Ok(())
            }
        }
    }

    /// Restore the state saved by `gather_state` (from any number of ranks); a file
    /// without master weights (an fp32 run, or an older checkpoint) leaves the master
    /// weights equal to the loaded parameters.
    pub fn load_state(&mut self, file: &SafetensorsFile, step: u64) -> Result<()> {
        let expected: std::collections::HashSet<String> =
            self.state_specs().into_iter().map(|s| s.name).collect();
        for name in file.names() {
            let optional_master = name.starts_with("master.");
            if !expected.contains(&name) && !optional_master {
                return Err(Error::Checkpoint(format!(
                    "optimizer state has `{name}`, which is not a parameter of this model"
                )));
            }
        }
        for (name, p) in &self.params {
            for prefix in ["master", "exp_avg", "exp_avg_sq"] {
                let key = format!("{prefix}.{name}");
                if prefix == "master" && (!self.master || !file.contains(&key)) {
                    continue;
                }
                match file.spec(&key) {
                    None => {
                        return Err(Error::Checkpoint(format!("optimizer state lacks `{key}`")))
                    }
                    Some((_, shape)) if shape != p.size().as_slice() => {
                        return Err(Error::Checkpoint(format!(
                            "optimizer state `{key}` has shape {shape:?}, expected {:?}",
                            p.size()
                        )))
                    }
                    Some(_) => {}
                }
            }
        }
        self.ensure_state();
        let master = self.master;
        match &mut self.state {
            State::Fresh => unreachable!("allocated above"),
            State::Replicated {
                master: masters,
                exp_avg,
                exp_avg_sq,
            } => tch::no_grad(|| -> Result<()> {
                for (i, (name, p)) in self.params.iter().enumerate() {
                    exp_avg[i].copy_(&file.read(&format!("exp_avg.{name}"))?);
                    exp_avg_sq[i].copy_(&file.read(&format!("exp_avg_sq.{name}"))?);
                    if master {
                        let key = format!("master.{name}");
                        if file.contains(&key) {
                            masters[i].copy_(&file.read(&key)?);
                        } else {
                            masters[i].copy_(p);
                        }
                    }
                }
                Ok(())
            })?,
            State::Sharded(s) => tch::no_grad(|| -> Result<()> {
                let l = &s.layout;
                for b in &l.buckets {
                    for (p, at, off, len) in b.owned(l.rank) {
                        let name = &self.params[p].0;
                        let o = (b.shard_offset + off) as i64;
                        for (prefix, dst) in [
                            ("exp_avg", &mut s.exp_avg),
                            ("exp_avg_sq", &mut s.exp_avg_sq),
                        ] {
                            dst.narrow(0, o, len as i64).copy_(&file.read_flat(
                                &format!("{prefix}.{name}"),
                                at,
                                len,
                            )?);
                        }
                        if master {
                            let key = format!("master.{name}");
                            let src = if file.contains(&key) {
                                file.read_flat(&key, at, len)?
                            } else {
                                flat(&self.params[p].1).narrow(0, at as i64, len as i64)
                            };
                            s.master.narrow(0, o, len as i64).copy_(&src);
                        }
                    }
                }
                Ok(())
            })?,
        }
        if !master {
            // Without master weights the sharded values are the parameters (just loaded).
            if let State::Sharded(s) = &mut self.state {
                let l = &s.layout;
                tch::no_grad(|| {
                    for b in &l.buckets {
                        for (p, at, off, len) in b.owned(l.rank) {
                            s.master
                                .narrow(0, (b.shard_offset + off) as i64, len as i64)
                                .copy_(&flat(&self.params[p].1).narrow(0, at as i64, len as i64));
                        }
                    }
                });
            }
        }
        self.step = step;
        Ok(())
    }

    /// After the model weights were replaced (loaded from files, broadcast from rank
    /// 0), make the master weights equal to them again.
    pub fn sync_master_from_params(&mut self) {
        let params = &self.params;
        tch::no_grad(|| match &mut self.state {
            // The master weights are taken from the parameters when allocated.
            State::Fresh => {}
            State::Replicated { master, .. } => {
                for (w, (_, p)) in master.iter_mut().zip(params) {
                    w.copy_(p);
                }
            }
            State::Sharded(s) => {
                let l = &s.layout;
                for b in &l.buckets {
                    for (p, at, off, len) in b.owned(l.rank) {
                        s.master
                            .narrow(0, (b.shard_offset + off) as i64, len as i64)
                            .copy_(&flat(&params[p].1).narrow(0, at as i64, len as i64));
                    }
                }
            }
        });
    }
}

/// Global L2 norm of `grads`, each taken in fp32.
fn global_norm(grads: &[Tensor]) -> f64 {
    let norms: Vec<Tensor> = grads
        .iter()
        .filter(|g| g.defined())
        .map(|g| g.to_kind(Kind::Float).norm())
        .collect();
    if norms.is_empty() {
        return 0.0;
    }
    Tensor::stack(&norms, 0).norm().double_value(&[])
}

/// The factor that brings a gradient of norm `norm` to `max_norm` (1 when it is below).
fn clip_coef(norm: f64, max_norm: f64) -> f64 {
    if max_norm > 0.0 && norm > max_norm {
        max_norm / (norm + 1e-6)
    } else {
        1.0
    }
}

impl Sharded {
    /// Clip with the global norm (its square summed over the ranks), update this
    /// rank's segments bucket by bucket and all-gather the new parameters: each
    /// bucket's gather started beside the next bucket's update with `overlap`. The time
    /// in the gathers goes to `reduce_seconds`. Returns the norm.
    #[allow(clippy::too_many_arguments)]
    fn update(
        &mut self,
        params: &[(String, Tensor)],
        comm: &mut dyn Collective,
        lr: f64,
        step: u64,
        c: &AdamWConfig,
        max_grad_norm: f64,
        overlap: bool,
        reduce_seconds: &mut f64,
        sync_device: Option<tch::Device>,
    ) -> Result<f64> {
        let sync = || {
            if let Some(tch::Device::Cuda(i)) = sync_device {
                tch::Cuda::synchronize(i as i64);
            }
        };
        let local = self.grad.square().sum(Kind::Double).double_value(&[]);
        let norm = all_reduce_f64(comm, &[local])?[0].sqrt();
        let coef = clip_coef(norm, max_grad_norm);
        if coef < 1.0 {
            tch::no_grad(|| {
                let _ = self.grad.g_mul_scalar_(coef);
            });
        }
        let (rank, world) = (self.layout.rank, self.layout.world);
        let gathered = |buf: &Tensor, b: &Bucket| {
            tch::no_grad(|| {
                for &(p, off, n) in &b.members {
                    flat(&params[p].1).copy_(&buf.narrow(0, off as i64, n as i64));
                }
            })
        };
        // Bucket by bucket, so the update's temporaries stay bucket-sized.
        let update = |me: &mut Self, b: &Bucket| {
            let part = |t: &Tensor| t.narrow(0, b.shard_offset as i64, b.seg as i64);
            let g = part(&me.grad).to_kind(me.master.kind());
            adamw_update(
                &mut part(&me.master),
                &g,
                &mut part(&me.exp_avg),
                &mut part(&me.exp_avg_sq),
                lr,
                step,
                c,
            );
        };
        let gather_buffer = |me: &Self, b: &Bucket| {
            let kind = params[b.members[0].0].1.kind();
            let buf = Tensor::zeros([b.padded(world) as i64], (kind, me.master.device()));
            tch::no_grad(|| {
                buf.narrow(0, (rank * b.seg) as i64, b.seg as i64)
                    .copy_(&me.master.narrow(0, b.shard_offset as i64, b.seg as i64))
            });
            buf
        };
        let buckets = self.layout.buckets.clone();
        if !overlap {
            for b in &buckets {
                update(self, b);
            }
            sync();
            let t = std::time::Instant::now();
            for b in &buckets {
                let mut buf = gather_buffer(self, b);
                comm.all_gather(&mut buf)?;
                gathered(&buf, b);
            }
            sync();
            *reduce_seconds += t.elapsed().as_secs_f64();
            return Ok(norm);
        }
        let mut in_flight: Vec<(Tensor, &Bucket)> = Vec::new();
        let mut wait_all =
            |in_flight: &mut Vec<(Tensor, &Bucket)>, comm: &mut dyn Collective| -> Result<()> {
                sync();
                let t = std::time::Instant::now();
                comm.wait()?;
                for (buf, b) in in_flight.drain(..) {
                    gathered(&buf, b);
                }
                sync();
                *reduce_seconds += t.elapsed().as_secs_f64();
                Ok(())
            };
        for b in &buckets {
            update(self, b);
            let buf = gather_buffer(self, b);
            comm.start(Op::AllGather, &buf)?;
            in_flight.push((buf, b));
            if in_flight.len() >= IN_FLIGHT_BUCKETS {
                wait_all(&mut in_flight, comm)?;
            }
        }
        wait_all(&mut in_flight, comm)?;
        Ok(norm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_of_every_rank_cover_each_bucket_once() {
        let numels = [5usize, 3, 17, 2, 2, 9];
        for world in 1..5 {
            let layouts: Vec<Layout> = (0..world)
                .map(|r| Layout::new(&numels, 8, r, world))
                .collect();
            let mut covered = vec![vec![0u32; 0]; numels.len()];
            for (p, n) in numels.iter().enumerate() {
                covered[p] = vec![0; *n];
            }
            for l in &layouts {
                for b in &l.buckets {
                    for (p, at, _, len) in b.owned(l.rank) {
                        for c in &mut covered[p][at..at + len] {
                            *c += 1;
                        }
                    }
                }
            }
            assert!(
                covered.iter().flatten().all(|&c| c == 1),
                "world {world}: {covered:?}"
            );
            // A parameter larger than a bucket is a bucket of its own.
            assert!(layouts[0]
                .buckets
                .iter()
                .any(|b| b.members.len() == 1 && b.len == 17));
        }
    }
}
