//! NCCL collectives on CUDA tensors, through cudarc's dynamically loaded NCCL.
//!
//! Calls go to the legacy default stream (a null `cudaStream_t`), which is the stream
//! libtorch issues its kernels on unless a program changes it (we never do): the
//! all-reduce is ordered after the backward kernels that wrote the gradients and
//! before the optimizer kernels that read them, with no host synchronisation.
//!
//! cudarc's loader panics when a library is missing, so nothing here touches cudarc
//! before `available()` said yes (docs/design.md, "libtorch and CUDA").

use cudarc::nccl::{result, sys};
use tch::{Device, Kind, Tensor};

use super::collective::Collective;
use crate::error::{Error, Result};

/// Length of an NCCL unique id (`ncclUniqueId`).
pub const ID_BYTES: usize = 128;

pub struct Nccl {
    comm: sys::ncclComm_t,
    rank: usize,
    world: usize,
    device: Device,
}

// SAFETY: an NCCL communicator may be used from any thread as long as calls are not
// concurrent; `Collective` methods take `&mut self`.
unsafe impl Send for Nccl {}

fn nccl_error(what: &str, e: result::NcclError) -> Error {
    Error::io(
        format!("NCCL {what}"),
        std::io::Error::other(format!("{:?}", e.0)),
    )
}

/// Whether CUDA devices and the NCCL library can be used (checked without cudarc
/// panicking: libtorch answers for CUDA, a plain `dlopen` probe for NCCL).
pub fn available() -> bool {
    tch::Cuda::is_available() && unsafe { sys::is_culib_present() }
}

/// The guard before any cudarc call.
fn require() -> Result<()> {
    if available() {
        return Ok(());
    }
    Err(Error::Config(
        "NCCL requested but CUDA or libnccl.so is not available (check LD_LIBRARY_PATH)".into(),
    ))
}

/// A new unique id (rank 0 makes it; the rendezvous hands it to the others).
pub fn unique_id() -> Result<Vec<u8>> {
    require()?;
    let id = result::get_uniqueid().map_err(|e| nccl_error("get unique id", e))?;
    Ok(id.internal.iter().map(|&c| c as u8).collect())
}

impl Nccl {
    /// Join the communicator `id` as `rank` of `world`, on CUDA device `local_rank`.
    pub fn new(rank: usize, world: usize, local_rank: usize, id: &[u8]) -> Result<Self> {
        require()?;
        if id.len() != ID_BYTES {
            return Err(Error::Config(format!(
                "NCCL unique id has {} bytes, expected {ID_BYTES}",
                id.len()
            )));
        }
        cudarc::runtime::result::device::set(local_rank as i32).map_err(|e| {
            Error::io(
                format!("selecting CUDA device {local_rank}"),
                std::io::Error::other(format!("{e:?}")),
            )
        })?;
        let mut internal = [0 as std::ffi::c_char; ID_BYTES];
        for (d, s) in internal.iter_mut().zip(id) {
            *d = *s as std::ffi::c_char;
        }
        let mut comm = std::ptr::null_mut();
        // SAFETY: `comm` is a valid out-pointer; the id came from ncclGetUniqueId.
        unsafe {
            result::comm_init_rank(
                &mut comm,
                world as i32,
                sys::ncclUniqueId { internal },
                rank as i32,
            )
        }
        .map_err(|e| nccl_error("init rank", e))?;
        Ok(Self {
            comm,
            rank,
            world,
            device: Device::Cuda(local_rank),
        })
    }

    fn dtype(kind: Kind) -> Option<sys::ncclDataType_t> {
        use sys::ncclDataType_t::*;
        Some(match kind {
            Kind::Float => ncclFloat32,
            Kind::Double => ncclFloat64,
            Kind::BFloat16 => ncclBfloat16,
            Kind::Half => ncclFloat16,
            Kind::Int64 => ncclInt64,
            _ => return None,
        })
    }

