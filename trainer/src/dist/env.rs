//! Who this process is in the job, from the operator's `JANUS_*` variables
//! (shared/DESIGN.md) or torchrun's names, so the trainer runs anywhere.

use janus_crds::env as janus_env;

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorldInfo {
    pub rank: usize,
    pub world_size: usize,
    /// Index of this process on its node (selects the GPU).
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
}

/// What the environment asks this process to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// One rank of a job (possibly the only one).
    Rank(WorldInfo),
    /// Start `nproc` local ranks (a pod with several GPUs): the trainer re-executes
    /// itself once per rank, as the local launcher does.
    Launcher {
        nproc: usize,
        node_rank: usize,
        nnodes: usize,
        master_addr: String,
        master_port: u16,
    },
}

pub const DEFAULT_MASTER_PORT: u16 = 29500;

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn parse<T: std::str::FromStr>(name: &str) -> Result<Option<T>> {
    match var(name) {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| {
            Error::Config(format!(
                "environment variable {name}={v:?} is not a valid number"
            ))
        }),
    }
}

impl Role {
    /// torchrun's `RANK`/`WORLD_SIZE` win (set by our launcher too); then the operator's
    /// `JANUS_*`; else a single process.
    pub fn from_env() -> Result<Self> {
        let master_addr = var("MASTER_ADDR")
            .or_else(|| var(janus_env::MASTER_ADDR))
            .unwrap_or_else(|| "127.0.0.1".into());
        let master_port = parse::<u16>("MASTER_PORT")?
            .or(parse::<u16>(janus_env::MASTER_PORT)?)
            .unwrap_or(DEFAULT_MASTER_PORT);
        if let (Some(rank), Some(world_size)) =
            (parse::<usize>("RANK")?, parse::<usize>("WORLD_SIZE")?)
        {
            let local_rank = parse::<usize>("LOCAL_RANK")?.unwrap_or(0);
            if rank >= world_size {
                return Err(Error::Config(format!(
                    "RANK={rank} is not below WORLD_SIZE={world_size}"
                )));
            }
            return Ok(Role::Rank(WorldInfo {
                rank,
                world_size,
                local_rank,
                master_addr,
                master_port,
            }));
        }
        let nnodes = parse::<usize>(janus_env::NNODES)?.unwrap_or(1);
        let node_rank = parse::<usize>(janus_env::NODE_RANK)?.unwrap_or(0);
        let nproc = parse::<usize>(janus_env::NPROC_PER_NODE)?.unwrap_or(1);
        if nnodes == 0 || nproc == 0 || node_rank >= nnodes {
            return Err(Error::Config(format!(
                "{}={nnodes}, {}={node_rank}, {}={nproc}: need nnodes >= 1, nproc >= 1 and node rank < nnodes",
                janus_env::NNODES, janus_env::NODE_RANK, janus_env::NPROC_PER_NODE
            )));
        }
        if nproc > 1 {
            return Ok(Role::Launcher {
                nproc,
                node_rank,
                nnodes,
                master_addr,
                master_port,
            });
        }
        Ok(Role::Rank(WorldInfo {
            rank: node_rank,
            world_size: nnodes,
            local_rank: 0,
            master_addr,
            master_port,
        }))
    }
}
