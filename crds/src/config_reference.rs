//! `docs/config-reference.md`, generated from the config types' doc comments (through
//! their JSON schema) and the presets' values, so the reference cannot drift from the
//! code: `crdgen` writes it beside the CRD YAML and a test compares the committed file.

use std::fmt::Write;

use serde_json::Value;

use crate::config::{presets, EvalConfig, SynthConfig, TrainConfig, PRESETS};

/// The reference's path, relative to the workspace root.
pub const PATH: &str = "docs/config-reference.md";

/// One documented key of a config document.
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    /// Dotted path (`hyperparameters.learning_rate`).
    pub path: String,
    /// The value's type as a reader writes it (`number`, `sft | orpo`, `string or null`).
    pub ty: String,
    /// The doc comment of the field (and of its type when the field has none).
    pub description: String,
    /// Whether the key is a section (a nested mapping) rather than a value.
    pub section: bool,
}

/// Every key of a config type's schema, sections before their keys, in field order.
pub fn keys(schema: &Value) -> Vec<Key> {
    let defs = schema.get("$defs").cloned().unwrap_or(Value::Null);
    let mut out = Vec::new();
    walk(&defs, schema, "", &mut out);
    out
}

/// The whole reference page.
pub fn markdown() -> String {
    let train = serde_json::to_value(schemars::schema_for!(TrainConfig)).expect("schema");
    let eval = serde_json::to_value(schemars::schema_for!(EvalConfig)).expect("schema");
    let presets: Vec<(&str, Value)> = PRESETS
        .iter()
        .map(|p| {
            let c = presets::preset(p).expect("a listed preset exists");
            (*p, serde_json::to_value(c).expect("a preset serializes"))
        })
        .collect();
    let eval_default = serde_json::to_value(EvalConfig::janus_bench()).expect("serializes");

    let mut s = String::new();
    s.push_str(
        "# Config reference\n\n\
         Generated from the doc comments of the config types in `crds/src/config/` by\n\
         `cargo run -p janus-crds --features k8s --bin crdgen`; a test fails when this page\n\
         is out of date. How a config is resolved (preset, then file, then `--set`) is in\n\
         [cli.md](cli.md). Every key is required in a resolved document; a file or `--set`\n\
         names only what it changes, and unknown keys are errors.\n\n\
         ## Trainer config (`janus train`, `JANUS_CONFIG` of a JanusTrainingJob's pods)\n\n\
         The value column is the `tiny` preset's (the embedded default); the recipe\n\
         presets' values follow in [Presets](#presets).\n",
    );
    let tiny = &presets.iter().find(|(n, _)| *n == "tiny").expect("tiny").1;
    table(&mut s, &keys(&train), tiny);

    s.push_str(
        "\n## Presets\n\n\
         Keys where a preset differs from `tiny` (`crds/src/config/presets.rs`, the\n\
         paper's recipes per GPU: the global batch also multiplies by the ranks).\n\n",
    );
    presets_table(&mut s, &keys(&train), &presets);

    s.push_str(
        "\n## Eval config (`janus eval generate|judge|score`, `JANUS_CONFIG` of a JanusEvalJob's pods)\n\n\
         The value column is the Janus evaluation protocol's default.\n",
    );
    table(&mut s, &keys(&eval), &eval_default);

    let synth = serde_json::to_value(schemars::schema_for!(SynthConfig)).expect("schema");
    let synth_default = serde_json::to_value(SynthConfig::defaults()).expect("serializes");
    s.push_str(
        "\n## Synthesis config (`janus data synthesize`)\n\n\
         The value column is the default (the Multifaceted Collection's shape); how the\n\
         stages run is in [data.md](data.md#synthesizing-data).\n",
    );
    table(&mut s, &keys(&synth), &synth_default);
    s
}

fn table(s: &mut String, keys: &[Key], values: &Value) {
    let mut open = false;
    for k in keys {
        if k.section {
            let _ = write!(s, "\n### `{}`\n\n{}\n\n", k.path, k.description);
            open = false;
            continue;
        }
        if !open {
            s.push_str("| key | type | value | what it does |\n|---|---|---|---|\n");
            open = true;
        }
        let _ = writeln!(
            s,
            "| `{}` | {} | {} | {} |",
            k.path,
            cell(&k.ty),
            cell(&show(lookup(values, &k.path))),
            cell(&k.description)
        );
    }
}

