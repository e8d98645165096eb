//! `janus train`: resolve the config, start local ranks when the pod has several
//! GPUs, run the job, print its summary.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::Args;
use janus::config::TrainConfig;
use janus::dist::env::Role;
use janus::dist::launch::{launch, LaunchSpec};
use janus::train::StopRequest;
use janus::train::{self, RunOptions};
use janus::{Error, Result};

#[derive(Args)]
pub struct TrainArgs {
    /// Config file; `JANUS_CONFIG` (set by the operator) when omitted.
    #[arg(long, env = "JANUS_CONFIG")]
    config: Option<PathBuf>,
    /// Preset to start from (tiny, janus-7b-sft, janus-7b-orpo); overrides the file's `preset:`.
    #[arg(long)]
    preset: Option<String>,
    /// Override a key, e.g. `--set hyperparameters.learning_rate=1e-5` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Stop right after the checkpoint of this step, as an interruption would.
    #[arg(long)]
    stop_after_steps: Option<u64>,
    /// The gang attempt this run belongs to (set by the operator): checkpoints of an
    /// older attempt are refused once a newer one has started.
    #[arg(long, env = "JANUS_ATTEMPT")]
    attempt: Option<u64>,
    /// Print the resolved config and exit.
    #[arg(long)]
    print_config: bool,
}

pub fn run(a: TrainArgs, terminal: bool) -> Result<()> {
    let cfg = TrainConfig::resolve(a.preset.as_deref(), a.config.as_deref(), &a.overrides)?;
    if a.print_config {
        println!(
            "{}",
            serde_yaml::to_string(&cfg).expect("config serializes")
        );
        return Ok(());
    }
    let world = match Role::from_env()? {
        // A pod with several GPUs: start one rank per GPU, as `janus launch` does.
        Role::Launcher {
            nproc,
            node_rank,
            nnodes,
            master_addr,
            master_port,
        } => {
            let args = std::env::args_os().skip(1).collect();
            let spec = LaunchSpec {
                nproc,
                node_rank,
                nnodes,
                master_addr,
                master_port,
                args,
            };
            std::process::exit(launch(&spec)?);
        }
        Role::Rank(info) => info,
    };
    let opts = RunOptions {
        stop_after_steps: a.stop_after_steps,
        progress_bar: terminal,
        world: Some(world.clone()),
        stop: Some(stop_on_signals()?),
        attempt: a.attempt,
    };
    let s = train::run(&cfg, &opts)?;
    if world.rank == 0 {
        println!(
            "{}",
            serde_json::to_string_pretty(&s).expect("summary serializes")
        );
    }
    Ok(())
}

/// SIGTERM (the kubelet stopping the pod: suspend, preemption, eviction, drain) and
/// SIGINT stop the run at the next step boundary, with a checkpoint when one fits in
/// the grace period the operator passes in `JANUS_TERMINATION_GRACE_SECONDS`.
fn stop_on_signals() -> Result<StopRequest> {
    let flag = Arc::new(AtomicBool::new(false));
    let armed = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let (f, a) = (flag.clone(), armed.clone());
        // Outside the step loop, or at a second signal, exit as the default action
        // would (a container's PID 1 has no default action: it would wait for SIGKILL).
        let handler = move || {
            if !a.load(Ordering::SeqCst) || f.swap(true, Ordering::SeqCst) {
                signal_hook::low_level::exit(janus_crds::exit_code::TERMINATED);
            }
        };
        // SAFETY: the handler only touches atomics and calls _exit(2), both
        // async-signal-safe.
        unsafe { signal_hook::low_level::register(sig, handler) }
            .map_err(|e| Error::io("installing signal handlers", e))?;
    }
    let grace = janus::dist::env::termination_grace()?;
    Ok(StopRequest { flag, armed, grace })
}
