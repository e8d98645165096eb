//! A checkpoint's state copied into host memory, so that the step loop can go on while
//! the copy is hashed, written and uploaded: every file of the checkpoint laid out
//! exactly as the streaming save writes it (same header, same order), its tensor data
//! copied straight into place (a device-to-host copy on CUDA, a memcpy on CPU).

use std::path::Path;
use std::sync::Arc;

use tch::nn::VarStore;
use tch::{Device, Tensor};

use super::{TrainerState, MAX_SHARD_BYTES, OPTIMIZER, TOKENIZER, TRAINER_STATE};
use crate::dist::Collective;
use crate::error::{Error, IoContext, Result};
use crate::model::{model_files, safetensors_header, ModelConfig, TensorSpec, SHARD_INDEX};
use crate::optim::Optimizer;

/// One file of a snapshot, whole.
pub(super) struct SnapshotFile {
    pub path: String,
    pub bytes: Arc<Vec<u8>>,
    /// A buffer of the pool (tensor data), handed back to it once written.
    pub pooled: bool,
}

/// Every file of the checkpoint of `step`, in the order the manifest lists them.
pub(super) struct Snapshot {
    pub step: u64,
    pub files: Vec<SnapshotFile>,
}

/// The host buffers snapshots copy tensors into, one per tensor file, kept from one save
/// to the next: after the first save no buffer of the model's size is allocated again.
#[derive(Default)]
pub struct HostBuffers {
    /// In the order of the snapshot's tensor files; a buffer still in use is absent.
    free: Vec<Vec<u8>>,
    allocations: usize,
}

impl HostBuffers {
    /// How many buffers were ever allocated (reuse keeps it at the number of files).
    pub fn allocations(&self) -> usize {
        self.allocations
    }

    /// Buffer `i`, `len` bytes long; its content is whatever the last save left (the
    /// caller overwrites every byte).
    fn take(&mut self, i: usize, len: usize) -> Vec<u8> {
        let mut b = self.free.get_mut(i).map(std::mem::take).unwrap_or_default();
        if b.capacity() < len {
            self.allocations += 1;
            b = Vec::with_capacity(len);
        }
        // Free when the length is unchanged (every save after the first).
        b.resize(len, 0);
        b
    }

    /// The buffers of a written snapshot, in the order they were taken.
    pub(super) fn give_back(&mut self, buffers: Vec<Vec<u8>>) {
        self.free = buffers;
    }
}

/// A safetensors file being filled in a host buffer: the header, then each tensor's
/// bytes at its offset, checked against the specs as the streaming writer does.
struct HostFile {
    path: String,
    buf: Vec<u8>,
    specs: Vec<TensorSpec>,
    next: usize,
    at: usize,
}

impl HostFile {
    fn new(
        path: &str,
        specs: Vec<TensorSpec>,
        buffers: &mut HostBuffers,
        i: usize,
    ) -> Result<Self> {
        let header = safetensors_header(&specs)?;
        let len = header.len() + specs.iter().map(TensorSpec::bytes).sum::<usize>();
        let mut buf = buffers.take(i, len);
        buf[..header.len()].copy_from_slice(&header);
        Ok(Self {
            path: path.into(),
            buf,
            specs,
            next: 0,
            at: header.len(),
        })
    }

    fn copy(&mut self, name: &str, t: &Tensor) -> Result<()> {
        let spec = self.specs.get(self.next).ok_or_else(|| {
            Error::Model(format!(
                "{}: more tensors than announced ({name})",
                self.path
            ))
        })?;
        if spec.name != name || spec.kind != t.kind() || spec.shape != t.size() {
            return Err(Error::Model(format!(
                "{}: expected {} {:?} {:?} next, got {name} {:?} {:?}",
                self.path,
                spec.name,
                spec.kind,
                spec.shape,
                t.kind(),
                t.size()
            )));
        }
        let n = spec.bytes();
        if n > 0 {
            copy_to_host(&mut self.buf[self.at..self.at + n], t);
        }
        self.at += n;
        self.next += 1;
        Ok(())
    }

    fn finish(self) -> Result<SnapshotFile> {
        if self.next != self.specs.len() {
            return Err(Error::Model(format!(
                "{}: {} of {} tensors copied",
                self.path,
                self.next,
                self.specs.len()
            )));
        }
        Ok(SnapshotFile {
            path: self.path,
            bytes: Arc::new(self.buf),
            pooled: true,
        })
    }
}

/// Copy `t` (on any device, any layout) into `dst`, which holds exactly its bytes.
fn copy_to_host(dst: &mut [u8], t: &Tensor) {
    // SAFETY: `dst` is exactly the bytes of a contiguous CPU tensor of `t`'s shape and
    // kind, and outlives the view, which is dropped before this returns.
    let mut view = unsafe {
        Tensor::from_blob(
            dst.as_mut_ptr(),
            t.size().as_slice(),
            &[],
            t.kind(),
            Device::Cpu,
        )
    };
    tch::no_grad(|| view.copy_(t));
}

fn small(path: &str, bytes: Vec<u8>) -> SnapshotFile {
    SnapshotFile {
        path: path.into(),
        bytes: Arc::new(bytes),
        pooled: false,
    }
}

/// Copy the checkpoint of `state.step` into `buffers` (rank 0; with a sharded optimizer
/// the other ranks call `Optimizer::gather_state` at the same time, as for a save).
pub(super) fn take(
    buffers: &mut HostBuffers,
    vs: &VarStore,
    model_config: &ModelConfig,
    tokenizer_json: &Path,
    optimizer: &Optimizer,
    comm: &mut dyn Collective,
    state: &TrainerState,
) -> Result<Snapshot> {
    let mut opt = HostFile::new(OPTIMIZER, optimizer.state_specs(), buffers, 0)?;
    optimizer.gather_state(comm, &mut |name, t| opt.copy(name, t))?;
    let mut files = vec![opt.finish()?];
    let model = model_files(vs, model_config, MAX_SHARD_BYTES);
    files.push(small("config.json", model.config_json));
    for (i, (path, tensors)) in model.shards.iter().enumerate() {
        let specs = tensors.iter().map(|(n, t)| TensorSpec::of(n, t)).collect();
        let mut f = HostFile::new(path, specs, buffers, i + 1)?;
        for (n, t) in tensors {
            f.copy(n, t)?;
        }
        files.push(f.finish()?);
    }
    if let Some(index) = model.index_json {
        files.push(small(SHARD_INDEX, index));
    }
    let tokenizer = std::fs::read(tokenizer_json).ctx(|| tokenizer_json.display().to_string())?;
    files.push(small(TOKENIZER, tokenizer));
    let state_json = serde_json::to_vec_pretty(state).expect("state serializes");
    files.push(small(TRAINER_STATE, state_json));
    Ok(Snapshot {
        step: state.step,
        files,
    })
}
