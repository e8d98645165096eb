//! NCCL collectives on CUDA tensors.
//!
//! Calls go to the legacy default stream (a null `cudaStream_t`), which is the stream
//! libtorch issues its kernels on unless a program changes it (we never do): the
//! all-reduce is ordered after the backward kernels that wrote the gradients and
//! before the optimizer kernels that read them, with no host synchronisation.
//!
//! Every collective is watched (`watchdog`): one that makes no progress for
//! `distributed.timeout_seconds`, or an asynchronous NCCL error, aborts the
//! communicator (`ncclCommAbort`; never `ncclCommDestroy` with work in flight, which
//! can block) and exits with the retryable code, so the operator restarts the gang
//! instead of a stalled job running forever. The watchdog's events also give the
//! device time of the collectives (`Collective::time_device_into`).
//!
//! The library is NCCL 2.x opened by its soname (`lib`); the CUDA runtime calls go
//! through cudarc. Neither is touched before `available()` said yes, so CPU runs never
//! load CUDA (docs/design.md, "libtorch and CUDA").

mod lib;
pub mod watchdog;

use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cudarc::runtime::{result as cuda, sys as cuda_sys};
use tch::{Device, Kind, Tensor};

use super::Collective;
use crate::error::{Error, Result};
use lib::{DataType, SUCCESS, SUM};
use watchdog::Watchdog;

pub use lib::PATH_ENV as LIBRARY_ENV;

/// Length of an NCCL unique id (`ncclUniqueId`).
pub const ID_BYTES: usize = 128;

pub struct Nccl {
    /// Shared with the watchdog, which aborts it; null once destroyed.
    comm: Arc<AtomicPtr<c_void>>,
    rank: usize,
    world: usize,
    device: Device,
    nccl: &'static lib::Nccl,
    /// `None` only while dropping.
    watchdog: Option<Watchdog<CudaEvents>>,
}

// SAFETY: an NCCL communicator may be used from any thread as long as calls are not
// concurrent; `Collective` methods take `&mut self`. The watchdog only queries it.
unsafe impl Send for Nccl {}

fn nccl_error(what: &str, detail: String) -> Error {
    Error::io(format!("NCCL {what}"), std::io::Error::other(detail))
}

/// Whether CUDA devices and the NCCL library can be used (libtorch answers for CUDA;
/// opening the library touches no GPU).
pub fn available() -> bool {
    tch::Cuda::is_available() && lib::get().is_ok()
}

/// The guard before any NCCL or CUDA call.
fn require() -> Result<&'static lib::Nccl> {
    if !tch::Cuda::is_available() {
        return Err(Error::Config(
            "NCCL requested but CUDA is not available".into(),
        ));
    }
    lib::get().map_err(|e| Error::Config(format!("NCCL requested but {e}")))
}

/// `(major, minor, patch)` of the NCCL this process would use, and where it came
/// from; needs no GPU.
pub fn version() -> Result<((u32, u32, u32), &'static str)> {
    let nccl = lib::get().map_err(Error::Config)?;
    let v = nccl.version().map_err(|e| nccl_error("get version", e))?;
    Ok((v, nccl.source.as_str()))
}

/// A new unique id (rank 0 makes it; the rendezvous hands it to the others).
pub fn unique_id() -> Result<Vec<u8>> {
    let nccl = require()?;
    let mut id = lib::UniqueId {
        internal: [0; ID_BYTES],
    };
    // SAFETY: a valid out-pointer.
    let rc = unsafe { (nccl.get_unique_id)(&mut id) };
    if rc != SUCCESS {
        return Err(nccl_error("get unique id", nccl.error_string(rc)));
    }
    Ok(id.internal.iter().map(|&c| c as u8).collect())
}

