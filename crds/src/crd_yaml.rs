//! The CRD YAML files of the Helm chart, generated from the Rust types.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::{JanusEvalJob, JanusTrainingJob, MAX_JSON_INTEGER};

/// Command that regenerates the chart's CRDs.
pub const REGENERATE: &str = "cargo run -p janus-crds --features k8s --bin crdgen";

/// `(file name, YAML)` of every CRD, as written into `charts/janus-operator/crds/`.
pub fn all() -> Vec<(&'static str, String)> {
    vec![
        ("janustrainingjobs.janus.dev.yaml", render(&training_crd())),
        ("janusevaljobs.janus.dev.yaml", render(&eval_crd())),
    ]
}

/// The `JanusTrainingJob` CRD as installed: the derived schema with every integer
/// bounded (see [`bound_integers`]).
pub fn training_crd() -> CustomResourceDefinition {
    bounded(JanusTrainingJob::crd())
}

/// The `JanusEvalJob` CRD as installed.
pub fn eval_crd() -> CustomResourceDefinition {
    bounded(JanusEvalJob::crd())
}

fn bounded(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    let mut v = serde_json::to_value(&crd).expect("CRD serializes");
    if let Some(versions) = v
        .pointer_mut("/spec/versions")
        .and_then(|x| x.as_array_mut())
    {
        for version in versions {
            if let Some(schema) = version.pointer_mut("/schema/openAPIV3Schema") {
                bound_integers(schema);
            }
        }
    }
    serde_json::from_value(v).expect("bounded CRD deserializes")
}

/// The range of integers of each `format` that the Rust side decodes.
fn format_range(format: Option<&str>) -> (i64, i64) {
    let big = MAX_JSON_INTEGER as i64;
    match format {
        Some("int32") => (i32::MIN as i64, i32::MAX as i64),
        Some("uint32") => (0, u32::MAX as i64),
        Some("uint64") | Some("uint") => (0, big),
        _ => (-big, big),
    }
}

/// Gives every `type: integer` without a `minimum` or `maximum` the range of its format.
///
/// The API server does not range-check `format: int32` and friends, so without bounds
/// it stores values (`3000000000` in an `int32`) that no client decodes, and a watch of
/// the kind fails for every object. The fields of our own types carry meaningful bounds
/// (schemars attributes); this covers the rest: the embedded Kubernetes types
/// (tolerations, affinity weights) and the status.
pub fn bound_integers(schema: &mut serde_json::Value) {
    let Some(obj) = schema.as_object_mut() else {
        return;
    };
    if obj.get("type").and_then(|t| t.as_str()) == Some("integer") {
        let (lo, hi) = format_range(obj.get("format").and_then(|f| f.as_str()));
        obj.entry("minimum").or_insert(lo.into());
        obj.entry("maximum").or_insert(hi.into());
    }
    for key in ["properties", "patternProperties"] {
        if let Some(props) = obj.get_mut(key).and_then(|p| p.as_object_mut()) {
            props.values_mut().for_each(bound_integers);
        }
    }
    for key in ["items", "additionalProperties", "not"] {
        if let Some(sub) = obj.get_mut(key) {
            bound_integers(sub);
        }
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(list) = obj.get_mut(key).and_then(|l| l.as_array_mut()) {
            list.iter_mut().for_each(bound_integers);
        }
    }
}

fn render(crd: &CustomResourceDefinition) -> String {
    let yaml = serde_yaml::to_string(crd).expect("CRD serializes to YAML");
    format!("# Generated from crds/ by `{REGENERATE}`. Do not edit.\n{yaml}")
}

/// An integer field of a schema and its bounds.
#[derive(Debug, Clone, PartialEq)]
pub struct IntegerField {
    /// `spec.a.b[]` (`[]`: an array's items, `{}`: a map's values).
    pub path: String,
    pub format: Option<String>,
    pub minimum: Option<f64>,
    pub maximum: Option<f64>,
}

