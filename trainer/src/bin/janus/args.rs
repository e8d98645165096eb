//! Command-line value types that several commands share.

use clap::ValueEnum;
use janus::config::{DeviceChoice, Dtype};

/// Parameter dtype on the command line.
#[derive(Clone, Copy, ValueEnum)]
pub enum DtypeArg {
    Float32,
    Bfloat16,
}

impl DtypeArg {
    pub fn dtype(self) -> Dtype {
        match self {
            DtypeArg::Float32 => Dtype::Float32,
            DtypeArg::Bfloat16 => Dtype::Bfloat16,
        }
    }

    pub fn kind(self) -> tch::Kind {
        janus::config::kind(self.dtype())
    }
}

/// Where to run (auto: CUDA when available), as `model.device` says it.
#[derive(Clone, Copy, ValueEnum)]
pub enum DeviceArg {
    Auto,
    Cpu,
    Cuda,
}

impl DeviceArg {
    pub fn choice(self) -> DeviceChoice {
        match self {
            DeviceArg::Auto => DeviceChoice::Auto,
            DeviceArg::Cpu => DeviceChoice::Cpu,
            DeviceArg::Cuda => DeviceChoice::Cuda,
        }
    }
}
