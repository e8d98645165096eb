//! What the stage logs hold, and what the later stages and the outputs read from them:
//! one record per call key (the first wins when a kill left one twice), and the sets
//! kept after duplicates are dropped. Below `stages` and `output`, so neither imports
//! the other.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::validation::{normalise, normalise_set, Preference, Rubric};
use crate::error::{Error, Result};

/// What one call is for: an instruction's preference set, and for rubrics one of its
/// preferences.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub instruction: usize,
    pub set: usize,
    pub preference: Option<usize>,
}

impl Key {
    pub fn of_set(instruction: usize, set: usize) -> Self {
        Self {
            instruction,
            set,
            preference: None,
        }
    }
}

/// One line of a stage log: a validated output (`value`), or a failure (`error`, with
/// the last answer's text) after `attempts` tries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageRecord {
    pub instruction: usize,
    pub set: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preference: Option<usize>,
    /// The output: a preference set (list), a rubric (object), or text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    /// Answers read (re-asks included).
    pub attempts: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The last answer of a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

impl StageRecord {
    pub fn key(&self) -> Key {
        Key {
            instruction: self.instruction,
            set: self.set,
            preference: self.preference,
        }
    }
}

/// The records of a log by key, the first per key.
pub fn by_key(records: &[Value], origin: &str) -> Result<BTreeMap<Key, StageRecord>> {
    let mut out = BTreeMap::new();
    for (i, v) in records.iter().enumerate() {
        let r: StageRecord = serde_json::from_value(v.clone())
            .map_err(|e| Error::Data(format!("{origin}: record {}: {e}", i + 1)))?;
        out.entry(r.key()).or_insert(r);
    }
    Ok(out)
}

fn typed<T: serde::de::DeserializeOwned>(r: &StageRecord) -> Option<T> {
    serde_json::from_value(r.value.clone()?).ok()
}

/// Everything recorded so far, and what survives duplicate removal.
#[derive(Debug, Default, Clone)]
pub struct Collected {
    /// Preference sets kept, by (instruction, set).
    pub sets: BTreeMap<(usize, usize), Vec<Preference>>,
    pub duplicate_sets: usize,
    /// System messages kept (of kept sets).
    pub systems: BTreeMap<(usize, usize), String>,
    pub duplicate_systems: usize,
    /// Answers (to kept system messages).
    pub answers: BTreeMap<(usize, usize), String>,
    /// Rubrics by (instruction, set, preference).
    pub rubrics: BTreeMap<(usize, usize, usize), Rubric>,
}

/// Within each instruction, keep the first set (by index) of each normalised form.
fn dedupe<T: Clone>(
    items: impl Iterator<Item = ((usize, usize), T)>,
    form: impl Fn(&T) -> String,
) -> (BTreeMap<(usize, usize), T>, usize) {
    let mut seen: HashSet<(usize, String)> = HashSet::new();
    let mut kept = BTreeMap::new();
    let mut dropped = 0;
    for ((i, s), v) in items {
        if seen.insert((i, form(&v))) {
            kept.insert((i, s), v);
        } else {
            dropped += 1;
        }
    }
    (kept, dropped)
}

impl Collected {
    /// Read the four logs' records (keys in order, so "first" means lowest set index).
    pub fn from_logs(
        preferences: &BTreeMap<Key, StageRecord>,
        systems: &BTreeMap<Key, StageRecord>,
        answers: &BTreeMap<Key, StageRecord>,
        rubrics: &BTreeMap<Key, StageRecord>,
    ) -> Self {
        let (sets, duplicate_sets) = dedupe(
            preferences
                .values()
                .filter_map(|r| Some(((r.instruction, r.set), typed::<Vec<Preference>>(r)?))),
            |s| normalise_set(s),
        );
        let (systems, duplicate_systems) = dedupe(
            systems
                .values()
                .filter(|r| sets.contains_key(&(r.instruction, r.set)))
                .filter_map(|r| Some(((r.instruction, r.set), typed::<String>(r)?))),
            |s| normalise(s),
        );
        let answers = answers
            .values()
            .filter(|r| systems.contains_key(&(r.instruction, r.set)))
            .filter_map(|r| Some(((r.instruction, r.set), typed::<String>(r)?)))
            .collect();
        let rubrics = rubrics
            .values()
            .filter(|r| sets.contains_key(&(r.instruction, r.set)))
            .filter_map(|r| Some(((r.instruction, r.set, r.preference?), typed::<Rubric>(r)?)))
            .collect();
        Self {
            sets,
            duplicate_sets,
            systems,
            duplicate_systems,
            answers,
            rubrics,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: usize, s: usize, v: Value) -> (Key, StageRecord) {
        let r = StageRecord {
            instruction: i,
            set: s,
            preference: None,
            value: Some(v),
            attempts: 1,
            error: None,
            text: None,
        };
        (r.key(), r)
    }

    #[test]
    fn the_lower_set_of_a_duplicate_is_kept_per_instruction() {
        let set = |p: &str| serde_json::json!([{"dimension": "style", "subdimension": "s", "preference": p, "description": "d"}]);
        let prefs: BTreeMap<_, _> = [
            rec(0, 0, set("A")),
            rec(0, 1, set("a.")),
            rec(0, 2, set("B")),
            rec(1, 0, set("A")),
        ]
        .into_iter()
        .collect();
        let sys: BTreeMap<_, _> = [
            rec(0, 0, "You are X.".into()),
            rec(0, 1, "Dropped with its set".into()),
            rec(0, 2, "you are   x".into()),
            rec(1, 0, "You are X.".into()),
        ]
        .into_iter()
        .collect();
        let c = Collected::from_logs(&prefs, &sys, &BTreeMap::new(), &BTreeMap::new());
        assert_eq!(
            c.sets.keys().copied().collect::<Vec<_>>(),
            [(0, 0), (0, 2), (1, 0)]
        );
        assert_eq!(c.duplicate_sets, 1);
        assert_eq!(
            c.systems.keys().copied().collect::<Vec<_>>(),
            [(0, 0), (1, 0)]
        );
        assert_eq!(c.duplicate_systems, 1);
    }
}
