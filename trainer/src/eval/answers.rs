//! The generated answers: one JSON line per bench item in `answers/shard-<i>.jsonl`,
//! whichever shard wrote it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::bench::Bench;
use super::ANSWERS_DIR;
use crate::error::{Error, Result};
use crate::stage_log::{list_logs, JsonlLog};

/// A line of an answers shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    /// Bench item id (row index).
    pub item: usize,
    pub response: String,
    /// `stop` (EOS or a stop string) or `length`.
    pub finish_reason: String,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Samples drawn for the item (best-of-N keeps one).
    #[serde(default = "one")]
    pub samples: usize,
    /// The reward of the kept sample, when a reward model ranked them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reward: Option<f64>,
}

fn one() -> usize {
    1
}

/// Every answer of every shard, by item.
pub struct Answers {
    by_item: BTreeMap<usize, Answer>,
    /// Where they were read from (for messages).
    origin: String,
}

impl Answers {
    /// Read `answers/*.jsonl` under `output_dir` (the first answer per item wins).
    pub fn read(output_dir: &str) -> Result<Self> {
        let mut by_item = BTreeMap::new();
        for name in list_logs(output_dir, ANSWERS_DIR)? {
            let (log, records) = JsonlLog::open(output_dir, &name)?;
            for (i, r) in records.into_iter().enumerate() {
                let a: Answer = serde_json::from_value(r)
                    .map_err(|e| Error::Data(format!("{}: record {}: {e}", log.url(), i + 1)))?;
                by_item.entry(a.item).or_insert(a);
            }
        }
        Ok(Self {
            by_item,
            origin: crate::stage_log::output_url(output_dir, ANSWERS_DIR),
        })
    }

    pub fn get(&self, item: usize) -> Option<&Answer> {
        self.by_item.get(&item)
    }

    /// The response to `item` (checked present by [`Answers::check_complete`]).
    pub fn response(&self, item: usize) -> &str {
        self.by_item
            .get(&item)
            .map(|a| a.response.as_str())
            .unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.by_item.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_item.is_empty()
    }

    /// Every bench item has an answer (the judge grades all or nothing).
    pub fn check_complete(&self, bench: &Bench) -> Result<()> {
        let missing: Vec<usize> = bench
            .items
            .iter()
            .map(|i| i.id)
            .filter(|id| !self.by_item.contains_key(id))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let shown: Vec<String> = missing.iter().take(10).map(|i| i.to_string()).collect();
        Err(Error::Data(format!(
            "{}: {} of {} bench items have no answer (items {}{}); run `janus eval generate` for every shard first",
            self.origin,
            missing.len(),
            bench.items.len(),
            shown.join(", "),
            if missing.len() > 10 { ", ..." } else { "" }
        )))
    }
}
