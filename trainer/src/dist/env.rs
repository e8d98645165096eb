//! Who this process is in the job, from the operator's `JANUS_*` variables
//! (docs/design.md) or torchrun's names, so the trainer runs anywhere.

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

/// The pod's grace period the operator passes (`JANUS_TERMINATION_GRACE_SECONDS`), if
/// any: what the ranks have for a checkpoint after SIGTERM, and what the launcher waits
/// for them. A value that is not whole seconds is refused, by both.
pub fn termination_grace() -> Result<Option<std::time::Duration>> {
    let secs = whole_number(janus_env::TERMINATION_GRACE_SECONDS, "whole seconds")?;
    Ok(secs.map(std::time::Duration::from_secs))
}

/// An operator-set variable holding a whole number (surrounding whitespace allowed), if
/// set; a value that is not one is refused naming the variable and what it holds.
pub fn whole_number(name: &str, unit: &str) -> Result<Option<u64>> {
    parse_whole(name, unit, std::env::var(name).ok())
}

fn parse_whole(name: &str, unit: &str, v: Option<String>) -> Result<Option<u64>> {
    let Some(v) = v else { return Ok(None) };
    let n = v
        .trim()
        .parse::<u64>()
        .map_err(|_| Error::Config(format!("{name}={v:?}: expected {unit}")))?;
    Ok(Some(n))
}

/// Variables from the process environment, or from a table in tests.
struct Vars<F: Fn(&str) -> Option<String>>(F);

impl<F: Fn(&str) -> Option<String>> Vars<F> {
    fn get(&self, name: &str) -> Option<String> {
        (self.0)(name).filter(|v| !v.is_empty())
    }

    fn num<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| {
                Error::Config(format!(
                    "environment variable {name}={v:?} is not a valid number"
                ))
            }),
        }
    }
}

impl Role {
    /// torchrun's `RANK`/`WORLD_SIZE` win (set by our launcher too); then the operator's
    /// `JANUS_*`; else a single process.
    pub fn from_env() -> Result<Self> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let v = Vars(get);
        let master_addr = v
            .get("MASTER_ADDR")
            .or_else(|| v.get(janus_env::MASTER_ADDR))
            .unwrap_or_else(|| "127.0.0.1".into());
        let master_port = v
            .num::<u16>("MASTER_PORT")?
            .or(v.num::<u16>(janus_env::MASTER_PORT)?)
            .unwrap_or(DEFAULT_MASTER_PORT);
        if let (Some(rank), Some(world_size)) =
            (v.num::<usize>("RANK")?, v.num::<usize>("WORLD_SIZE")?)
        {
            let local_rank = v.num::<usize>("LOCAL_RANK")?.unwrap_or(0);
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
        let nnodes = v.num::<usize>(janus_env::NNODES)?.unwrap_or(1);
        let node_rank = v.num::<usize>(janus_env::NODE_RANK)?.unwrap_or(0);
        let nproc = v.num::<usize>(janus_env::NPROC_PER_NODE)?.unwrap_or(1);
        if nnodes == 0 || nproc == 0 || node_rank >= nnodes {
            return Err(Error::Config(format!(
                "{}={nnodes}, {}={node_rank}, {}={nproc}: need nnodes >= 1, nproc >= 1 and node rank < nnodes",
                janus_env::NNODES,
                janus_env::NODE_RANK,
                janus_env::NPROC_PER_NODE
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grace_period_is_whole_seconds_or_refused_naming_the_variable() {
        let grace = |v: Option<&str>| {
            parse_whole(
                janus_env::TERMINATION_GRACE_SECONDS,
                "whole seconds",
                v.map(String::from),
            )
        };
        assert_eq!(grace(None).unwrap(), None);
        assert_eq!(grace(Some(" 300\n")).unwrap(), Some(300));
        for bad in ["30s", "-1", "1.5", ""] {
            let e = grace(Some(bad)).unwrap_err().to_string();
            assert!(e.contains("JANUS_TERMINATION_GRACE_SECONDS"), "{e}");
        }
    }

    fn role(vars: &[(&str, &str)]) -> Result<Role> {
        let map: std::collections::HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Role::from_vars(|k| map.get(k).cloned())
    }

    #[test]
    fn nothing_set_is_a_job_of_one() {
        let Role::Rank(w) = role(&[]).unwrap() else {
            panic!("not a rank")
        };
        assert_eq!(
            (w.rank, w.world_size, w.master_port),
            (0, 1, DEFAULT_MASTER_PORT)
        );
    }

    #[test]
    fn torchrun_names_are_accepted() {
        let r = role(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "4"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "h"),
            ("MASTER_PORT", "1234"),
        ]);
        let want = WorldInfo {
            rank: 3,
            world_size: 4,
            local_rank: 1,
            master_addr: "h".into(),
            master_port: 1234,
        };
        assert_eq!(r.unwrap(), Role::Rank(want));
    }

    #[test]
    fn operator_names_give_a_rank_or_a_launcher() {
        let r = role(&[
            ("JANUS_NODE_RANK", "2"),
            ("JANUS_NNODES", "3"),
            ("JANUS_MASTER_ADDR", "j-worker-0.j.ns.svc"),
            ("JANUS_MASTER_PORT", "29400"),
        ]);
        let Role::Rank(w) = r.unwrap() else {
            panic!("not a rank")
        };
        assert_eq!(
            (w.rank, w.world_size, w.master_addr.as_str(), w.master_port),
            (2, 3, "j-worker-0.j.ns.svc", 29400)
        );
        let r = role(&[
            ("JANUS_NODE_RANK", "1"),
            ("JANUS_NNODES", "2"),
            ("JANUS_NPROC_PER_NODE", "4"),
        ])
        .unwrap();
        assert!(
            matches!(
                r,
                Role::Launcher {
                    nproc: 4,
                    node_rank: 1,
                    nnodes: 2,
                    ..
                }
            ),
            "{r:?}"
        );
    }

    #[test]
    fn bad_values_are_named() {
        let e = role(&[("RANK", "x"), ("WORLD_SIZE", "2")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("RANK=\"x\""), "{e}");
        let e = role(&[("RANK", "2"), ("WORLD_SIZE", "2")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("RANK=2"), "{e}");
    }
}
