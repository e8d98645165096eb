//! The device a process computes on, from the config's (or a command's) choice and the
//! process's local rank: one rank per GPU, local rank `i` on CUDA device `i`, the
//! device NCCL binds for that rank (`dist::nccl`). Training, `janus bench-train`,
//! `janus serve` and evaluation all choose here.

use tch::Device;

use crate::config::DeviceChoice;
use crate::error::{Error, Result};

/// The device of local rank `local_rank` on a node where `cuda_devices` CUDA devices
/// are visible. Pure, so the mapping is tested without a GPU.
pub fn pick(
    choice: DeviceChoice,
    cuda_devices: usize,
    local_rank: usize,
) -> std::result::Result<Device, String> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Auto if cuda_devices == 0 => Ok(Device::Cpu),
        DeviceChoice::Cuda if cuda_devices == 0 => {
            Err("`model.device` is `cuda` but no CUDA device is available".into())
        }
        _ if local_rank < cuda_devices => Ok(Device::Cuda(local_rank)),
        // Two ranks on one GPU would each hold a whole model there, and NCCL refuses
        // two ranks of one communicator on one device.
        _ => Err(format!(
            "local rank {local_rank} (LOCAL_RANK) takes CUDA device {local_rank}, but {cuda_devices} \
             CUDA device(s) are visible: start at most {cuda_devices} rank(s) on this node"
        )),
    }
}

/// [`pick`] with the CUDA devices this process sees.
pub fn select(choice: DeviceChoice, local_rank: usize) -> Result<Device> {
    let visible = match choice {
        DeviceChoice::Cpu => 0,
        _ => tch::Cuda::device_count().max(0) as usize,
    };
    pick(choice, visible, local_rank).map_err(Error::Config)
}

/// This process's `LOCAL_RANK` (set by `janus launch` and torchrun), 0 when unset: for
/// commands that run outside a training job's world (`janus serve`, evaluation).
pub fn local_rank_from_env() -> Result<usize> {
    let n = crate::dist::env::whole_number("LOCAL_RANK", "a whole number")?;
    Ok(n.unwrap_or(0) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::env::Role;

    #[test]
    fn local_rank_3_takes_cuda_device_3_when_more_than_3_are_visible() {
        let vars = [
            ("RANK", "7"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_RANK", "3"),
            ("MASTER_ADDR", "10.0.0.1"),
        ];
        let Role::Rank(info) = Role::from_vars(|k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
        .unwrap() else {
            panic!("a rank")
        };
        for choice in [DeviceChoice::Cuda, DeviceChoice::Auto] {
            assert_eq!(pick(choice, 4, info.local_rank), Ok(Device::Cuda(3)));
            assert_eq!(pick(choice, 8, info.local_rank), Ok(Device::Cuda(3)));
        }
        assert_eq!(pick(DeviceChoice::Cuda, 8, 0), Ok(Device::Cuda(0)));
    }

    #[test]
    fn cpu_is_cpu_and_auto_without_cuda_is_cpu() {
        assert_eq!(pick(DeviceChoice::Cpu, 8, 3), Ok(Device::Cpu));
        assert_eq!(pick(DeviceChoice::Auto, 0, 3), Ok(Device::Cpu));
        assert_eq!(pick(DeviceChoice::Auto, 0, 0), Ok(Device::Cpu));
    }

    #[test]
    fn a_local_rank_without_its_own_gpu_is_refused_naming_the_counts() {
        let e = pick(DeviceChoice::Cuda, 3, 3).unwrap_err();
        assert!(
            e.contains("local rank 3 (LOCAL_RANK)") && e.contains("3 CUDA device(s)"),
            "{e}"
        );
        assert!(pick(DeviceChoice::Auto, 2, 3).is_err());
        let e = pick(DeviceChoice::Cuda, 0, 0).unwrap_err();
        assert!(e.contains("`model.device` is `cuda`"), "{e}");
    }
}
