//! Collectives behind one interface: every rank calls the same operations in the same
//! order; the TCP ring (`ring`) and NCCL (`nccl`) implement it, `Single` is a job of one.
//! Gradient bucketing and parameter broadcast are written once on top.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use tch::{Kind, Tensor};

use crate::error::Result;

/// A collective that can be started now and waited for later (`Collective::start`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    AllReduce,
    ReduceScatter,
    AllGather,
}

/// Collective operations across the ranks of a job. Every rank must call the same
/// operations in the same order with tensors of the same shape.
pub trait Collective: Send {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// Whether collectives can be skipped (a job of one without a real communicator).
    fn is_noop(&self) -> bool {
        self.world_size() == 1
    }
    /// Sum `t` (contiguous) over all ranks, in place.
    fn all_reduce_sum(&mut self, t: &mut Tensor) -> Result<()>;
    /// Replace `t` with rank `root`'s copy.
    fn broadcast(&mut self, t: &mut Tensor, root: usize) -> Result<()>;
    /// `t` (contiguous, length a multiple of the world size) is cut into `world` equal
    /// segments; afterwards segment `rank` holds the sum over all ranks of that segment
    /// (the other segments hold partial sums and are not to be read).
    fn reduce_scatter_sum(&mut self, t: &mut Tensor) -> Result<()>;
    /// `t` is cut like `reduce_scatter_sum`; each rank's segment `rank` is its
    /// contribution, and afterwards every segment holds the contribution of its rank.
    fn all_gather(&mut self, t: &mut Tensor) -> Result<()>;

    /// For a communicator whose calls return before the collectives are done (NCCL,
    /// which only enqueues them; `Background`): add each collective's own time to
    /// `nanos` as it completes (for NCCL the device's, between CUDA events), and say so.
    /// A synchronous one answers false: the wall time of its calls is the measure.
    fn time_collectives_into(&mut self, _nanos: Arc<AtomicU64>) -> bool {
        false
    }

    /// Begin `op` on `t` in place (the gradient buckets of a backward pass still
    /// running, the next bucket's all-gather during an update); `t`'s values are
    /// defined only after `wait`, and the caller leaves `t` alone until then. Started
    /// and synchronous calls run in the order they were made. A communicator that
    /// cannot run in the background runs it now (this default).
    fn start(&mut self, op: Op, t: &Tensor) -> Result<()> {
        let mut t = t.shallow_clone();
        match op {
            Op::AllReduce => self.all_reduce_sum(&mut t),
            Op::ReduceScatter => self.reduce_scatter_sum(&mut t),
            Op::AllGather => self.all_gather(&mut t),
        }
    }

    /// Wait for every started collective: their results are in place for whatever
    /// runs next.
    fn wait(&mut self) -> Result<()> {
        Ok(())
    }

    fn barrier(&mut self) -> Result<()> {
        let mut t = Tensor::zeros([1], (Kind::Float, tch::Device::Cpu));
        self.all_reduce_sum(&mut t)
    }
}

/// A job of one process: every collective is the identity.
pub struct Single;

impl Collective for Single {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&mut self, _: &mut Tensor) -> Result<()> {
        Ok(())
    }
    fn broadcast(&mut self, _: &mut Tensor, _: usize) -> Result<()> {
        Ok(())
    }
    fn reduce_scatter_sum(&mut self, _: &mut Tensor) -> Result<()> {
        Ok(())
    }
    fn all_gather(&mut self, _: &mut Tensor) -> Result<()> {
        Ok(())
    }
}

/// Sum host-side scalars over all ranks (step token counts, metric sums).
pub fn all_reduce_f64(comm: &mut dyn Collective, values: &[f64]) -> Result<Vec<f64>> {
    if comm.is_noop() {
        return Ok(values.to_vec());
    }
    let mut t = Tensor::from_slice(values);
    comm.all_reduce_sum(&mut t)?;
    Ok(Vec::<f64>::try_from(&t).expect("f64 tensor"))
}

/// All-reduce the gradients of `params` in buckets of about `bucket_bytes`, so a step
/// makes a few large calls instead of one per parameter; the sums are taken in `kind`
/// (the gradients' own when `None`).
pub fn all_reduce_grads(
    comm: &mut dyn Collective,
    params: &[Tensor],
    bucket_bytes: usize,
    kind: Option<Kind>,
) -> Result<()> {
    // A real communicator runs even alone, so a one-GPU check exercises NCCL.
    if comm.is_noop() {
        return Ok(());
    }
    let grads: Vec<Tensor> = params.iter().map(|p| p.grad()).collect();
    let sizes: Vec<usize> = grads.iter().map(grad_bytes).collect();
    for range in grad_buckets(&sizes, bucket_bytes) {
        let bucket = &grads[range];
        let mut flat = Tensor::cat(&bucket.iter().map(|g| g.view([-1])).collect::<Vec<_>>(), 0);
        if let Some(k) = kind.filter(|&k| k != flat.kind()) {
            flat = flat.to_kind(k);
        }
        comm.all_reduce_sum(&mut flat)?;
        let mut offset = 0;
        tch::no_grad(|| {
            for g in bucket {
                let n = g.numel() as i64;
                let mut g = g.shallow_clone();
                g.copy_(&flat.narrow(0, offset, n).view_as(&g));
                offset += n;
            }
        });
    }
    Ok(())
}

/// Consecutive runs of tensors of `sizes` bytes of about `bucket_bytes` each (a larger
/// tensor is a run of its own): the buckets of `all_reduce_grads`.
pub fn grad_buckets(sizes: &[usize], bucket_bytes: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < sizes.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < sizes.len() && (end == start || bytes + sizes[end] <= bucket_bytes) {
            bytes += sizes[end];
            end += 1;
        }
        out.push(start..end);
        start = end;
    }
    out
}

fn grad_bytes(g: &Tensor) -> usize {
    g.numel() * g.kind().elt_size_in_bytes()
}

/// Copy rank `root`'s values of `params` to every rank.
pub fn broadcast_params(comm: &mut dyn Collective, params: &[Tensor], root: usize) -> Result<()> {
    if comm.is_noop() {
        return Ok(());
    }
    for p in params {
        let mut t = p.detach().contiguous();
        comm.broadcast(&mut t, root)?;
        let mut p = p.shallow_clone();
        tch::no_grad(|| p.copy_(&t));
    }
    Ok(())
}