/// Element type of a tensor as NCCL names it.
fn dtype(kind: Kind) -> Option<DataType> {
    Some(match kind {
        Kind::Float => DataType::Float32,
        Kind::Double => DataType::Float64,
        Kind::BFloat16 => DataType::Bfloat16,
        Kind::Half => DataType::Float16,
        Kind::Int64 => DataType::Int64,
        Kind::Int => DataType::Int32,
        Kind::Int8 => DataType::Int8,
        Kind::Uint8 => DataType::Uint8,
        _ => return None,
    })
}

impl Nccl {
    /// Join the communicator `id` as `rank` of `world`, on CUDA device `local_rank`,
    /// with the default deadline.
    pub fn new(rank: usize, world: usize, local_rank: usize, id: &[u8]) -> Result<Self> {
        Self::with_timeout(rank, world, local_rank, id, super::DEFAULT_TIMEOUT)
    }

    /// As `new`; init and every collective must make progress within `timeout`.
    pub fn with_timeout(
        rank: usize,
        world: usize,
        local_rank: usize,
        id: &[u8],
        timeout: Duration,
    ) -> Result<Self> {
        let nccl = require()?;
        if id.len() != ID_BYTES {
            return Err(Error::Config(format!(
                "NCCL unique id has {} bytes, expected {ID_BYTES}",
                id.len()
            )));
        }
        cuda::device::set(local_rank as i32).map_err(|e| {
            Error::io(
                format!("selecting CUDA device {local_rank}"),
                std::io::Error::other(format!("{e:?}")),
            )
        })?;
        let mut unique = lib::UniqueId {
            internal: [0; ID_BYTES],
        };
        for (d, s) in unique.internal.iter_mut().zip(id) {
            *d = *s as std::ffi::c_char;
        }
        let comm = Arc::new(AtomicPtr::new(std::ptr::null_mut()));
        let events = CudaEvents {
            ordinal: local_rank as i32,
            comm: comm.clone(),
            nccl,
        };
        let to_abort = comm.clone();
        let watchdog = Watchdog::start(events, timeout, move |msg| {
            fail_fast(nccl, rank, &to_abort, &msg)
        });
        let mut raw: lib::Comm = std::ptr::null_mut();
        let rc = watchdog.host_call(
            &format!("NCCL communicator init (rank {rank} of {world})"),
            // SAFETY: `raw` is a valid out-pointer; the id came from ncclGetUniqueId.
            || unsafe { (nccl.comm_init_rank)(&mut raw, world as c_int, unique, rank as c_int) },
        );
        if rc != SUCCESS {
            let detail = nccl.last_error(std::ptr::null_mut());
            return Err(nccl_error(
                "init rank",
                format!(
                    "{}{}",
                    nccl.error_string(rc),
                    detail.map(|d| format!(": {d}")).unwrap_or_default()
                ),
            ));
        }
        comm.store(raw, Ordering::SeqCst);
        if rank == 0 {
            if let Ok((v, source)) = version() {
                tracing::info!(
                    nccl = format!("{}.{}.{}", v.0, v.1, v.2),
                    library = source,
                    timeout_seconds = timeout.as_secs(),
                    "NCCL communicator ready"
                );
            }
        }
        Ok(Self {
            comm,
            rank,
            world,
            device: Device::Cuda(local_rank),
            nccl,
            watchdog: Some(watchdog),
        })
    }

