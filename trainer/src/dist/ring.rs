//! All-reduce and broadcast over a TCP ring, for CPU workers.
//!
//! All-reduce is reduce-scatter then all-gather (Patarasuk & Yuan): the buffer is cut
//! into `world` segments of any lengths (the tensor length need not divide), and in
//! each of the `2 (world - 1)` steps every rank sends one segment to the next rank
//! while it receives another from the previous one, adding (or copying) it chunk by
//! chunk as it arrives. Each rank sends and receives `2 (world - 1) / world` of the
//! buffer, the optimum for a ring.
//!
//! Every read and write has the job's deadline (`distributed.timeout_seconds`) of no
//! progress: a peer that stops answering mid-collective (a stopped process, a dead
//! node whose connection stays open) fails the collective naming that rank, with the
//! retryable exit code, instead of blocking the ring forever.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::ops::Range;
use std::time::Duration;

use tch::{Device, Kind, Tensor};

use super::collective::Collective;
use crate::error::{Error, Result};

/// Bytes received before they are added in: large enough for few syscalls, small
/// enough to stay in cache while adding.
const CHUNK_BYTES: usize = 1 << 20;

pub struct Ring {
    rank: usize,
    world: usize,
    /// To rank `rank + 1`.
    next: TcpStream,
    /// From rank `rank - 1`.
    prev: TcpStream,
    /// The longest a read or write may go without progress.
    timeout: Duration,
    /// The collective in progress, for errors.
    op: &'static str,
}

trait Elem: bytemuck::Pod + std::ops::AddAssign + Send + Sync {}
impl Elem for f32 {}
impl Elem for f64 {}

fn segment(n: usize, world: usize, i: usize) -> Range<usize> {
    n * i / world..n * (i + 1) / world
}

/// Two disjoint (possibly empty) segments of `data`: one to read (send), one to
/// write (receive).
fn split_pair<T>(data: &mut [T], send: Range<usize>, recv: Range<usize>) -> (&[T], &mut [T]) {
    if send.end <= recv.start {
        let (a, b) = data.split_at_mut(recv.start);
        (&a[send], &mut b[..recv.end - recv.start])
    } else {
        debug_assert!(recv.end <= send.start, "segments overlap");
        let (a, b) = data.split_at_mut(send.start);
        (&b[..send.end - send.start], &mut a[recv])
    }
}

impl Ring {
    /// `next` is connected to rank `rank + 1`, `prev` to rank `rank - 1` (mod world);
    /// a read or write that makes no progress for `timeout` fails.
    pub fn new(
        rank: usize,
        world: usize,
        next: TcpStream,
        prev: TcpStream,
        timeout: Duration,
    ) -> std::io::Result<Self> {
        prev.set_read_timeout(Some(timeout))?;
        next.set_write_timeout(Some(timeout))?;
        Ok(Self {
            rank,
            world,
            next,
            prev,
            timeout,
            op: "collective",
        })
    }

    fn prev_rank(&self) -> usize {
        (self.rank + self.world - 1) % self.world
    }

    /// An I/O error of `what` ("send" or "receive") during the current collective,
    /// naming the peer, and for a timeout or a closed connection what it means.
    fn io_error(&self, what: &str, e: std::io::Error) -> Error {
        use std::io::ErrorKind::*;
        let peer = match what {
            "send" => (self.rank + 1) % self.world,
            _ => self.prev_rank(),
        };
        let (r, op) = (self.rank, self.op);
        let context = match e.kind() {
            // A socket timeout reads as WouldBlock on Linux.
            TimedOut | WouldBlock => format!(
                "ring rank {r}: rank {peer} stopped answering mid {op}: no progress to {what} for {}s \
                 (distributed.timeout_seconds)",
                self.timeout.as_secs_f64()
            ),
            UnexpectedEof | ConnectionReset | BrokenPipe | ConnectionAborted => format!(
                "ring rank {r}: rank {peer} closed the connection mid {op} (it exited or failed)"
            ),
            _ => format!("ring rank {r}: {what} with rank {peer} mid {op}"),
        };
        Error::io(context, e)
    }

    fn all_reduce_slice<T: Elem>(&mut self, data: &mut [T]) -> Result<()> {
        let w = self.world;
        if w == 1 {
            return Ok(());
        }
        let r = self.rank;
        for s in 0..w - 1 {
            self.exchange(data, (r + w - s) % w, (r + 2 * w - s - 1) % w, true)?;
        }
        for s in 0..w - 1 {
            self.exchange(data, (r + 1 + w - s) % w, (r + w - s) % w, false)?;
        }
        Ok(())
    }

    /// Reduce-scatter: afterwards segment `rank` holds the sum over all ranks.
    fn reduce_scatter_slice<T: Elem>(&mut self, data: &mut [T]) -> Result<()> {
        let (w, r) = (self.world, self.rank);
        for s in 0..w - 1 {
            self.exchange(data, (r + 2 * w - s - 1) % w, (r + 2 * w - s - 2) % w, true)?;
        }
        Ok(())
    }

    /// All-gather: each rank starts with its own segment `rank` and ends with all.
    fn all_gather_slice<T: Elem>(&mut self, data: &mut [T]) -> Result<()> {
        let (w, r) = (self.world, self.rank);
        for s in 0..w - 1 {
            self.exchange(data, (r + w - s) % w, (r + 2 * w - s - 1) % w, false)?;
        }
        Ok(())
    }

