//! The instructions a synthesis run starts from: JSONL or Parquet records with
//! `prompt` (or `instruction`) and the optional source fields the published sets carry.

use serde::Deserialize;

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct Instruction {
    /// Row index in the input.
    pub id: usize,
    pub prompt: String,
    pub main_source: Option<String>,
    pub original_source: Option<String>,
}

#[derive(Deserialize)]
struct Row {
    #[serde(alias = "instruction")]
    prompt: String,
    #[serde(default)]
    main_source: Option<String>,
    #[serde(default, alias = "source")]
    original_source: Option<String>,
}

/// The instructions of `path` (a file or a URL), the first `limit` when set. A row
/// without a usable prompt is an error naming it.
pub fn load(path: &str, limit: Option<usize>) -> Result<Vec<Instruction>> {
    let (local, _staging) = crate::eval::bench::local_file(path, "instructions")?;
    let rows = crate::data::read_rows(&local)?;
    let mut out = Vec::new();
    for (id, row) in rows.into_iter().enumerate() {
        if limit.is_some_and(|l| out.len() >= l) {
            break;
        }
        let location = row.location.replace(&local.display().to_string(), path);
        let v = row
            .value
            .map_err(|e| Error::Data(format!("{location}: {e}")))?;
        let r: Row = serde_json::from_value(v)
            .map_err(|e| Error::Data(format!("{location}: not an instruction record ({e})")))?;
        if r.prompt.trim().is_empty() {
            return Err(Error::Data(format!("{location}: field `prompt` is empty")));
        }
        out.push(Instruction {
            id,
            prompt: r.prompt,
            main_source: r.main_source,
            original_source: r.original_source,
        });
    }
    if out.is_empty() {
        return Err(Error::Data(format!("{path}: no instructions")));
    }
    Ok(out)
}