    /// Run `op` on a contiguous copy of `t` on our device (or `t` itself when it already
    /// is one), under the watchdog, writing the result back. `op` gets the library, the
    /// communicator, the data pointer, the element count and type.
    fn run(
        &mut self,
        name: &str,
        t: &mut Tensor,
        op: impl FnOnce(&lib::Nccl, lib::Comm, *mut c_void, usize, DataType) -> c_int,
    ) -> Result<()> {
        let direct = t.device() == self.device && t.is_contiguous() && dtype(t.kind()).is_some();
        let work = if direct {
            t.shallow_clone()
        } else {
            let kind = if dtype(t.kind()).is_some() {
                t.kind()
            } else {
                Kind::Float
            };
            t.to_device(self.device).to_kind(kind).contiguous()
        };
        let kind = work.kind();
        let n = work.numel();
        let comm = self.comm.load(Ordering::SeqCst);
        let nccl = self.nccl;
        let watchdog = self.watchdog.as_ref().expect("not dropped");
        watchdog
            .collective(
                || {
                    let mib = (n * kind.elt_size_in_bytes()) as f64 / (1u64 << 20) as f64;
                    format!("NCCL {name} of {mib:.1} MiB ({kind:?})")
                },
                || {
                    let rc = op(
                        nccl,
                        comm,
                        work.data_ptr(),
                        n,
                        dtype(kind).expect("supported"),
                    );
                    if rc == SUCCESS {
                        return Ok(());
                    }
                    let detail = nccl
                        .last_error(comm)
                        .map(|d| format!(": {d}"))
                        .unwrap_or_default();
                    Err(format!("{}{detail}", nccl.error_string(rc)))
                },
            )
            .map_err(|e| nccl_error(name, format!("rank {}: {e}", self.rank)))?;
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

    fn time_device_into(&mut self, nanos: Arc<AtomicU64>) -> bool {
        if let Some(w) = &self.watchdog {
            w.time_into(nanos);
        }
        true
    }

    fn all_reduce_sum(&mut self, t: &mut Tensor) -> Result<()> {
        // SAFETY (all four): `p` is a contiguous CUDA tensor of `n` elements of `dt`,
        // alive until the call is enqueued and, through the caching allocator's stream
        // order, until the kernel ran; in-place forms as NCCL defines them.
        self.run("all-reduce", t, |nccl, comm, p, n, dt| unsafe {
            (nccl.all_reduce)(p, p, n, dt as c_int, SUM, comm, std::ptr::null_mut())
        })
    }

    fn reduce_scatter_sum(&mut self, t: &mut Tensor) -> Result<()> {
        let (rank, world) = (self.rank, self.world);
        // NCCL's in-place form has the receive buffer at `send + rank * recvcount`.
        self.run("reduce-scatter", t, |nccl, comm, p, n, dt| unsafe {
            let seg = n / world;
            let recv = (p as *mut u8).add(rank * seg * dt.size()) as *mut c_void;
            (nccl.reduce_scatter)(p, recv, seg, dt as c_int, SUM, comm, std::ptr::null_mut())
        })
    }

    fn all_gather(&mut self, t: &mut Tensor) -> Result<()> {
        let (rank, world) = (self.rank, self.world);
        // In place, the send buffer is `recv + rank * sendcount`.
        self.run("all-gather", t, |nccl, comm, p, n, dt| unsafe {
            let seg = n / world;
            let send = (p as *const u8).add(rank * seg * dt.size()) as *const c_void;
            (nccl.all_gather)(send, p, seg, dt as c_int, comm, std::ptr::null_mut())
        })
    }

    fn broadcast(&mut self, t: &mut Tensor, root: usize) -> Result<()> {
        self.run("broadcast", t, |nccl, comm, p, n, dt| unsafe {
            (nccl.broadcast)(
                p,
                p,
                n,
                dt as c_int,
                root as c_int,
                comm,
                std::ptr::null_mut(),
            )
        })
    }
}

impl Drop for Nccl {
    fn drop(&mut self) {
        // Destroy only with nothing in flight (it may block otherwise); stop the
        // watchdog first, so that it never touches a freed communicator.
        let idle = self.watchdog.as_ref().map(|w| w.drain()).unwrap_or(false);
        drop(self.watchdog.take());
        let comm = self.comm.swap(std::ptr::null_mut(), Ordering::SeqCst);
        if comm.is_null() {
            return;
        }
        // SAFETY: the communicator came from ncclCommInitRank and is not used again.
        unsafe {
            if idle {
                (self.nccl.comm_destroy)(comm);
            } else {
                (self.nccl.comm_abort)(comm);
            }
        }
    }
}

/// The watchdog's failure: say what stalled, abort the communicator (so that its
/// resources and any peer still waiting on this rank are released) and exit with the
/// retryable code. Exiting from here, not returning an error, because the training
/// thread may be blocked in a CUDA call that only the abort (or nothing) ends.
fn fail_fast(nccl: &'static lib::Nccl, rank: usize, comm: &AtomicPtr<c_void>, msg: &str) {
    let code = janus_crds::exit_code::RETRYABLE;
    let msg = format!(
        "rank {rank}: {msg}; aborting the NCCL communicator and exiting {code} so that the gang restarts"
    );
    tracing::error!(exit_code = code, "{msg}");
    eprintln!("error: {msg}");
    crate::report::write_termination_message(&msg);
    let comm = comm.swap(std::ptr::null_mut(), Ordering::SeqCst) as usize;
    if comm != 0 {
        // A wedged driver must not keep the process alive: the abort gets 10 s.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // SAFETY: a live communicator, swapped out so nothing else frees it.
            unsafe { (nccl.comm_abort)(comm as lib::Comm) };
            let _ = tx.send(());
        });
        let _ = rx.recv_timeout(Duration::from_secs(10));
    }
    // SAFETY: ends the process without running destructors or atexit handlers, which
    // could block in CUDA while a kernel is stuck.
    unsafe { libc::_exit(code) }
}

