//! A synchronous communicator (the CPU ring) on a thread of its own, so that the
//! collectives started during a backward pass or an update proceed while the training
//! thread computes: the overlap DDP gets from its communication stream. Collectives run
//! one at a time in the order they were started or called, as on the communicator
//! itself; a synchronous call waits for everything started before it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use tch::Tensor;

use super::collective::{Collective, Op};
use crate::error::{Error, Result};

enum Job {
    Op(Op, Tensor),
    Broadcast(Tensor, usize),
}

pub struct Background {
    rank: usize,
    world: usize,
    noop: bool,
    jobs: Option<Sender<Job>>,
    results: Receiver<Result<()>>,
    /// Jobs sent and not yet waited for.
    pending: usize,
    /// Where the thread adds the time of each collective, once asked.
    nanos: Arc<Mutex<Option<Arc<AtomicU64>>>>,
    thread: Option<JoinHandle<()>>,
}

impl Background {
    pub fn new(mut inner: Box<dyn Collective>) -> Self {
        let (rank, world, noop) = (inner.rank(), inner.world_size(), inner.is_noop());
        let (jobs, rx) = channel::<Job>();
        let (tx, results) = channel();
        let nanos: Arc<Mutex<Option<Arc<AtomicU64>>>> = Arc::default();
        let counter = nanos.clone();
        let thread = std::thread::Builder::new()
            .name(format!("collectives-{rank}"))
            .spawn(move || {
                for job in rx {
                    let t0 = Instant::now();
                    let r = match job {
                        Job::Op(op, mut t) => match op {
                            Op::AllReduce => inner.all_reduce_sum(&mut t),
                            Op::ReduceScatter => inner.reduce_scatter_sum(&mut t),
                            Op::AllGather => inner.all_gather(&mut t),
                        },
                        Job::Broadcast(mut t, root) => inner.broadcast(&mut t, root),
                    };
                    if let Some(n) = &*counter.lock().expect("lock") {
                        n.fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    }
                    if tx.send(r).is_err() {
                        return;
                    }
                }
            })
            .expect("spawning the collectives thread");
        Self {
            rank,
            world,
            noop,
            jobs: Some(jobs),
            results,
            pending: 0,
            nanos,
            thread: Some(thread),
        }
    }

    fn send(&mut self, job: Job) -> Result<()> {
        let gone = || {
            Error::io(
                format!("rank {}: collectives thread", self.rank),
                std::io::Error::other("it stopped"),
            )
        };
        self.jobs
            .as_ref()
            .ok_or_else(gone)?
            .send(job)
            .map_err(|_| gone())?;
        self.pending += 1;
        Ok(())
    }

    /// Run `job` and wait for it (and everything before it).
    fn call(&mut self, job: Job) -> Result<()> {
        self.send(job)?;
        self.wait()
    }
}

impl Collective for Background {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.world
    }
    fn is_noop(&self) -> bool {
        self.noop
    }
    fn all_reduce_sum(&mut self, t: &mut Tensor) -> Result<()> {
        self.call(Job::Op(Op::AllReduce, t.shallow_clone()))
    }
    fn broadcast(&mut self, t: &mut Tensor, root: usize) -> Result<()> {
        self.call(Job::Broadcast(t.shallow_clone(), root))
    }
    fn reduce_scatter_sum(&mut self, t: &mut Tensor) -> Result<()> {
        self.call(Job::Op(Op::ReduceScatter, t.shallow_clone()))
    }
    fn all_gather(&mut self, t: &mut Tensor) -> Result<()> {
        self.call(Job::Op(Op::AllGather, t.shallow_clone()))
    }
    fn start(&mut self, op: Op, t: &Tensor) -> Result<()> {
        self.send(Job::Op(op, t.shallow_clone()))
    }
    fn wait(&mut self) -> Result<()> {
        // Every result is collected, the first error reported.
        let mut first = Ok(());
        for _ in 0..std::mem::take(&mut self.pending) {
            let r = self.results.recv().unwrap_or_else(|_| {
                Err(Error::io(
                    format!("rank {}: collectives thread", self.rank),
                    std::io::Error::other("it stopped"),
                ))
            });
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
    /// The thread's own time in each collective (not the caller's wait for it).
    fn time_collectives_into(&mut self, nanos: Arc<AtomicU64>) -> bool {
        *self.nanos.lock().expect("lock") = Some(nanos);
        true
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