fn presets_table(s: &mut String, keys: &[Key], presets: &[(&str, Value)]) {
    let base = &presets[0].1;
    let names: Vec<&str> = presets.iter().map(|(n, _)| *n).collect();
    let _ = writeln!(
        s,
        "| key | {} |\n|---|{}",
        names
            .iter()
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(" | "),
        "---|".repeat(names.len())
    );
    for k in keys.iter().filter(|k| !k.section) {
        let vals: Vec<String> = presets
            .iter()
            .map(|(_, v)| show(lookup(v, &k.path)))
            .collect();
        let first = show(lookup(base, &k.path));
        if vals.iter().all(|v| *v == first) {
            continue;
        }
        let _ = writeln!(
            s,
            "| `{}` | {} |",
            k.path,
            vals.iter().map(|v| cell(v)).collect::<Vec<_>>().join(" | ")
        );
    }
}

fn lookup<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, k| v.get(k))
}

fn show(v: Option<&Value>) -> String {
    match v {
        None => "(unset)".into(),
        Some(Value::String(s)) => format!("`{s}`"),
        Some(v) => format!("`{v}`"),
    }
}

/// A table cell: one line, pipes escaped.
fn cell(t: &str) -> String {
    t.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

fn walk(defs: &Value, schema: &Value, prefix: &str, out: &mut Vec<Key>) {
    let Some(props) = schema.get("properties").and_then(Value::as_object) else {
        return;
    };
    // serde_json's map is sorted; a level's values come before its sections, so each
    // table is whole before the next heading.
    let (sections, values): (Vec<_>, Vec<_>) = props.iter().partition(|(_, prop)| {
        let (t, nullable) = target(defs, prop);
        t.get("properties").is_some() && !nullable
    });
    for (name, prop) in values.into_iter().chain(sections) {
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        let (target, nullable) = target(defs, prop);
        let description = description(prop, target);
        if target.get("properties").is_some() && !nullable {
            out.push(Key {
                path: path.clone(),
                ty: "section".into(),
                description,
                section: true,
            });
            walk(defs, target, &path, out);
        } else {
            let mut ty = type_name(defs, target);
            if nullable {
                ty.push_str(" or null");
            }
            out.push(Key {
                path,
                ty,
                description,
                section: false,
            });
        }
    }
}

/// The schema a property stands for (through `$ref` and an `Option`'s null branch),
/// and whether null is allowed.
fn target<'a>(defs: &'a Value, prop: &'a Value) -> (&'a Value, bool) {
    let mut nullable = false;
    let mut s = prop;
    for _ in 0..4 {
        if let Some(r) = s.get("$ref").and_then(Value::as_str) {
            let name = r.trim_start_matches("#/$defs/");
            s = defs.get(name).unwrap_or(&Value::Null);
            continue;
        }
        let branches = s.get("anyOf").or_else(|| s.get("oneOf"));
        if let Some(b) = branches.and_then(Value::as_array) {
            let non_null: Vec<&Value> = b
                .iter()
                .filter(|x| x.get("type") != Some(&Value::String("null".into())))
                .collect();
            if non_null.len() < b.len() && non_null.len() == 1 {
                nullable = true;
                s = non_null[0];
                continue;
            }
        }
        if let Some(Value::Array(types)) = s.get("type") {
            if types.iter().any(|t| t == "null") {
                nullable = true;
            }
        }
        break;
    }
    (s, nullable)
}

