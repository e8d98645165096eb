//! Writes what is generated from the Rust types: the CRD YAML of the custom resources
//! and the config reference page.
//!
//! `cargo run -p janus-crds --features k8s --bin crdgen` rewrites
//! `charts/janus-operator/crds/` and `docs/config-reference.md`; `--stdout` prints the
//! CRDs instead.

use std::path::PathBuf;

fn main() {
    let to_stdout = std::env::args().any(|a| a == "--stdout");
    let files = janus_crds::crd_yaml::all();
    if to_stdout {
        for (_, yaml) in &files {
            print!("---\n{yaml}");
        }
        return;
    }
    let root = PathBuf::from(
        &std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into()),
    )
    .join("..");
    let dir = root.join("charts/janus-operator/crds");
    std::fs::create_dir_all(&dir).expect("create the chart's crds/ directory");
    for (name, yaml) in files {
        let path = dir.join(name);
        std::fs::write(&path, yaml).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        eprintln!("wrote {}", path.display());
    }
    let reference = root.join(janus_crds::config_reference::PATH);
    std::fs::write(&reference, janus_crds::config_reference::markdown())
        .unwrap_or_else(|e| panic!("{}: {e}", reference.display()));
    eprintln!("wrote {}", reference.display());
}
