//! The trainer image carries what NCCL's InfiniBand / RoCE transport needs: rdma-core's
//! libibverbs with its hardware providers and librdmacm, in the image `images/build.py`
//! assembles (the CPU test image the end-to-end test runs) with every library they link,
//! and the same packages in `images/trainer.Dockerfile`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The names in `NAME = ["a", "b", ...]` of images/build.py.
fn python_list(source: &str, name: &str) -> Vec<String> {
    let line = source
        .lines()
        .find(|l| l.starts_with(&format!("{name} = [")))
        .unwrap_or_else(|| panic!("images/build.py has no {name}"));
    line.split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

#[test]
fn the_trainer_image_carries_libibverbs_its_providers_and_rdmacm() {
    let build = std::fs::read_to_string(repo().join("images/build.py")).unwrap();
    let rdma = python_list(&build, "RDMA_DEBS");
    assert!(rdma.contains(&"libibverbs1".to_string()), "{rdma:?}");
    let dockerfile = std::fs::read_to_string(repo().join("images/trainer.Dockerfile")).unwrap();
    let install = dockerfile
        .lines()
        .find(|l| l.contains("apt-get install") && l.contains("libibverbs1"))
        .expect("the Dockerfile installs libibverbs1");
    let mut docker: Vec<&str> = install
        .split_whitespace()
        .filter(|w| !w.starts_with('-') && !["&&", "apt-get", "install", "\\"].contains(w))
        .collect();
    docker.sort();
    let mut ours: Vec<&str> = rdma.iter().map(String::as_str).collect();
    ours.sort();
    assert_eq!(
        docker, ours,
        "the Dockerfile and build.py install different RDMA packages"
    );

    let tmp = tempfile::tempdir().unwrap();
    let binary = tmp.path().join("janus");
    std::fs::write(&binary, "#!/bin/sh\n").unwrap();
    let archive = tmp.path().join("trainer.tar");
    let python = std::env::var("JANUS_PYTHON").unwrap_or_else(|_| "python3".into());
    run(Command::new(python)
        .arg(repo().join("images/build.py"))
        .args(["trainer-cpu", "--tag", "janus.local/trainer:rdma-test"])
        .arg("--binary")
        .arg(&binary)
        .arg("--out")
        .arg(&archive));
    let oci = tmp.path().join("oci");
    let root = tmp.path().join("root");
    std::fs::create_dir_all(&oci).unwrap();
    std::fs::create_dir_all(&root).unwrap();
    run(Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(&oci));
    for blob in std::fs::read_dir(oci.join("blobs/sha256")).unwrap() {
        let blob = blob.unwrap().path();
        // Layers are tars; the config and manifests are JSON and fail to extract.
        let _ = Command::new("tar")
            .arg("-xf")
            .arg(&blob)
            .arg("-C")
            .arg(&root)
            .output();
    }
    let lib = root.join("usr/lib/x86_64-linux-gnu");
    for f in [
        "libibverbs.so.1",
        "librdmacm.so.1",
        "libmlx5.so.1",
        "libibverbs/libmlx5-rdmav34.so",
    ] {
        assert!(
            lib.join(f).exists() || lib.join(f).is_symlink(),
            "{f} is not in the image"
        );
    }
    assert!(root.join("usr/bin/ibv_devinfo").exists());
    // Everything the RDMA libraries link is in the image too.
    for f in ["libibverbs.so.1", "librdmacm.so.1", "libmlx5.so.1"] {
        let dynamic = run(Command::new("readelf").arg("-d").arg(lib.join(f)));
        for needed in dynamic
            .lines()
            .filter(|l| l.contains("(NEEDED)"))
            .filter_map(|l| l.split('[').nth(1)?.split(']').next())
        {
            let present = [lib.clone(), root.join("lib/x86_64-linux-gnu")]
                .iter()
                .any(|d| d.join(needed).exists() || d.join(needed).is_symlink());
            assert!(present, "{f} needs {needed}, which the image lacks");
        }
    }
}
