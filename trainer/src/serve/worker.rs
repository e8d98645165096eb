//! The engine's thread: it owns the model and the running batch, takes jobs (one per
//! HTTP request, one sequence per choice) from a channel, steps the engine, and sends
//! each job's text and completions back on the job's own channel. A job whose
//! receiver is gone (the client disconnected) is cancelled, which frees its places
//! in the batch.

use std::collections::HashMap;
use std::sync::mpsc;
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

use super::metrics::Metrics;
use crate::generate::{Completion, Engine, Event, Request, SeqId};

/// What a job's receiver gets.
#[derive(Debug)]
pub enum Out {
    /// Text of choice `choice` that became final.
    Delta { choice: usize, text: String },
    Done {
        choice: usize,
        completion: Completion,
    },
    /// The engine failed (the message says why); the job is over.
    Failed(String),
}

pub struct Job {
    /// One request per choice, in choice order.
    pub requests: Vec<Request>,
    pub out: UnboundedSender<Out>,
    pub arrived: Instant,
}

/// Where the HTTP side hands jobs to the engine.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Job>,
}

impl EngineHandle {
    /// Queue a job; false when the engine thread is gone.
    pub fn submit(&self, job: Job) -> bool {
        self.tx.send(job).is_ok()
    }
}

struct Running {
    out: UnboundedSender<Out>,
    arrived: Instant,
    first_token: bool,
    seqs: Vec<SeqId>,
    left: usize,
}

/// Start the engine thread.
pub fn spawn(mut engine: Engine, metrics: Metrics) -> EngineHandle {
    let (tx, rx) = mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("janus-engine".into())
        .spawn(move || {
            let mut jobs: HashMap<u64, Running> = HashMap::new();
            let mut owner: HashMap<SeqId, (u64, usize)> = HashMap::new();
            let mut next_job = 0u64;
            loop {
                // Block only when there is nothing to do.
                let mut incoming: Vec<Job> = vec![];
                if engine.is_idle() {
                    match rx.recv() {
                        Ok(j) => incoming.push(j),
                        Err(_) => return,
                    }
                }
                incoming.extend(rx.try_iter());
                for job in incoming {
                    let id = next_job;
                    next_job += 1;
                    let n = job.requests.len();
                    let mut seqs = Vec::with_capacity(n);
                    for (choice, r) in job.requests.into_iter().enumerate() {
                        metrics.prompt_tokens_total.inc_by(r.prompt.len() as u64);
                        let s = engine.submit(r);
                        owner.insert(s, (id, choice));
                        seqs.push(s);
                    }
                    jobs.insert(
                        id,
                        Running {
                            out: job.out,
                            arrived: job.arrived,
                            first_token: false,
                            seqs,
                            left: n,
                        },
                    );
                }
                metrics.queue_depth.set(engine.waiting() as i64);
                let events = match engine.step() {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::error!(error = %e, "generation failed; failing every request in flight");
                        for (_, j) in jobs.drain() {
                            let _ = j.out.send(Out::Failed(e.to_string()));
                            j.seqs.iter().for_each(|&s| engine.cancel(s));
                        }
                        owner.clear();
                        continue;
                    }
                };
                let mut gone: Vec<u64> = vec![];
                for e in events {
                    let seq = match &e {
                        Event::Token { id, .. } => *id,
                        Event::Done(c) => c.id,
                    };
                    let Some(&(job, choice)) = owner.get(&seq) else {
                        continue;
                    };
                    let Some(j) = jobs.get_mut(&job) else {
                        continue;
                    };
                    let sent = match e {
                        Event::Token { delta, .. } => {
                            metrics.generated_tokens_total.inc();
                            if !j.first_token {
                                j.first_token = true;
                                metrics
                                    .time_to_first_token_seconds
                                    .observe(j.arrived.elapsed().as_secs_f64());
                            }
                            delta.is_empty() || j.out.send(Out::Delta { choice, text: delta }).is_ok()
                        }
                        Event::Done(completion) => {
                            owner.remove(&seq);
                            j.left -= 1;
                            let ok = j.out.send(Out::Done { choice, completion }).is_ok();
                            if j.left == 0 {
                                gone.push(job);
                            }
                            ok
                        }
                    };
                    if !sent {
                        // The client went away: free its places in the batch.
                        for &s in &j.seqs {
                            engine.cancel(s);
                            owner.remove(&s);
                        }
                        gone.push(job);
                    }
                }
                for g in gone {
                    jobs.remove(&g);
                }
                metrics.queue_depth.set(engine.waiting() as i64);
                metrics.running.set(engine.running() as i64);
            }
        })
        .expect("the engine thread starts");
    EngineHandle { tx }
}
