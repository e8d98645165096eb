//! What `score` computes and `report` shows: the types of `results.json`. Below both,
//! so that neither imports the other.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemResult {
    pub id: usize,
    pub source: String,
    /// Mean over runs of the mean over rubrics; None: no rubric was ever scored.
    pub score: Option<f64>,
    /// Per run (None: no rubric scored in that run).
    pub runs: Vec<Option<f64>>,
    /// `scores[run][rubric]` (None: a failure or not graded).
    pub scores: Vec<Vec<Option<u8>>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupScore {
    /// Items with a score.
    pub items: usize,
    pub mean: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadToHead {
    /// The baseline's `results.json`.
    pub baseline: String,
    /// Items both evaluations scored.
    pub items: usize,
    pub wins: usize,
    pub ties: usize,
    pub losses: usize,
    pub win: f64,
    pub tie: f64,
    pub lose: f64,
    /// `win + tie`, the paper's headline number.
    pub win_plus_tie: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Results {
    pub job: String,
    pub bench: BenchInfo,
    pub judge: JudgeInfo,
    /// Mean of the runs' scores; None when nothing was scored.
    pub mean: Option<f64>,
    /// Standard deviation of the runs' scores.
    pub std: Option<f64>,
    /// Each run's score.
    pub runs: Vec<Option<f64>>,
    pub per_source: BTreeMap<String, GroupScore>,
    pub per_dimension: BTreeMap<String, GroupScore>,
    /// Grades read, and those without a readable score.
    pub calls: usize,
    pub parse_failures: usize,
    /// Items without any score.
    pub unscored_items: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub versus_baseline: Option<HeadToHead>,
    pub items: Vec<ItemResult>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchInfo {
    pub path: String,
    pub sha256: String,
    pub items: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgeInfo {
    pub url: String,
    pub model: String,
    pub runs: usize,
}

impl Results {
    /// The headline numbers the operator mirrors (None when nothing was scored).
    pub fn summary(&self) -> Option<janus_crds::progress::ScoreSummary> {
        let h = self.versus_baseline.as_ref();
        Some(janus_crds::progress::ScoreSummary {
            mean: self.mean?,
            std: self.std.unwrap_or(0.0),
            per_dimension: self
                .per_dimension
                .iter()
                .map(|(k, g)| (k.clone(), g.mean))
                .collect(),
            win: h.map(|h| h.win),
            tie: h.map(|h| h.tie),
            lose: h.map(|h| h.lose),
        })
    }
}