    /// Run `f` on a contiguous copy of `t` on our device (or `t` itself when it already
    /// is one), writing the result back.
    fn on_device(
        &self,
        t: &mut Tensor,
        f: impl FnOnce(&Tensor, sys::ncclDataType_t) -> Result<()>,
    ) -> Result<()> {
        let direct =
            t.device() == self.device && t.is_contiguous() && Self::dtype(t.kind()).is_some();
        let work = if direct {
            t.shallow_clone()
        } else {
            let kind = if Self::dtype(t.kind()).is_some() {
                t.kind()
            } else {
                Kind::Float
            };
            t.to_device(self.device).to_kind(kind).contiguous()
        };
        f(&work, Self::dtype(work.kind()).expect("supported kind"))?;
        if !direct {
            tch::no_grad(|| t.copy_(&work));
        }
        Ok(())
    }
}

impl Collective for Nccl {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn is_noop(&self) -> bool {
        false
    }

    fn all_reduce_sum(&mut self, t: &mut Tensor) -> Result<()> {
        let comm = self.comm;
        self.on_device(t, |w, dtype| {
            let p = w.data_ptr();
            // SAFETY: `w` is a contiguous CUDA tensor of `numel` elements of `dtype`,
            // alive until the call is enqueued; in-place is allowed by NCCL.
            unsafe {
                result::all_reduce(
                    p,
                    p,
                    w.numel(),
                    dtype,
                    sys::ncclRedOp_t::ncclSum,
                    comm,
                    std::ptr::null_mut(),
                )
            }
            .map(|_| ())
            .map_err(|e| nccl_error("all-reduce", e))
        })
    }

    fn reduce_scatter_sum(&mut self, t: &mut Tensor) -> Result<()> {
        let (comm, rank, world) = (self.comm, self.rank, self.world);
        self.on_device(t, |w, dtype| {
            let seg = w.numel() / world;
            let p = w.data_ptr();
            let elt = w.kind().elt_size_in_bytes();
            // SAFETY: `w` is a contiguous CUDA tensor of `world * seg` elements; NCCL's
            // in-place form has the receive buffer at `send + rank * recvcount`.
            unsafe {
                result::reduce_scatter(
                    p,
                    (p as *mut u8).add(rank * seg * elt) as *mut std::ffi::c_void,
                    seg,
                    dtype,
                    sys::ncclRedOp_t::ncclSum,
                    comm,
                    std::ptr::null_mut(),
                )
            }
            .map(|_| ())
            .map_err(|e| nccl_error("reduce-scatter", e))
        })
    }

    fn all_gather(&mut self, t: &mut Tensor) -> Result<()> {
        let (comm, rank, world) = (self.comm, self.rank, self.world);
        self.on_device(t, |w, dtype| {
            let seg = w.numel() / world;
            let p = w.data_ptr();
            let elt = w.kind().elt_size_in_bytes();
            // SAFETY: as above; in place, the send buffer is `recv + rank * sendcount`.
            unsafe {
                result::all_gather(
                    (p as *const u8).add(rank * seg * elt) as *const std::ffi::c_void,
                    p,
                    seg,
                    dtype,
                    comm,
                    std::ptr::null_mut(),
                )
            }
            .map(|_| ())
            .map_err(|e| nccl_error("all-gather", e))
        })
    }

    fn broadcast(&mut self, t: &mut Tensor, root: usize) -> Result<()> {
        let comm = self.comm;
        self.on_device(t, |w, dtype| {
            let p = w.data_ptr();
            // SAFETY: as above.
            unsafe {
                result::broadcast(
                    p,
                    p,
                    w.numel(),
                    dtype,
                    root as i32,
                    comm,
                    std::ptr::null_mut(),
                )
            }
            .map(|_| ())
            .map_err(|e| nccl_error("broadcast", e))
        })
    }
}

impl Drop for Nccl {
    fn drop(&mut self) {
        // SAFETY: the communicator was created by comm_init_rank and is not used again.
        let _ = unsafe { result::comm_destroy(self.comm) };
    }
}
