//! Strict reading of the generating model's outputs. A preference set and a rubric are
//! closed JSON schemas (unknown keys refused); a preference set has exactly four
//! preferences, one per dimension; system messages and answers are non-empty text.
//! An output that fails is re-asked (`synthesis.max_invalid_retries`), then counted as
//! failed. Normalised forms decide what is a duplicate.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The four dimensions of a preference set, in the published order.
pub const DIMENSIONS: [&str; 4] = [
    "style",
    "background_knowledge",
    "informativeness",
    "harmlessness",
];

/// One preference as the published `preference_set` holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preference {
    pub dimension: String,
    pub subdimension: String,
    pub preference: String,
    pub description: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PreferenceSetDoc {
    preference_set: Vec<Preference>,
}

/// A rubric as Multifaceted Bench holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rubric {
    pub criteria: String,
    pub score_descriptions: BTreeMap<String, String>,
}

/// The JSON document of an answer: the text itself, or the inside of one Markdown code
/// fence around it (models add them even when told not to).
fn json_body(text: &str) -> &str {
    let t = text.trim();
    let Some(rest) = t.strip_prefix("```") else {
        return t;
    };
    let rest = rest.strip_suffix("```").unwrap_or(rest);
    // Drop the fence's language tag (`json`).
    match rest.find('\n') {
        Some(i) => rest[i + 1..].trim(),
        None => rest.trim(),
    }
}

fn nonempty(fields: &[(&str, &str)]) -> Result<(), String> {
    match fields.iter().find(|(_, v)| v.trim().is_empty()) {
        Some((k, _)) => Err(format!("`{k}` is empty")),
        None => Ok(()),
    }
}

/// A preference set: `{"preference_set": [4 preferences]}`, each dimension once; the
/// preferences in [`DIMENSIONS`] order.
pub fn preference_set(text: &str) -> Result<Vec<Preference>, String> {
    let doc: PreferenceSetDoc = serde_json::from_str(json_body(text))
        .map_err(|e| format!("not a preference set document: {e}"))?;
    let set = doc.preference_set;
    if set.len() != DIMENSIONS.len() {
        return Err(format!(
            "{} preferences, expected {} (one per dimension)",
            set.len(),
            DIMENSIONS.len()
        ));
    }
    let mut ordered = Vec::with_capacity(4);
    for d in DIMENSIONS {
        let mut of_d = set.iter().filter(|p| p.dimension == d);
        match (of_d.next(), of_d.next()) {
            (Some(p), None) => ordered.push(p.clone()),
            (None, _) => {
                let found: Vec<&str> = set.iter().map(|p| p.dimension.as_str()).collect();
                return Err(format!(
                    "no `{d}` preference (dimensions found: {found:?}; expected each of {DIMENSIONS:?} once)"
                ));
            }
            (Some(_), Some(_)) => return Err(format!("dimension `{d}` twice")),
        }
    }
    for p in &ordered {
        nonempty(&[
            ("subdimension", &p.subdimension),
            ("preference", &p.preference),
            ("description", &p.description),
        ])
        .map_err(|e| format!("{} preference: {e}", p.dimension))?;
    }
    Ok(ordered)
}

/// A rubric: `{"criteria", "score_descriptions": {"1".."5"}}`, every text non-empty.
pub fn rubric(text: &str) -> Result<Rubric, String> {
    let r: Rubric =
        serde_json::from_str(json_body(text)).map_err(|e| format!("not a rubric document: {e}"))?;
    let keys: Vec<&str> = r.score_descriptions.keys().map(String::as_str).collect();
    if keys != ["1", "2", "3", "4", "5"] {
        return Err(format!(
            "score_descriptions has keys {keys:?}, expected \"1\" to \"5\""
        ));
    }
    nonempty(&[("criteria", &r.criteria)])?;
    for (k, v) in &r.score_descriptions {
        nonempty(&[(k.as_str(), v.as_str())]).map_err(|e| format!("score_descriptions {e}"))?;
    }
    Ok(r)
}

/// A system message or an answer: the trimmed text, which must not be empty.
pub fn text(text: &str) -> Result<String, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("the answer is empty".into());
    }
    Ok(t.to_string())
}

/// What a stage's log records for a valid output.
pub fn to_value<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).expect("serializes")
}

/// The form two outputs are compared in: lower case, runs of whitespace as one space,
/// no trailing punctuation.
pub fn normalise(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
        .trim_end_matches(['.', '!', '?', ';', ':', ','])
        .to_string()
}

/// A preference set's normalised form (every field of every preference).
pub fn normalise_set(set: &[Preference]) -> String {
    set.iter()
        .map(|p| {
            [&p.dimension, &p.subdimension, &p.preference, &p.description]
                .map(|s| normalise(s))
                .join("\u{1f}")
        })
        .collect::<Vec<_>>()
        .join("\u{1e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_json(dims: &[&str]) -> String {
        let ps: Vec<Value> = dims
            .iter()
            .map(|d| serde_json::json!({"dimension": d, "subdimension": "s", "preference": "p", "description": "d"}))
            .collect();
        serde_json::json!({ "preference_set": ps }).to_string()
    }

    #[test]
    fn preference_sets_are_read_strictly() {
        let ok = set_json(&[
            "harmlessness",
            "style",
            "informativeness",
            "background_knowledge",
        ]);
        let s = preference_set(&ok).unwrap();
        let dims: Vec<&str> = s.iter().map(|p| p.dimension.as_str()).collect();
        assert_eq!(dims, DIMENSIONS);
        assert!(preference_set(&format!("```json\n{ok}\n```")).is_ok());
        for (bad, why) in [
            (
                set_json(&["style", "background_knowledge", "informativeness"]),
                "3 preferences",
            ),
            (
                set_json(&["style", "style", "informativeness", "harmlessness"]),
                "`style` twice",
            ),
            (
                set_json(&["style", "background", "informativeness", "harmlessness"]),
                "no `background_knowledge`",
            ),
            (ok.replace("\"s\"", "\" \""), "subdimension"),
            (
                ok.replace("{\"preference_set\"", "{\"extra\": 1, \"preference_set\""),
                "unknown field",
            ),
            (ok.replace("\"dimension\"", "\"dim\""), "unknown field"),
            ("Sure! Here it is".into(), "not a preference set"),
        ] {
            let e = preference_set(&bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn rubrics_need_scores_one_to_five() {
        let ok = r#"{"criteria": "c", "score_descriptions": {"1": "a", "2": "b", "3": "c", "4": "d", "5": "e"}}"#;
        assert_eq!(rubric(ok).unwrap().score_descriptions.len(), 5);
        assert!(rubric(&ok.replace("\"5\"", "\"6\"")).is_err());
        assert!(rubric(&ok.replace("\"e\"", "\"\"")).is_err());
        assert!(rubric(&ok.replace("\"criteria\"", "\"criterion\"")).is_err());
        assert_eq!(normalise("  You ARE   kind.\n"), "you are kind");
        assert!(text(" \n").is_err());
    }
}
