//! `janus launch --nproc N -- <janus args>`: N local ranks of one command.

use std::ffi::OsString;

use clap::Args;
use janus::dist::launch::{free_port, launch, LaunchSpec};
use janus::{Error, Result};

#[derive(Args)]
pub struct LaunchArgs {
    #[arg(long)]
    nproc: usize,
    /// The command every rank runs.
    #[arg(last = true, required = true)]
    args: Vec<OsString>,
}

pub fn run(a: LaunchArgs) -> Result<()> {
    if a.nproc == 0 {
        return Err(Error::Config("--nproc must be >= 1".into()));
    }
    let spec = LaunchSpec {
        nproc: a.nproc,
        node_rank: 0,
        nnodes: 1,
        master_addr: "127.0.0.1".into(),
        master_port: free_port()?,
        args: a.args,
    };
    std::process::exit(launch(&spec)?);
}
