//! Multifaceted Bench records in every published variant: `rubrics` or the older
//! `rubric` (a list, or one rubric), with or without `preference_set`, `prompt` or
//! `instruction`, score descriptions as `{"1": ..., "5": ...}` or as
//! `score1_description` .. `score5_description`. No file has an id column: an item's
//! id is its row index (blank JSONL lines do not count).
//!
//! Each rubric also keeps the text the original judge is shown (`Rubric::shown`):
//! `json.dumps(rubric, indent=4)` of the record's rubric object, keys in the file's
//! order, or a legacy string `rubric` as it is.

use std::path::PathBuf;

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::pyjson::{dumps_indent4, Json};
use crate::error::{Error, IoContext, Result};
use crate::storage::{self, Store};

#[derive(Debug, Clone, PartialEq)]
pub struct Rubric {
    pub criteria: String,
    /// Descriptions of scores 1 to 5.
    pub scores: [String; 5],
    /// The rubric as the original judge prompt shows it (`{score_rubric}`).
    pub shown: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Preference {
    pub dimension: String,
    pub subdimension: String,
    pub preference: String,
    pub description: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BenchItem {
    /// Row index in the bench file.
    pub id: usize,
    pub source: String,
    pub system: String,
    pub prompt: String,
    pub reference_answer: String,
    pub rubrics: Vec<Rubric>,
    pub preference_set: Option<Vec<Preference>>,
}

impl BenchItem {
    /// The preference dimension rubric `k` grades: bench rubrics follow the
    /// preference set's order, one per dimension (when the counts agree).
    pub fn dimension_of(&self, k: usize) -> Option<&str> {
        let ps = self.preference_set.as_ref()?;
        (ps.len() == self.rubrics.len()).then(|| ps[k].dimension.as_str())
    }
}

/// A loaded bench: its items and the sha256 of the file (results carry it, so scores
/// of different benches are never compared).
pub struct Bench {
    pub items: Vec<BenchItem>,
    pub sha256: String,
    pub path: String,
}

fn text(v: &Value, keys: &[&str], required: bool) -> std::result::Result<String, String> {
    for k in keys {
        match v.get(*k) {
            Some(Value::String(s)) => return Ok(s.clone()),
            Some(Value::Null) | None => continue,
            Some(other) => return Err(format!("field `{k}` must be a string, found {other}")),
        }
    }
    if required {
        Err(format!("missing field `{}`", keys.join("` or `")))
    } else {
        Ok(String::new())
    }
}

fn rubric(v: &Value, at: &str) -> std::result::Result<Rubric, String> {
    let criteria = text(v, &["criteria"], true).map_err(|e| format!("`{at}`: {e}"))?;
    let descriptions = v.get("score_descriptions").filter(|d| !d.is_null());
    let mut scores: [String; 5] = Default::default();
    for (i, slot) in scores.iter_mut().enumerate() {
        let n = i + 1;
        let found = match descriptions {
            Some(d) => d
                .get(n.to_string())
                .or_else(|| d.get(format!("score{n}_description"))),
            None => v.get(format!("score{n}_description")),
        };
        *slot = match found {
            Some(Value::String(s)) => s.clone(),
            _ => return Err(format!("`{at}`: no description of score {n} (expected `score_descriptions` with keys \"1\"..\"5\", or `score{n}_description`)")),
        };
    }
    Ok(Rubric {
        criteria,
        scores,
        shown: String::new(),
    })
}

/// `rubric` shown as `json.dumps(.., indent=4)` of its record text (`ordered`, keys in
/// file order) or, without one, of the parsed value.
fn shown_as_json(mut r: Rubric, value: &Value, ordered: Option<&Json>) -> Rubric {
    r.shown = match ordered {
        Some(o) => dumps_indent4(o),
        None => dumps_indent4(&Json::from(value)),
    };
    r
}

fn preference(v: &Value, at: &str) -> std::result::Result<Preference, String> {
    let f = |k: &str, req: bool| text(v, &[k], req).map_err(|e| format!("`{at}`: {e}"));
    Ok(Preference {
        dimension: f("dimension", true)?,
        subdimension: f("subdimension", false)?,
        preference: f("preference", false)?,
        description: f("description", false)?,
    })
}

/// One bench record (row `id`).
pub fn parse_item(id: usize, v: &Value) -> std::result::Result<BenchItem, String> {
    parse_record(id, v, None)
}

/// The rubrics of a record: its `rubrics` (or `rubric`) value, with the same value
/// parsed from the record's text with its key order when there is one.
fn rubrics_of(
    key: &str,
    raw: &Value,
    ordered: Option<&Json>,
) -> std::result::Result<Vec<Rubric>, String> {
    match raw {
        Value::Array(list) => list
            .iter()
            .enumerate()
            .map(|(k, r)| {
                let o = match ordered {
                    Some(Json::Array(a)) => a.get(k),
                    _ => None,
                };
                Ok(shown_as_json(rubric(r, &format!("{key}[{k}]"))?, r, o))
            })
            .collect(),
        Value::Object(_) => Ok(vec![shown_as_json(rubric(raw, key)?, raw, ordered)]),
        // Older benches and some exports store the rubric as JSON text: the original
        // formats that text into the prompt as it is.
        Value::String(s) => {
            let parsed: Value = serde_json::from_str(s)
                .map_err(|e| format!("`{key}` is text that is not JSON: {e}"))?;
            let ordered = Json::parse(s).ok();
            let mut rubrics = rubrics_of(key, &parsed, ordered.as_ref())?;
            if parsed.is_object() {
                rubrics[0].shown = s.clone();
            }
            Ok(rubrics)
        }
        other => Err(format!("`{key}` must be a list of rubrics, found {other}")),
    }
}

/// One bench record (row `id`); `ordered` is the same record parsed from its text
/// with its key order, when the reader kept the text.
pub fn parse_record(
    id: usize,
    v: &Value,
    ordered: Option<&Json>,
) -> std::result::Result<BenchItem, String> {
    if !v.is_object() {
        return Err("expected a JSON object".into());
    }
    let (key, raw) = match (v.get("rubrics"), v.get("rubric")) {
        (Some(r), _) if !r.is_null() => ("rubrics", r),
        (_, Some(r)) if !r.is_null() => ("rubric", r),
        _ => return Err("missing field `rubrics` (or `rubric`)".into()),
    };
    let rubrics = rubrics_of(key, raw, ordered.and_then(|o| o.get(key)))?;
    if rubrics.is_empty() {
        return Err(format!("`{key}` is empty"));
    }
    let preference_set = match v.get("preference_set") {
        None | Some(Value::Null) => None,
        Some(Value::Array(list)) => Some(
            list.iter()
                .enumerate()
                .map(|(k, p)| preference(p, &format!("preference_set[{k}]")))
                .collect::<std::result::Result<Vec<_>, _>>()?,
        ),
        Some(other) => return Err(format!("`preference_set` must be a list, found {other}")),
    };
    let prompt = text(v, &["prompt", "instruction"], true)?;
    if prompt.trim().is_empty() {
        return Err("field `prompt` is empty".into());
    }
    Ok(BenchItem {
        id,
        source: text(v, &["source", "main_source"], false)?,
        system: text(v, &["system"], false)?,
        prompt,
        reference_answer: text(v, &["reference_answer"], true)?,
        rubrics,
        preference_set,
    })
}

/// Load the bench at `path` (a file path or a URL), its first `limit` items when set.
pub fn load(path: &str, limit: Option<usize>) -> Result<Bench> {
    let (local, _staging) = local_file(path, "bench")?;
    let bytes = std::fs::read(&local).ctx(|| local.display().to_string())?;
    let sha256 = hex::encode(Sha256::digest(&bytes));
    let rows = crate::data::read_rows_with_text(&local).map_err(|e| rename(e, &local, path))?;
    let mut items = Vec::new();
    for (id, row) in rows.into_iter().enumerate() {
        if limit.is_some_and(|l| items.len() >= l) {
            break;
        }
        let location = row.location.replace(&local.display().to_string(), path);
        let v = row
            .value
            .map_err(|e| Error::Data(format!("{location}: {e}")))?;
        let ordered = row.text.as_deref().and_then(|t| Json::parse(t).ok());
        items.push(
            parse_record(id, &v, ordered.as_ref())
                .map_err(|e| Error::Data(format!("{location}: {e}")))?,
        );
    }
    if items.is_empty() {
        return Err(Error::Data(format!("{path}: no bench items")));
    }
    Ok(Bench {
        items,
        sha256,
        path: path.to_string(),
    })
}

/// Name the file as the user gave it, not a download's scratch path.
fn rename(e: Error, local: &std::path::Path, path: &str) -> Error {
    match e {
        Error::Data(m) => Error::Data(m.replace(&local.display().to_string(), path)),
        e => e,
    }
}

/// `path` on local disk: itself, or (a URL) a downloaded copy in a staging directory
/// that lives as long as the returned guard. `what` names the file in errors.
pub fn local_file(path: &str, what: &str) -> Result<(PathBuf, Option<tempfile::TempDir>)> {
    if !storage::is_url(path) || path.starts_with("file://") {
        let p = PathBuf::from(path.strip_prefix("file://").unwrap_or(path));
        if !p.exists() {
            return Err(Error::Data(format!("{path}: no such {what} file")));
        }
        return Ok((p, None));
    }
    let (parent, name) = path
        .rsplit_once('/')
        .ok_or_else(|| Error::Config(format!("{what} URL `{path}` names no object")))?;
    let staging = crate::checkpoint::staging_dir("janus-input-")?;
    let local = staging.path().join(name);
    let store = Store::open(parent, std::time::Duration::from_secs(120))?;
    store.get_file(name, &local).map_err(|e| {
        if e.is_not_found() {
            Error::Data(format!("{path}: no such {what} object"))
        } else {
            e
        }
    })?;
    Ok((local, Some(staging)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn descriptions() -> Value {
        json!({"1": "a", "2": "b", "3": "c", "4": "d", "5": "e"})
    }

    #[test]
    fn every_published_variant_parses() {
        let new = json!({
            "source": "s", "preference_set": [{"dimension": "style", "subdimension": "x", "preference": "p", "description": "d"}],
            "system": "S", "prompt": "P", "reference_answer": "R",
            "rubrics": [{"criteria": "C", "score_descriptions": descriptions()}],
        });
        let item = parse_item(7, &new).unwrap();
        assert_eq!((item.id, item.rubrics[0].scores[4].as_str()), (7, "e"));
        assert_eq!(item.dimension_of(0), Some("style"));
        // Older: `rubric` (one object), no preference set, `instruction`, Prometheus keys.
        let old = json!({
            "source": "s", "system": null, "instruction": "P", "reference_answer": "R",
            "rubric": {"criteria": "C", "score1_description": "a", "score2_description": "b",
                       "score3_description": "c", "score4_description": "d", "score5_description": "e"},
        });
        let item = parse_item(0, &old).unwrap();
        assert_eq!((item.prompt.as_str(), item.system.as_str()), ("P", ""));
        assert_eq!(item.rubrics.len(), 1);
        assert_eq!(item.preference_set, None);
        assert_eq!(item.dimension_of(0), None);
        let listed = json!({"prompt": "P", "reference_answer": "R", "rubric": [{"criteria": "C", "score_descriptions": descriptions()}]});
        assert_eq!(parse_item(0, &listed).unwrap().rubrics.len(), 1);
    }

    #[test]
    fn bad_records_name_the_field() {
        let cases = [
            (json!({"prompt": "P", "reference_answer": "R"}), "rubrics"),
            (
                json!({"prompt": "P", "rubrics": [{"criteria": "C", "score_descriptions": descriptions()}]}),
                "reference_answer",
            ),
            (
                json!({"prompt": "P", "reference_answer": "R", "rubrics": [{"criteria": "C", "score_descriptions": {"1": "a"}}]}),
                "rubrics[0]",
            ),
            (
                json!({"reference_answer": "R", "rubrics": [{"criteria": "C", "score_descriptions": descriptions()}]}),
                "prompt",
            ),
            (
                json!({"prompt": "P", "reference_answer": "R", "rubrics": []}),
                "rubrics",
            ),
        ];
        for (v, field) in cases {
            let e = parse_item(0, &v).unwrap_err();
            assert!(e.contains(field), "{v}: {e}");
        }
    }
}
