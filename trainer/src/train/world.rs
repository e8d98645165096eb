//! Joining the other ranks of a data-parallel job: the rendezvous (which also checks
//! that every rank runs the same config), the collective (NCCL on GPUs, the TCP ring
//! on CPUs, timed for the metrics), and ZeRO-1's partition of the optimizer state.

use std::time::Duration;

use tch::Device;

use super::step::Trainer;
use crate::config::{Backend, TrainConfig};
use crate::dist::nccl::{self, Nccl};
use crate::dist::{rendezvous, Background, WorldInfo};
use crate::error::{Error, Result};
use crate::metrics::TrainMetrics;

/// Join the job `info` describes (nothing to join alone) with `trainer`, and shard its
/// optimizer state when the config asks for it. `config_hash`: what every rank must
/// agree on.
pub fn join(
    cfg: &TrainConfig,
    info: Option<&WorldInfo>,
    trainer: &mut Trainer,
    metrics: &TrainMetrics,
    config_hash: &str,
    device: Device,
) -> Result<()> {
    let world = info.map(|w| w.world_size).unwrap_or(1);
    if let Some(info) = info.filter(|w| w.world_size > 1) {
        let rank = info.rank;
        let timeout = Duration::from_secs(cfg.distributed.timeout_seconds);
        let use_nccl = match cfg.distributed.backend {
            Backend::Nccl => true,
            Backend::Ring => false,
            Backend::Auto => device.is_cuda(),
        };
        let id = if use_nccl && rank == 0 {
            Some(nccl::unique_id()?)
        } else {
            None
        };
        let peers = rendezvous(info, config_hash, timeout, id)?;
        if use_nccl {
            let id = peers.blob.ok_or_else(|| {
                Error::Config("rank 0 sent no NCCL id (does it run the same config?)".into())
            })?;
            trainer.set_collective(metrics.timed(Box::new(Nccl::with_timeout(
                rank,
                world,
                info.local_rank,
                &id,
                timeout,
            )?)));
        } else if cfg.distributed.overlap {
            // The ring is synchronous: a thread of its own runs the started collectives.
            let ring = Background::new(Box::new(peers.ring));
            trainer.set_collective(metrics.timed(Box::new(ring)));
        } else {
            trainer.set_collective(metrics.timed(Box::new(peers.ring)));
        }
        tracing::info!(rank, world_size = world, nccl = use_nccl, "joined the job");
    }
    if cfg.shards_optimizer(world) {
        trainer.shard_optimizer();
        let l = trainer.opt.layout().expect("sharded");
        tracing::info!(
            buckets = l.buckets.len(),
            shard_elements = l.shard_len(),
            master_weights = trainer.opt.has_master_weights(),
            "optimizer state sharded across the ranks (ZeRO-1)"
        );
    }
    Ok(())
}
