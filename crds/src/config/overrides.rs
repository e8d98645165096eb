//! Overlaying documents: a preset, then a file, then `key.path=value` overrides.

use serde_json::Value;

use super::error::{ConfigError, Result};

/// Recursively overlay `patch` on `base` (objects merge, everything else replaces).
pub fn merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, pv) in p {
                match b.get_mut(&k) {
                    Some(bv) if bv.is_object() && pv.is_object() => merge(bv, pv),
                    _ => {
                        b.insert(k, pv);
                    }
                }
            }
        }
        (b, p) => *b = p,
    }
}

/// Parse `a.b.c=value` into a nested object; the value is read as YAML so numbers,
/// booleans and lists keep their types.
pub fn parse_override(s: &str) -> Result<Value> {
    let (key, raw) = s
        .split_once('=')
        .ok_or_else(|| ConfigError(format!("override `{s}` is not of the form key.path=value")))?;
    let value: Value = serde_yaml::from_str(raw)
        .map_err(|e| ConfigError(format!("override `{key}`: value `{raw}`: {e}")))?;
    let mut out = value;
    for part in key.split('.').rev() {
        if part.is_empty() {
            return Err(ConfigError(format!(
                "override `{s}` has an empty key segment"
            )));
        }
        let mut m = serde_json::Map::new();
        m.insert(part.to_string(), out);
        out = Value::Object(m);
    }
    Ok(out)
}
