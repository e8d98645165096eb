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
//! device time of the collectives (`Collective::time_collectives_into`).
//!
//! Collectives started ahead (`Collective::start`: the gradient buckets of a backward
//! pass still running, the next bucket's all-gather during an update) run on a stream
//! of the communicator's own instead, non-blocking so that the default stream's kernels
//! run beside them: an event makes the side stream wait for the work enqueued before the
//! start, and `wait` makes the default stream wait for the side stream. The started
//! tensors are held until then, so the caching allocator (which orders the reuse of
//! their memory by the default stream) never hands it out while NCCL still uses it. A
//! synchronous call first waits for whatever was started, so the collectives reach the
//! device in the order every rank issued them.
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

use super::collective::{Collective, Op};
use crate::error::{Error, Result};
use lib::{DataType, Stream, SUCCESS, SUM};
use watchdog::Watchdog;

pub use lib::{ID_BYTES, PATH_ENV as LIBRARY_ENV};

pub struct Nccl {
    /// Shared with the watchdog, which aborts it; null once destroyed.
    comm: Arc<AtomicPtr<c_void>>,
    rank: usize,
    world: usize,
    device: Device,
    nccl: &'static lib::Nccl,
    /// `None` only while dropping.
    watchdog: Option<Watchdog<CudaEvents>>,
    side: SideStream,
}

/// The stream started collectives run on, and what orders it with the default one.
struct SideStream {
    stream: cuda_sys::cudaStream_t,
    /// Recorded on the default stream at a start; the side stream waits on it.
    ready: Event,
    /// Recorded on the side stream by `wait`; the default stream waits on it.
    done: Event,
    /// The started collectives' tensors, alive until `wait`.
    held: Vec<Tensor>,
}

impl SideStream {
    fn new() -> std::result::Result<Self, String> {
        let mut stream = std::ptr::null_mut();
        // SAFETY: a valid out-pointer.
        let rc = unsafe {
            cuda_sys::cudaStreamCreateWithFlags(&mut stream, cuda_sys::cudaStreamNonBlocking)
        };
        if rc != cuda_sys::cudaError_t::cudaSuccess {
            return Err(format!("cudaStreamCreateWithFlags: {rc:?}"));
        }
        let ordering = || {
            cuda::event::create(cuda_sys::cudaEventDisableTiming)
                .map(Event)
                .map_err(|e| format!("cudaEventCreate: {e:?}"))
        };
        Ok(Self {
            stream,
            ready: ordering()?,
            done: ordering()?,
            held: Vec::new(),
        })
    }
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
        let side = SideStream::new().map_err(|e| nccl_error("side stream", e))?;
        let comm = Arc::new(AtomicPtr::new(std::ptr::null_mut()));
        let events = CudaEvents {
            ordinal: local_rank as i32,
            comm: comm.clone(),
            nccl,
            side: side.stream as usize,
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
            let detail = nccl
                .last_error(std::ptr::null_mut())
                .map(|d| format!(": {d}"))
                .unwrap_or_default();
            return Err(nccl_error(
                "init rank",
                format!("{}{detail}", nccl.error_string(rc)),
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
            side,
        })
    }

    /// Whether NCCL can use `t` where it is (else it works on a copy).
    fn direct(&self, t: &Tensor) -> bool {
        t.device() == self.device && t.is_contiguous() && dtype(t.kind()).is_some()
    }

    /// Make the default stream wait for the started collectives; release their tensors.
    fn wait_side(&mut self) -> Result<()> {
        if self.side.held.is_empty() {
            return Ok(());
        }
        let s = &self.side;
        // SAFETY: live events and streams of this communicator's device.
        unsafe { cuda::event::record(s.done.0, s.stream) }
            .and_then(|()| unsafe { cuda::stream::wait_event(std::ptr::null_mut(), s.done.0, 0) })
            .map_err(|e| nccl_error("wait", format!("rank {}: {e:?}", self.rank)))?;
        // Reuse of their memory is now ordered after the collectives.
        self.side.held.clear();
        Ok(())
    }

    /// A synchronous collective on the default stream, after whatever was started.
    fn run(&mut self, name: &str, t: &mut Tensor, op: impl FnOnce(Call) -> c_int) -> Result<()> {
        self.wait_side()?;
        self.enqueue(name, t, false, op)
    }

