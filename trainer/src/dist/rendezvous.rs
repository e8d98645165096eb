//! Rendezvous: rank 0 listens on the master address; every other rank says who it is
//! (rank, world size, config hash, ring port); rank 0 checks they agree and answers
//! with the peer list (and an opaque blob, the NCCL unique id on GPUs). Then each rank
//! connects to the next one to form the ring. Every wait has a deadline.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::env::WorldInfo;
use super::ring::Ring;
use crate::error::{Error, Result};

#[derive(Serialize, Deserialize)]
struct Hello {
    rank: usize,
    world_size: usize,
    config_hash: String,
    ring_port: u16,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Answer {
    Welcome {
        peers: Vec<String>,
        blob: Option<String>,
    },
    Refused {
        message: String,
    },
}

/// The result of a rendezvous: the CPU ring and rank 0's blob.
pub struct Peers {
    pub ring: Ring,
    pub blob: Option<Vec<u8>>,
}

fn timed_out(what: String, timeout: Duration) -> Error {
    Error::io(
        what,
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {}s", timeout.as_secs_f64()),
        ),
    )
}

fn send_line<T: Serialize>(s: &mut TcpStream, v: &T) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(v).expect("message serializes");
    line.push(b'\n');
    s.write_all(&line)
}

fn read_line<T: for<'de> Deserialize<'de>>(s: &TcpStream, deadline: Instant) -> std::io::Result<T> {
    s.set_read_timeout(Some(
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1)),
    ))?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    serde_json::from_str(&line).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("bad rendezvous message {line:?}: {e}"),
        )
    })
}

