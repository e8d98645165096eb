//! A line of `grades.jsonl`: one judge call's outcome, keyed by (item, rubric, run).
//! Below the judge, progress and scoring, which all read grades.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

/// One judge call: item, rubric index, run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallKey {
    pub item: usize,
    pub rubric: usize,
    pub run: usize,
}

/// A line of `grades.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Grade {
    pub item: usize,
    pub rubric: usize,
    pub run: usize,
    /// None: no readable score after the retries (a failure).
    pub score: Option<u8>,
    /// The judge's last answer.
    pub feedback: String,
    /// Calls made for it (1 + re-asks).
    pub attempts: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Grade {
    pub fn key(&self) -> CallKey {
        CallKey {
            item: self.item,
            rubric: self.rubric,
            run: self.run,
        }
    }
}

/// Grades from `grades.jsonl` records (the first per key wins).
pub fn grades_of(records: &[Value], origin: &str) -> Result<Vec<Grade>> {
    let mut seen = HashSet::new();
    let mut out = vec![];
    for (i, r) in records.iter().enumerate() {
        let g: Grade = serde_json::from_value(r.clone())
            .map_err(|e| Error::Data(format!("{origin}: record {}: {e}", i + 1)))?;
        if seen.insert(g.key()) {
            out.push(g);
        }
    }
    Ok(out)
}