fn description(prop: &Value, target: &Value) -> String {
    let own = prop.get("description").and_then(Value::as_str);
    let mut d = own
        .or_else(|| target.get("description").and_then(Value::as_str))
        .unwrap_or("")
        .to_string();
    // Documented enum variants: say what each value means.
    if let Some(variants) = target.get("oneOf").and_then(Value::as_array) {
        let parts: Vec<String> = variants
            .iter()
            .filter_map(|v| {
                let c = v.get("const").or_else(|| v.get("enum")?.get(0))?.as_str()?;
                Some(match v.get("description").and_then(Value::as_str) {
                    Some(vd) => format!("`{c}`: {}", vd.trim_end_matches('.')),
                    None => format!("`{c}`"),
                })
            })
            .collect();
        if !parts.is_empty() && own.is_some() {
            d = format!("{d} Values: {}.", parts.join("; "));
        } else if !parts.is_empty() {
            d = format!("{d} {}.", parts.join("; "));
        }
    }
    d.trim().to_string()
}

fn type_name(defs: &Value, s: &Value) -> String {
    if let Some(v) = s.get("enum").and_then(Value::as_array) {
        return enum_values(v.iter());
    }
    if let Some(v) = s.get("oneOf").and_then(Value::as_array) {
        let consts: Vec<&Value> = v
            .iter()
            .filter_map(|x| x.get("const").or_else(|| x.get("enum")?.get(0)))
            .collect();
        if consts.len() == v.len() {
            return enum_values(consts.into_iter());
        }
    }
    if s.get("anyOf").is_some() {
        // ByteSize: a number or a string with a unit.
        return "bytes (number or `80GiB`)".into();
    }
    let ty = match s.get("type") {
        Some(Value::String(t)) => t.clone(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .collect::<Vec<_>>()
            .join(" or "),
        _ => "value".into(),
    };
    match ty.as_str() {
        "array" => {
            let item = s.get("items").map(|i| type_name(defs, target(defs, i).0));
            format!("list of {}", item.unwrap_or_else(|| "value".into()))
        }
        "integer" if s.get("minimum").and_then(Value::as_f64) == Some(0.0) => "integer >= 0".into(),
        "number" => "number".into(),
        _ => ty,
    }
}

fn enum_values<'a>(v: impl Iterator<Item = &'a Value>) -> String {
    v.filter_map(|x| x.as_str().map(|s| format!("`{s}`")))
        .collect::<Vec<_>>()
        .join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workspace_file(rel: &str) -> std::path::PathBuf {
        // The checkout cargo runs the test in (see crd_yaml's drift test).
        std::path::Path::new(
            &std::env::var("CARGO_MANIFEST_DIR")
                .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into()),
        )
        .join("..")
        .join(rel)
    }

    #[test]
    fn committed_config_reference_matches_the_types() {
        let path = workspace_file(PATH);
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == markdown(),
            "{} is out of date with the config types in crds/src/config/; regenerate it with `{}`",
            path.display(),
            crate::crd_yaml::REGENERATE
        );
    }

    #[test]
    fn every_config_key_is_described() {
        for (name, schema) in [
            ("TrainConfig", schemars::schema_for!(TrainConfig)),
            ("EvalConfig", schemars::schema_for!(EvalConfig)),
            ("SynthConfig", schemars::schema_for!(SynthConfig)),
        ] {
            let v = serde_json::to_value(schema).unwrap();
            let all = keys(&v);
            assert!(all.len() > 20, "{name}: {} keys", all.len());
            let missing: Vec<&str> = all
                .iter()
                .filter(|k| k.description.is_empty())
                .map(|k| k.path.as_str())
                .collect();
            assert!(
                missing.is_empty(),
                "{name}: keys without a doc comment: {missing:?}"
            );
        }
    }

    #[test]
    fn every_key_of_a_resolved_config_is_in_the_reference() {
        // The schema walk must see the document as serde writes it (no key lost to a
        // flatten or a rename), or the reference would silently skip settings.
        let v = serde_json::to_value(schemars::schema_for!(TrainConfig)).unwrap();
        let documented: Vec<String> = keys(&v).into_iter().map(|k| k.path).collect();
        let mut written = Vec::new();
        leaves(
            &serde_json::to_value(presets::janus_7b_dpo()).unwrap(),
            "",
            &mut written,
        );
        for k in written {
            assert!(documented.contains(&k), "{k} is not in the reference");
        }
    }

    fn leaves(v: &Value, prefix: &str, out: &mut Vec<String>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, x) in m {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    leaves(x, &p, out);
                }
            }
            _ => out.push(prefix.to_string()),
        }
    }
}
