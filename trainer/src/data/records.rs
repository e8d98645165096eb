//! Typed Multifaceted Collection records, accepting the published variants:
//! `instruction` for `prompt`, chosen/rejected as strings or `[user, assistant]`
//! message lists, null or missing `system`.

use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::reader::read_rows;
use crate::error::{Error, Result};

/// The records a dataset holds (`records` of a shard index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    Sft,
    Preference,
    Mixed,
}

/// A supervised example.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SftRecord {
    #[serde(default, deserialize_with = "null_as_empty")]
    pub system: String,
    #[serde(alias = "instruction")]
    pub prompt: String,
    pub output: String,
}

/// A preference pair: `chosen` was written for `system`, `rejected` for another
/// system message of the same instruction. The reward-model set has no `system` and
/// names the prompt `input` (system message and instruction together).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PreferenceRecord {
    #[serde(default, deserialize_with = "null_as_empty")]
    pub system: String,
    #[serde(alias = "instruction", alias = "input")]
    pub prompt: String,
    #[serde(deserialize_with = "response_text")]
    pub chosen: String,
    #[serde(deserialize_with = "response_text")]
    pub rejected: String,
    /// How much more the chosen answer is preferred (the reward loss subtracts it, as
    /// TRL's `margin` column); absent: 0.
    #[serde(default)]
    pub margin: Option<f64>,
}

/// A record type the loader can check beyond its schema.
pub trait Record: DeserializeOwned {
    fn check(&self) -> std::result::Result<(), String>;
}

impl Record for SftRecord {
    fn check(&self) -> std::result::Result<(), String> {
        nonempty(&[("prompt", &self.prompt), ("output", &self.output)])
    }
}

impl Record for PreferenceRecord {
    fn check(&self) -> std::result::Result<(), String> {
        nonempty(&[
            ("prompt", &self.prompt),
            ("chosen", &self.chosen),
            ("rejected", &self.rejected),
        ])
    }
}

fn nonempty(fields: &[(&str, &str)]) -> std::result::Result<(), String> {
    match fields.iter().find(|(_, v)| v.trim().is_empty()) {
        Some((k, _)) => Err(format!("field `{k}` is empty")),
        None => Ok(()),
    }
}

fn null_as_empty<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Response {
    Text(String),
    Messages(Vec<Message>),
}

#[derive(Deserialize)]
struct Message {
    role: String,
    content: String,
}

/// A response given as text, or as a message list whose last message must be the
/// assistant's.
fn response_text<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<String, D::Error> {
    use serde::de::Error as _;
    match Response::deserialize(d)? {
        Response::Text(s) => Ok(s),
        Response::Messages(msgs) => match msgs.last() {
            Some(m) if m.role == "assistant" => Ok(m.content.clone()),
            Some(m) => Err(D::Error::custom(format!(
                "the last message has role `{}`, expected `assistant`",
                m.role
            ))),
            None => Err(D::Error::custom("empty message list")),
        },
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LoadStats {
    pub rows: usize,
    pub skipped: usize,
}

/// Load and check every record of `paths`. A bad record is an error naming its file
/// and line (or row), unless `skip_bad` is set: then it is logged and counted.
pub fn load_records<T: Record>(paths: &[PathBuf], skip_bad: bool) -> Result<(Vec<T>, LoadStats)> {
    let mut out = Vec::new();
    let mut stats = LoadStats::default();
    for path in paths {
        for row in read_rows(path)? {
            stats.rows += 1;
            let parsed = row.value.and_then(|v: Value| {
                let r: T = serde_json::from_value(v).map_err(|e| e.to_string())?;
                r.check()?;
                Ok(r)
            });
            match parsed {
                Ok(r) => out.push(r),
                Err(e) if skip_bad => {
                    stats.skipped += 1;
                    tracing::warn!(location = %row.location, error = %e, "skipping bad record");
                }
                Err(e) => {
                    return Err(Error::Data(format!(
                        "{}: {e} (set data.skip_bad_records to skip bad records)",
                        row.location
                    )))
                }
            }
        }
    }
    if out.is_empty() {
        let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        return Err(Error::Data(format!(
            "no usable records in {}",
            names.join(", ")
        )));
    }
    Ok((out, stats))
}
