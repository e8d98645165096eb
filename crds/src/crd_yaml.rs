//! The CRD YAML files of the Helm chart, generated from the Rust types.

use kube::CustomResourceExt;

use crate::{JanusEvalJob, JanusTrainingJob};

/// Command that regenerates the chart's CRDs.
pub const REGENERATE: &str = "cargo run -p janus-crds --features k8s --bin crdgen";

/// `(file name, YAML)` of every CRD, as written into `charts/janus-operator/crds/`.
pub fn all() -> Vec<(&'static str, String)> {
    vec![
        (
            "janustrainingjobs.janus.dev.yaml",
            render(&JanusTrainingJob::crd()),
        ),
        ("janusevaljobs.janus.dev.yaml", render(&JanusEvalJob::crd())),
    ]
}

fn render(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> String {
    let yaml = serde_yaml::to_string(crd).expect("CRD serializes to YAML");
    format!("# Generated from crds/ by `{REGENERATE}`. Do not edit.\n{yaml}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed chart CRDs are exactly what the types generate.
    #[test]
    fn committed_crd_yaml_matches_the_types() {
        // The checkout cargo runs the test in, not the one it was compiled in: a warm
        // cache (CI) may hold this binary built from another clone, and cargo does not
        // rebuild it for a move.
        let dir = std::path::Path::new(
            &std::env::var("CARGO_MANIFEST_DIR")
                .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into()),
        )
        .join("../charts/janus-operator/crds");
        for (name, generated) in all() {
            let path = dir.join(name);
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                committed == generated,
                "{} is out of date with the Rust types in crds/; regenerate it with `{REGENERATE}`",
                path.display()
            );
        }
    }
}
