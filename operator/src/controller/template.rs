//! A pod template override (`spec.workers.template`, `spec.worker.template`): a partial
//! PodTemplateSpec merged over the pod the operator generated, the same way for every
//! kind, keeping the contract whatever the override says.

use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;

/// Merge a partial PodTemplateSpec (`metadata`, `spec`) over the generated pod. The
/// contract (name, owner, the janus.dev labels, restartPolicy, hostname, subdomain) is
/// kept whatever the override says.
pub fn apply_template_override(pod: Pod, over: &Value) -> Result<Pod, String> {
    let Value::Object(over_map) = over else {
        return Err("must be an object with `metadata` and/or `spec`".into());
    };
    if let Some(k) = over_map.keys().find(|k| *k != "metadata" && *k != "spec") {
        return Err(format!("unknown key `{k}` (expected `metadata` or `spec`)"));
    }
    let contract = pod.clone();
    let mut v = serde_json::to_value(&pod).map_err(|e| e.to_string())?;
    if let Some(m) = over_map.get("metadata") {
        let mut m = m.clone();
        if let Value::Object(mm) = &mut m {
            mm.retain(|k, _| k == "labels" || k == "annotations");
        }
        merge(&mut v["metadata"], &m);
    }
    if let Some(s) = over_map.get("spec") {
        merge(&mut v["spec"], s);
    }
    let mut merged: Pod = serde_json::from_value(v).map_err(|e| e.to_string())?;
    // Re-assert the contract.
    merged.metadata.name = contract.metadata.name;
    merged.metadata.namespace = contract.metadata.namespace;
    merged.metadata.owner_references = contract.metadata.owner_references;
    let ml = merged.metadata.labels.get_or_insert_with(Default::default);
    for (k, val) in contract.metadata.labels.unwrap_or_default() {
        ml.insert(k, val);
    }
    let (spec, cspec) = (
        merged.spec.as_mut().expect("spec"),
        contract.spec.expect("spec"),
    );
    spec.restart_policy = cspec.restart_policy;
    spec.hostname = cspec.hostname;
    spec.subdomain = cspec.subdomain;
    Ok(merged)
}

/// Recursive merge: objects merge key by key; arrays whose items all have a `name`
/// merge by name; anything else replaces.
pub fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, ov) in o {
                match b.get_mut(k) {
                    Some(bv) => merge(bv, ov),
                    None => {
                        b.insert(k.clone(), ov.clone());
                    }
                }
            }
        }
        (Value::Array(b), Value::Array(o))
            if b.iter()
                .chain(o.iter())
                .all(|x| x.get("name").is_some_and(Value::is_string)) =>
        {
            for ov in o {
                match b.iter_mut().find(|bv| bv.get("name") == ov.get("name")) {
                    Some(bv) => merge(bv, ov),
                    None => b.push(ov.clone()),
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}