/// Every integer field of `schema`.
pub fn integer_fields(schema: &serde_json::Value) -> Vec<IntegerField> {
    fn walk(s: &serde_json::Value, path: String, out: &mut Vec<IntegerField>) {
        let Some(obj) = s.as_object() else { return };
        if obj.get("type").and_then(|t| t.as_str()) == Some("integer") {
            out.push(IntegerField {
                path: path.clone(),
                format: obj.get("format").and_then(|f| f.as_str()).map(String::from),
                minimum: obj.get("minimum").and_then(|m| m.as_f64()),
                maximum: obj.get("maximum").and_then(|m| m.as_f64()),
            });
        }
        if let Some(props) = obj.get("properties").and_then(|p| p.as_object()) {
            for (k, v) in props {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                walk(v, p, out);
            }
        }
        if let Some(items) = obj.get("items") {
            walk(items, format!("{path}[]"), out);
        }
        if let Some(ap) = obj.get("additionalProperties") {
            walk(ap, format!("{path}{{}}"), out);
        }
    }
    let mut out = vec![];
    walk(schema, String::new(), &mut out);
    out
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

    /// No integer the API server stores can fail to decode: every one has both bounds,
    /// inside the range of its format (and so of the Rust type behind it).
    #[test]
    fn every_integer_of_both_crds_is_bounded_within_its_format() {
        for crd in [training_crd(), eval_crd()] {
            let v = serde_json::to_value(&crd).unwrap();
            let schema = &v["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
            let fields = integer_fields(schema);
            assert!(fields.len() > 20, "{fields:?}");
            for IntegerField {
                path,
                format,
                minimum: min,
                maximum: max,
            } in fields
            {
                let (lo, hi) = format_range(format.as_deref());
                let (Some(min), Some(max)) = (min, max) else {
                    panic!("{}: {path} has no minimum/maximum", crd.spec.names.kind);
                };
                assert!(
                    min >= lo as f64 && max <= hi as f64 && min <= max,
                    "{path}: [{min}, {max}] outside {format:?}'s [{lo}, {hi}]"
                );
            }
        }
    }

    /// What `kubectl explain` shows: every property of both kinds has a description
    /// (the embedded Kubernetes types bring their own).
    #[test]
    fn every_property_of_both_crds_is_described() {
        fn walk(s: &serde_json::Value, path: &str, missing: &mut Vec<String>) {
            if let Some(props) = s.get("properties").and_then(|p| p.as_object()) {
                for (k, v) in props {
                    let p = format!("{path}.{k}");
                    let described = v
                        .get("description")
                        .and_then(|d| d.as_str())
                        .is_some_and(|d| !d.trim().is_empty());
                    if !described {
                        missing.push(p.clone());
                    }
                    walk(v, &p, missing);
                }
            }
            if let Some(items) = s.get("items") {
                walk(items, &format!("{path}[]"), missing);
            }
            if let Some(extra) = s.get("additionalProperties").filter(|a| a.is_object()) {
                walk(extra, &format!("{path}{{}}"), missing);
            }
        }
        for crd in [training_crd(), eval_crd()] {
            let v = serde_json::to_value(&crd).unwrap();
            let schema = &v["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
            let mut missing = Vec::new();
            walk(&schema["properties"]["spec"], "spec", &mut missing);
            walk(&schema["properties"]["status"], "status", &mut missing);
            assert!(
                missing.is_empty(),
                "{}: properties without a description: {missing:?}",
                crd.spec.names.kind
            );
        }
    }

    #[test]
    fn meaningful_bounds_of_our_own_fields_are_kept() {
        let v = serde_json::to_value(training_crd()).unwrap();
        let schema = &v["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let f = integer_fields(schema);
        let get = |p: &str| f.iter().find(|x| x.path == p).unwrap().clone();
        assert_eq!(get("spec.runPolicy.backoffLimit").maximum, Some(10000.0));
        assert_eq!(get("spec.workers.replicas").minimum, Some(1.0));
        assert_eq!(
            get("spec.hyperparameters.seed").maximum,
            Some(MAX_JSON_INTEGER as f64)
        );
        // The status and embedded Kubernetes types get their format's range.
        assert_eq!(get("status.restarts").maximum, Some(i32::MAX as f64));
        assert_eq!(
            get("spec.workers.tolerations[].tolerationSeconds").maximum,
            Some(MAX_JSON_INTEGER as f64)
        );
    }
}