    /// Send segment `send` to the next rank while receiving segment `recv` from the
    /// previous one, adding it in (`add`) or overwriting.
    fn exchange<T: Elem>(
        &mut self,
        data: &mut [T],
        send: usize,
        recv: usize,
        add: bool,
    ) -> Result<()> {
        let n = data.len();
        let (out, inp) = split_pair(
            data,
            segment(n, self.world, send),
            segment(n, self.world, recv),
        );
        let next = &mut self.next;
        let prev = &mut self.prev;
        let (sent, received) = std::thread::scope(|scope| {
            let sender = scope.spawn(move || next.write_all(bytemuck::cast_slice(out)));
            let received = receive(prev, inp, add);
            (sender.join().expect("ring sender thread"), received)
        });
        sent.map_err(|e| self.io_error("send", e))?;
        received.map_err(|e| self.io_error("receive", e))
    }

    fn broadcast_bytes(&mut self, data: &mut [u8], root: usize) -> Result<()> {
        if self.world == 1 {
            return Ok(());
        }
        let next_is_root = (self.rank + 1) % self.world == root;
        if self.rank == root {
            return self
                .next
                .write_all(data)
                .map_err(|e| self.io_error("send", e));
        }
        // Forward each chunk as soon as it arrives: the chain is pipelined.
        for chunk in data.chunks_mut(CHUNK_BYTES) {
            self.prev
                .read_exact(chunk)
                .map_err(|e| self.io_error("receive", e))?;
            if !next_is_root {
                self.next
                    .write_all(chunk)
                    .map_err(|e| self.io_error("send", e))?;
            }
        }
        Ok(())
    }
}

fn receive<T: Elem>(stream: &mut TcpStream, dst: &mut [T], add: bool) -> std::io::Result<()> {
    if !add {
        return stream.read_exact(bytemuck::cast_slice_mut(dst));
    }
    let per_chunk = (CHUNK_BYTES / std::mem::size_of::<T>()).max(1);
    let mut buf: Vec<T> = vec![T::zeroed(); per_chunk.min(dst.len())];
    for part in dst.chunks_mut(per_chunk) {
        let b = &mut buf[..part.len()];
        stream.read_exact(bytemuck::cast_slice_mut(b))?;
        for (d, s) in part.iter_mut().zip(b.iter()) {
            *d += *s;
        }
    }
    Ok(())
}

/// Run `f` on the host data of `t` (f32 or f64, contiguous, CPU), copying in and out
/// when `t` is elsewhere or of another floating kind.
fn with_host_data(t: &mut Tensor, f: impl FnOnce(&mut Tensor) -> Result<()>) -> Result<()> {
    let direct = t.device() == Device::Cpu
        && t.is_contiguous()
        && matches!(t.kind(), Kind::Float | Kind::Double);
    if direct {
        return f(t);
    }
    let kind = if t.kind() == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
    };
    let mut host = t.to_device(Device::Cpu).to_kind(kind).contiguous();
    f(&mut host)?;
    tch::no_grad(|| t.copy_(&host));
    Ok(())
}

/// The host data of a tensor as the ring's element type.
enum Slice<'a> {
    F32(&'a mut [f32]),
    F64(&'a mut [f64]),
}

impl Ring {
    fn with_slice(
        &mut self,
        t: &mut Tensor,
        f: impl FnOnce(&mut Self, Slice) -> Result<()>,
    ) -> Result<()> {
        with_host_data(t, |h| {
            let n = h.numel();
            // SAFETY: `h` is a contiguous CPU tensor of `n` elements of the matched kind,
            // and nothing else touches it during the call.
            let data = unsafe {
                match h.kind() {
                    Kind::Double => {
                        Slice::F64(std::slice::from_raw_parts_mut(h.data_ptr() as *mut f64, n))
                    }
                    _ => Slice::F32(std::slice::from_raw_parts_mut(h.data_ptr() as *mut f32, n)),
                }
            };
            f(self, data)
        })
    }
}

impl Collective for Ring {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&mut self, t: &mut Tensor) -> Result<()> {
        self.op = "all-reduce";
        self.with_slice(t, |ring, data| match data {
            Slice::F32(d) => ring.all_reduce_slice(d),
            Slice::F64(d) => ring.all_reduce_slice(d),
        })
    }

    fn reduce_scatter_sum(&mut self, t: &mut Tensor) -> Result<()> {
        if self.world == 1 {
            return Ok(());
        }
        self.op = "reduce-scatter";
        self.with_slice(t, |ring, data| match data {
            Slice::F32(d) => ring.reduce_scatter_slice(d),
            Slice::F64(d) => ring.reduce_scatter_slice(d),
        })
    }

    fn all_gather(&mut self, t: &mut Tensor) -> Result<()> {
        if self.world == 1 {
            return Ok(());
        }
        self.op = "all-gather";
        self.with_slice(t, |ring, data| match data {
            Slice::F32(d) => ring.all_gather_slice(d),
            Slice::F64(d) => ring.all_gather_slice(d),
        })
    }

    fn broadcast(&mut self, t: &mut Tensor, root: usize) -> Result<()> {
        self.op = "broadcast";
        with_host_data(t, |h| {
            let bytes = h.numel() * h.kind().elt_size_in_bytes();
            // SAFETY: as above; any bit pattern is a valid byte.
            let data = unsafe { std::slice::from_raw_parts_mut(h.data_ptr() as *mut u8, bytes) };
            self.broadcast_bytes(data, root)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_cover_any_length_without_overlap() {
        for n in [0usize, 1, 2, 5, 7, 1000] {
            for w in 1..6 {
                let segs: Vec<_> = (0..w).map(|i| segment(n, w, i)).collect();
                assert_eq!(segs[0].start, 0);
                assert_eq!(segs[w - 1].end, n);
                assert!(segs.windows(2).all(|p| p[0].end == p[1].start));
            }
        }
    }
}
