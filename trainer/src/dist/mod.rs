//! Data parallelism: who is in the job (`env`), how ranks find each other
//! (`rendezvous`), collectives behind one interface (`Collective`: a TCP ring on CPUs,
//! NCCL on GPUs), gradient bucketing, and the local launcher.

mod background;
mod collective;
pub mod env;
pub mod launch;
pub mod nccl;
mod rendezvous;
mod ring;

use std::time::Duration;

pub use background::Background;
pub use collective::{
    all_reduce_f64, all_reduce_grads, broadcast_params, grad_buckets, Collective, Op, Single,
};
pub use env::WorldInfo;
pub use rendezvous::{rendezvous, Peers};
pub use ring::Ring;

/// How long a rank waits for the others before giving up, unless configured.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