/// CUDA events on the legacy default stream, for the watchdog.
struct CudaEvents {
    ordinal: i32,
    comm: Arc<AtomicPtr<c_void>>,
    nccl: &'static lib::Nccl,
}

struct Event(cuda_sys::cudaEvent_t);

// SAFETY: CUDA events may be recorded and queried from any thread.
unsafe impl Send for Event {}

impl Drop for Event {
    fn drop(&mut self) {
        // SAFETY: created by cudaEventCreate, destroyed once (CUDA releases it when the
        // work before it finishes, if it has not).
        let _ = unsafe { cuda::event::destroy(self.0) };
    }
}

impl watchdog::Device for CudaEvents {
    type Event = Event;

    fn create(&self) -> std::result::Result<Event, String> {
        cuda::event::create(0)
            .map(Event)
            .map_err(|e| format!("cudaEventCreate: {e:?}"))
    }

    fn record(&self, e: &Event) -> std::result::Result<(), String> {
        // SAFETY: a live event, on the stream the collectives run on.
        unsafe { cuda::event::record(e.0, std::ptr::null_mut()) }
            .map_err(|e| format!("cudaEventRecord: {e:?}"))
    }

    fn done(&self, e: &Event) -> std::result::Result<bool, String> {
        // SAFETY: a live, recorded event.
        match unsafe { cuda_sys::cudaEventQuery(e.0) } {
            cuda_sys::cudaError_t::cudaSuccess => Ok(true),
            cuda_sys::cudaError_t::cudaErrorNotReady => Ok(false),
            other => Err(format!("{other:?}")),
        }
    }

    fn seconds(&self, start: &Event, end: &Event) -> f64 {
        // SAFETY: two finished events of the same stream.
        unsafe { cuda::event::elapsed(start.0, end.0) }
            .map(|ms| ms as f64 / 1e3)
            .unwrap_or(0.0)
    }

    fn async_error(&self) -> Option<String> {
        let comm = self.comm.load(Ordering::SeqCst);
        if comm.is_null() {
            return None;
        }
        let mut state: c_int = SUCCESS;
        // SAFETY: a live communicator (the owner stops this thread before freeing it).
        let rc = unsafe { (self.nccl.comm_get_async_error)(comm, &mut state) };
        let bad = if rc != SUCCESS { rc } else { state };
        if bad == SUCCESS || bad == lib::IN_PROGRESS {
            return None;
        }
        let detail = self
            .nccl
            .last_error(comm)
            .map(|d| format!(": {d}"))
            .unwrap_or_default();
        Some(format!("{}{detail}", self.nccl.error_string(bad)))
    }

    fn thread_start(&self) {
        // The runtime would otherwise make a context on device 0 for this thread.
        let _ = cuda::device::set(self.ordinal);
    }
}
