//! The local launcher: start N ranks of a command on this machine, prefix their log
//! lines with the rank, forward SIGINT/SIGTERM, and when one rank fails stop the
//! others and exit non-zero naming it.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// How long ranks get to exit after SIGTERM before SIGKILL, unless the operator passed
/// the pod's grace period (the ranks may be saving a checkpoint in it).
const GRACE: Duration = Duration::from_secs(10);

pub struct LaunchSpec {
    /// Local processes to start.
    pub nproc: usize,
    /// Rank of this node's first process is `node_rank * nproc`.
    pub node_rank: usize,
    pub nnodes: usize,
    pub master_addr: String,
    pub master_port: u16,
    /// Arguments of `janus` for every rank (e.g. `train --config job.yaml`).
    pub args: Vec<OsString>,
}

/// A free TCP port on this machine for a local job's master.
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0))
        .map_err(|e| Error::io("finding a free port", e))?;
    Ok(l.local_addr()
        .map_err(|e| Error::io("finding a free port", e))?
        .port())
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on a pid we spawned and have not reaped.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

fn forward_lines(
    rank: usize,
    stream: impl std::io::Read + Send + 'static,
    to_stderr: bool,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if to_stderr {
                let _ = writeln!(std::io::stderr().lock(), "[rank {rank}] {line}");
            } else {
                let _ = writeln!(std::io::stdout().lock(), "[rank {rank}] {line}");
            }
        }
    })
}

/// Run the ranks to completion. Returns the exit code the launcher should exit with.
pub fn launch(spec: &LaunchSpec) -> Result<i32> {
    let exe = std::env::current_exe().map_err(|e| Error::io("locating the janus binary", e))?;
    let world = spec.nproc * spec.nnodes;
    let grace = super::env::termination_grace()?.unwrap_or(GRACE);
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .map_err(|e| Error::io("installing signal handlers", e))?;
    }
    // Ranks share the machine's cores, as torchrun arranges.
    let threads = std::env::var("OMP_NUM_THREADS").ok().unwrap_or_else(|| {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        (cores / spec.nproc).max(1).to_string()
    });
    let mut children: Vec<(usize, Child)> = Vec::new();
    let mut pumps = Vec::new();
    for local in 0..spec.nproc {
        let rank = spec.node_rank * spec.nproc + local;
        let spawned = Command::new(&exe)
            .args(&spec.args)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", local.to_string())
            .env("WORLD_SIZE", world.to_string())
            .env("LOCAL_WORLD_SIZE", spec.nproc.to_string())
            .env("MASTER_ADDR", &spec.master_addr)
            .env("MASTER_PORT", spec.master_port.to_string())
            .env("OMP_NUM_THREADS", &threads)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                terminate(&mut children, grace);
                return Err(Error::io(format!("starting rank {rank}"), e));
            }
        };
        tracing::info!(rank, pid = child.id(), "started rank");
        pumps.push(forward_lines(
            rank,
            child.stdout.take().expect("piped"),
            false,
        ));
        pumps.push(forward_lines(
            rank,
            child.stderr.take().expect("piped"),
            true,
        ));
        children.push((rank, child));
    }
    let code = supervise(&mut children, &stop, grace);
    for p in pumps {
        let _ = p.join();
    }
    Ok(code)
}

fn supervise(children: &mut [(usize, Child)], stop: &AtomicBool, grace: Duration) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    let mut running: Vec<bool> = vec![true; children.len()];
    loop {
        if stop.load(Ordering::SeqCst) {
            tracing::warn!("signal received: stopping all ranks");
            terminate(children, grace);
            // Ranks that stopped at a step boundary (with or without a checkpoint) say
            // so with their own code; the job is told the same.
            let terminated = children.iter_mut().all(|(_, c)| {
                c.try_wait().ok().flatten().and_then(|s| s.code())
                    == Some(janus_crds::exit_code::TERMINATED)
            });
            return if terminated {
                janus_crds::exit_code::TERMINATED
            } else {
                130
            };
        }
        // Every rank that failed since the last look: when one dies the others soon
        // fail on the broken ring, and all of them are named.
        let mut failed = Vec::new();
        for (i, (rank, child)) in children.iter_mut().enumerate() {
            if !running[i] {
                continue;
            }
            match child.try_wait() {
                Ok(Some(status)) => {
                    running[i] = false;
                    if !status.success() {
                        let code = status
                            .code()
                            .unwrap_or_else(|| 128 + status.signal().unwrap_or(9));
                        failed.push((*rank, code, status));
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(rank = *rank, error = %e, "cannot wait for rank");
                    running[i] = false;
                    failed.push((*rank, 1, std::process::ExitStatus::from_raw(1 << 8)));
                }
            }
        }
        // A rank killed by a signal is the likelier cause than one that exited with an error.
        failed.sort_by_key(|(_, _, status)| status.signal().is_none());
        if let Some((rank, code, status)) = failed.first() {
            let others: Vec<usize> = failed.iter().skip(1).map(|f| f.0).collect();
            tracing::error!(rank, exit_code = code, also_failed = ?others, "rank failed: stopping the other ranks");
            eprintln!("janus launch: rank {rank} exited with {status}; stopping the other ranks");
            terminate(children, grace);
            return *code;
        }
        if running.iter().all(|r| !r) {
            return 0;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGTERM every live child, then SIGKILL whoever is left after the grace period.
fn terminate(children: &mut [(usize, Child)], grace: Duration) {
    for (_, c) in children.iter_mut() {
        if matches!(c.try_wait(), Ok(None)) {
            signal(c, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + grace;
    for (_, c) in children.iter_mut() {
        while matches!(c.try_wait(), Ok(None)) {
            if Instant::now() >= deadline {
                let _ = c.kill();
                let _ = c.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