/// Accept one connection before `deadline`.
fn accept_until(
    l: &TcpListener,
    deadline: Instant,
) -> std::io::Result<Option<(TcpStream, SocketAddr)>> {
    l.set_nonblocking(true)?;
    loop {
        match l.accept() {
            Ok((s, a)) => {
                s.set_nonblocking(false)?;
                return Ok(Some((s, a)));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Ok(None);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Connect to `addr`, retrying until `deadline` (the peer may not listen yet).
fn connect_until(addr: &str, deadline: Instant) -> std::result::Result<TcpStream, String> {
    let mut last = String::from("not tried");
    loop {
        match addr.to_socket_addrs() {
            Ok(addrs) => {
                for a in addrs {
                    let left = deadline
                        .saturating_duration_since(Instant::now())
                        .max(Duration::from_millis(10));
                    match TcpStream::connect_timeout(&a, left.min(Duration::from_secs(5))) {
                        Ok(s) => return Ok(s),
                        Err(e) => last = e.to_string(),
                    }
                }
            }
            Err(e) => last = format!("cannot resolve: {e}"),
        }
        if Instant::now() >= deadline {
            return Err(last);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn host_port(host: &str, port: u16) -> String {
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
        _ => format!("{host}:{port}"),
    }
}

/// Meet the other ranks of `info` and build the ring. `blob` is distributed from
/// rank 0 (ignored elsewhere).
pub fn rendezvous(
    info: &WorldInfo,
    config_hash: &str,
    timeout: Duration,
    blob: Option<Vec<u8>>,
) -> Result<Peers> {
    let deadline = Instant::now() + timeout;
    let ring_listener =
        TcpListener::bind(("0.0.0.0", 0)).map_err(|e| Error::io("binding the ring port", e))?;
    let ring_port = ring_listener
        .local_addr()
        .map_err(|e| Error::io("ring port", e))?
        .port();
    let master = host_port(&info.master_addr, info.master_port);
    let (peers, blob) = if info.rank == 0 {
        lead(info, config_hash, ring_port, blob, deadline, timeout)?
    } else {
        let mut s = connect_until(&master, deadline).map_err(|last| {
            Error::io(
                format!(
                    "rank {}: could not reach rank 0 at {master} for {:.0}s",
                    info.rank,
                    timeout.as_secs_f64()
                ),
                std::io::Error::new(std::io::ErrorKind::TimedOut, last),
            )
        })?;
        let hello = Hello {
            rank: info.rank,
            world_size: info.world_size,
            config_hash: config_hash.into(),
            ring_port,
        };
        send_line(&mut s, &hello).map_err(|e| {
            Error::io(
                format!("rank {}: sending to rank 0 at {master}", info.rank),
                e,
            )
        })?;
        match read_line::<Answer>(&s, deadline).map_err(|e| {
            Error::io(
                format!("rank {}: waiting for rank 0 at {master}", info.rank),
                e,
            )
        })? {
            Answer::Welcome { peers, blob } => {
                (peers, blob.map(|b| hex::decode(b).unwrap_or_default()))
            }
            Answer::Refused { message } => return Err(Error::Config(message)),
        }
    };
    let ring = connect_ring(info, &peers, &ring_listener, deadline, timeout)?;
    Ok(Peers { ring, blob })
}

/// Rank 0: collect every other rank's hello, check agreement, answer.
fn lead(
    info: &WorldInfo,
    config_hash: &str,
    ring_port: u16,
    blob: Option<Vec<u8>>,
    deadline: Instant,
    timeout: Duration,
) -> Result<(Vec<String>, Option<Vec<u8>>)> {
    let listener = TcpListener::bind(("0.0.0.0", info.master_port)).map_err(|e| {
        Error::io(
            format!(
                "rank 0: listening on port {} (MASTER_PORT)",
                info.master_port
            ),
            e,
        )
    })?;
    let mut peers = vec![String::new(); info.world_size];
    peers[0] = host_port(&info.master_addr, ring_port);
    let mut conns = Vec::new();
    let mut problems = Vec::new();
    while conns.len() < info.world_size - 1 {
        let Some((s, addr)) = accept_until(&listener, deadline)
            .map_err(|e| Error::io("rank 0: accepting ranks", e))?
        else {
            let missing: Vec<usize> = (1..info.world_size)
                .filter(|r| peers[*r].is_empty())
                .collect();
            return Err(timed_out(
                format!(
                    "rank 0: ranks {missing:?} did not join within {:.0}s",
                    timeout.as_secs_f64()
                ),
                timeout,
            ));
        };
        let hello: Hello = read_line(&s, deadline)
            .map_err(|e| Error::io(format!("rank 0: reading hello from {addr}"), e))?;
        if hello.world_size != info.world_size {
            problems.push(format!(
                "rank {} says world size {}, rank 0 has {}",
                hello.rank, hello.world_size, info.world_size
            ));
        } else if hello.config_hash != config_hash {
            problems.push(format!(
                "rank {} has config hash {}, rank 0 has {} (every rank must run the same config)",
                hello.rank, hello.config_hash, config_hash
            ));
        } else if hello.rank == 0 || hello.rank >= info.world_size || !peers[hello.rank].is_empty()
        {
            problems.push(format!(
                "rank {} joined twice or is out of range (world size {})",
                hello.rank, info.world_size
            ));
        } else {
            peers[hello.rank] = host_port(&addr.ip().to_string(), hello.ring_port);
        }
        conns.push(s);
        if !problems.is_empty() {
            break;
        }
    }
    let answer = match problems.first() {
        Some(p) => Answer::Refused {
            message: format!("rendezvous refused: {p}"),
        },
        None => Answer::Welcome {
            peers: peers.clone(),
            blob: blob.as_ref().map(hex::encode),
        },
    };
    for s in &mut conns {
        // A rank that already left cannot be told; the check below still fails the job.
        let _ = send_line(s, &answer);
    }
    match answer {
        Answer::Refused { message } => Err(Error::Config(message)),
        Answer::Welcome { .. } => Ok((peers, blob)),
    }
}

fn connect_ring(
    info: &WorldInfo,
    peers: &[String],
    listener: &TcpListener,
    deadline: Instant,
    timeout: Duration,
) -> Result<Ring> {
    let (rank, world) = (info.rank, info.world_size);
    let next_rank = (rank + 1) % world;
    let prev_rank = (rank + world - 1) % world;
    let mut next = connect_until(&peers[next_rank], deadline).map_err(|last| {
        Error::io(
            format!(
                "rank {rank}: connecting to rank {next_rank} at {}",
                peers[next_rank]
            ),
            std::io::Error::other(last),
        )
    })?;
    next.write_all(&(rank as u64).to_le_bytes())
        .map_err(|e| Error::io(format!("rank {rank}: greeting rank {next_rank}"), e))?;
    let Some((mut prev, addr)) =
        accept_until(listener, deadline).map_err(|e| Error::io("accepting the ring", e))?
    else {
        return Err(timed_out(
            format!("rank {rank}: rank {prev_rank} did not connect"),
            timeout,
        ));
    };
    let mut who = [0u8; 8];
    prev.set_read_timeout(Some(timeout))
        .map_err(|e| Error::io("ring socket", e))?;
    prev.read_exact(&mut who)
        .map_err(|e| Error::io(format!("rank {rank}: greeting from {addr}"), e))?;
    if u64::from_le_bytes(who) != prev_rank as u64 {
        return Err(Error::Config(format!(
            "rank {rank}: expected rank {prev_rank} on the ring, rank {} connected",
            u64::from_le_bytes(who)
        )));
    }
    for s in [&next, &prev] {
        s.set_nodelay(true)
            .map_err(|e| Error::io("ring socket", e))?;
    }
    Ring::new(rank, world, next, prev, timeout).map_err(|e| Error::io("ring socket", e))
}