    /// Enqueue `op` on a contiguous copy of `t` on our device (or `t` itself when it
    /// already is one: always so with `side`), under the watchdog, writing the result
    /// back; on the side stream with `side`.
    fn enqueue(
        &mut self,
        name: &str,
        t: &mut Tensor,
        side: bool,
        op: impl FnOnce(Call) -> c_int,
    ) -> Result<()> {
        let direct = self.direct(t);
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
        let call = Call {
            nccl: self.nccl,
            comm: self.comm.load(Ordering::SeqCst),
            data: work.data_ptr(),
            n,
            dt: dtype(kind).expect("supported"),
            stream: if side {
                self.side.stream as Stream
            } else {
                std::ptr::null_mut()
            },
            rank: self.rank,
            world: self.world,
        };
        let (nccl, comm) = (call.nccl, call.comm);
        let watchdog = self.watchdog.as_ref().expect("not dropped");
        watchdog
            .collective(
                || {
                    let mib = (n * kind.elt_size_in_bytes()) as f64 / (1u64 << 20) as f64;
                    format!("NCCL {name} of {mib:.1} MiB ({kind:?})")
                },
                side,
                || {
                    let rc = op(call);
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

/// One NCCL call's arguments: the library, the communicator, a contiguous CUDA buffer
/// of `n` elements of `dt` (alive until the kernel ran: by the default stream's order,
/// or held until `wait` on the side stream), the stream, and who we are.
#[derive(Clone, Copy)]
struct Call {
    nccl: &'static lib::Nccl,
    comm: lib::Comm,
    data: *mut c_void,
    n: usize,
    dt: DataType,
    stream: Stream,
    rank: usize,
    world: usize,
}

// SAFETY (the four below): `c` is as `Call` says; the in-place forms as NCCL defines
// them.

fn all_reduce(c: Call) -> c_int {
    unsafe { (c.nccl.all_reduce)(c.data, c.data, c.n, c.dt as c_int, SUM, c.comm, c.stream) }
}

/// In place, the receive buffer is `send + rank * recvcount`.
fn reduce_scatter(c: Call) -> c_int {
    let seg = c.n / c.world;
    unsafe {
        let recv = (c.data as *mut u8).add(c.rank * seg * c.dt.size()) as *mut c_void;
        (c.nccl.reduce_scatter)(c.data, recv, seg, c.dt as c_int, SUM, c.comm, c.stream)
    }
}

/// In place, the send buffer is `recv + rank * sendcount`.
fn all_gather(c: Call) -> c_int {
    let seg = c.n / c.world;
    unsafe {
        let send = (c.data as *const u8).add(c.rank * seg * c.dt.size()) as *const c_void;
        (c.nccl.all_gather)(send, c.data, seg, c.dt as c_int, c.comm, c.stream)
    }
}

fn broadcast(root: usize) -> impl FnOnce(Call) -> c_int {
    move |c| unsafe {
        (c.nccl.broadcast)(
            c.data,
            c.data,
            c.n,
            c.dt as c_int,
            root as c_int,
            c.comm,
            c.stream,
        )
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

    fn time_collectives_into(&mut self, nanos: Arc<AtomicU64>) -> bool {
        if let Some(w) = &self.watchdog {
            w.time_into(nanos);
        }
        true
    }

    fn all_reduce_sum(&mut self, t: &mut Tensor) -> Result<()> {
        self.run("all-reduce", t, all_reduce)
    }

    fn reduce_scatter_sum(&mut self, t: &mut Tensor) -> Result<()> {
        self.run("reduce-scatter", t, reduce_scatter)
    }

    fn all_gather(&mut self, t: &mut Tensor) -> Result<()> {
        self.run("all-gather", t, all_gather)
    }

    fn broadcast(&mut self, t: &mut Tensor, root: usize) -> Result<()> {
        self.run("broadcast", t, broadcast(root))
    }

    fn start(&mut self, op: Op, t: &Tensor) -> Result<()> {
        let mut t = t.shallow_clone();
        let (name, f): (&str, fn(Call) -> c_int) = match op {
            Op::AllReduce => ("all-reduce", all_reduce),
            Op::ReduceScatter => ("reduce-scatter", reduce_scatter),
            Op::AllGather => ("all-gather", all_gather),
        };
        if !self.direct(&t) {
            // A copy would be read back at once: run it synchronously.
            return self.run(name, &mut t, f);
        }
        let s = &self.side;
        // The side stream waits for what the default stream enqueued so far (`t`'s
        // values among it).
        // SAFETY: live events and streams of this communicator's device.
        unsafe { cuda::event::record(s.ready.0, std::ptr::null_mut()) }
            .and_then(|()| unsafe { cuda::stream::wait_event(s.stream, s.ready.0, 0) })
            .map_err(|e| nccl_error("start", format!("rank {}: {e:?}", self.rank)))?;
        self.enqueue(name, &mut t, true, f)?;
        self.side.held.push(t);
        Ok(())
    }

    fn wait(&mut self) -> Result<()> {
        self.wait_side()
    }
}

impl Drop for Nccl {
    fn drop(&mut self) {
        // Destroy only with nothing in flight (it may block otherwise); stop the
        // watchdog first, so that it never touches a freed communicator.
        let idle =
            self.wait_side().is_ok() && self.watchdog.as_ref().map(|w| w.drain()).unwrap_or(false);
        drop(self.watchdog.take());
        let comm = self.comm.swap(std::ptr::null_mut(), Ordering::SeqCst);
        if !comm.is_null() {
            // SAFETY: the communicator came from ncclCommInitRank and is not used again.
            unsafe {
                if idle {
                    (self.nccl.comm_destroy)(comm);
                } else {
                    (self.nccl.comm_abort)(comm);
                }
            }
        }
        // SAFETY: our stream; its work finished or was aborted with the communicator
        // (CUDA releases a stream with work in flight once that work is done).
        let _ = unsafe { cuda::stream::destroy(self.side.stream) };
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

/// CUDA events on the collectives' streams, for the watchdog.
struct CudaEvents {
    ordinal: i32,
    comm: Arc<AtomicPtr<c_void>>,
    nccl: &'static lib::Nccl,
    /// The side stream (a `cudaStream_t` as an address: this crosses threads).
    side: usize,
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

    fn record(&self, e: &Event, side: bool) -> std::result::Result<(), String> {
        let stream = if side {
            self.side as cuda_sys::cudaStream_t
        } else {
            std::ptr::null_mut()
        };
        // SAFETY: a live event, on a stream the collectives run on.
        unsafe { cuda::event::record(e.0, stream) }.map_err(|e| format!("cudaEventRecord: {e:?}"))
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
