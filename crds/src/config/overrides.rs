//! Overlaying documents: a preset, then a file, then `key.path=value` overrides.

use std::path::Path;

use serde::de::DeserializeOwned;
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

/// `defaults`, then the YAML mapping in `file`, then the `key=value` overrides, read as
/// `T`. Errors name the file (or `what` without one) and the field's path.
pub fn resolve_layered<T: DeserializeOwned>(
    mut value: Value,
    file: Option<&Path>,
    overrides: &[String],
    what: &str,
) -> Result<(T, String)> {
    let mut origin = what.to_string();
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
        let doc: Value = serde_yaml::from_str(&text)
            .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
        if !doc.is_object() {
            return Err(ConfigError(format!(
                "{}: expected a mapping at the top level",
                path.display()
            )));
        }
        merge(&mut value, doc);
        origin = path.display().to_string();
    }
    for o in overrides {
        merge(&mut value, parse_override(o)?);
    }
    Ok((deserialize_at(value, &origin)?, origin))
}

/// `value` read as `T`, an error naming `origin` and the field's path.
pub fn deserialize_at<T: DeserializeOwned>(value: Value, origin: &str) -> Result<T> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        ConfigError(format!("{origin}: `{path}`: {}", e.into_inner()))
    })
}
