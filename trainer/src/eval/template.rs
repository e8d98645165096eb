//! The judge prompt: one (response, rubric) pair per call, in our own wording, or a
//! replacement template from a file. Placeholders are `{name}` (`{{` and `}}` for
//! literal braces): `instruction`, `response`, `reference_answer`, `criteria`,
//! `score1_description` .. `score5_description`, and `system`, which a template may
//! use only when the judge is shown the system message.

use std::collections::BTreeMap;

use crate::error::{Error, Result};

use super::bench::{BenchItem, Rubric};

/// The judge's own system message.
pub const JUDGE_SYSTEM: &str =
    "You are a careful and impartial grader. You read a request, an answer to it, \
a model answer and one grading criterion, and you grade the answer by that criterion alone.";

/// The built-in template (the system message of the item is added through
/// `{system_section}` only when `judge.show_system` is set).
const BUILT_IN: &str = "You are grading one answer to a user's request.

You are given the request, the answer to grade, a model answer that would be graded 5, \
and one grading criterion with a description of every grade from 1 (worst) to 5 (best).

How to grade: compare the answer with the criterion's descriptions and with the model \
answer. Write a short justification that refers to this criterion only; other qualities \
of the answer do not count. Then give the grade on a line of its own, written exactly as \
`[RESULT] N`, where N is a whole number from 1 to 5, and write nothing after it.
{system_section}
## Request
{instruction}

## Answer to grade
{response}

## Model answer (grade 5)
{reference_answer}

## Criterion
{criteria}
Grade 1: {score1_description}
Grade 2: {score2_description}
Grade 3: {score3_description}
Grade 4: {score4_description}
Grade 5: {score5_description}

## Justification and grade
";

const SYSTEM_SECTION: &str = "
## What the user asked for in the system message
{system}
";

const PLACEHOLDERS: &[&str] = &[
    "instruction",
    "response",
    "reference_answer",
    "criteria",
    "score1_description",
    "score2_description",
    "score3_description",
    "score4_description",
    "score5_description",
    "system",
];

/// A template split into literal text and placeholders, checked once.
#[derive(Debug, Clone)]
pub struct Template {
    parts: Vec<Part>,
    show_system: bool,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Field(String),
}

fn split(text: &str, origin: &str) -> Result<Vec<Part>> {
    let mut parts = vec![];
    let mut lit = String::new();
    let mut chars = text.char_indices().peekable();
    let line_of = |at: usize| text[..at].matches('\n').count() + 1;
    while let Some((i, c)) = chars.next() {
        match c {
            '{' if chars.peek().map(|p| p.1) == Some('{') => {
                chars.next();
                lit.push('{');
            }
            '}' if chars.peek().map(|p| p.1) == Some('}') => {
                chars.next();
                lit.push('}');
            }
            '{' => {
                let rest = &text[i + 1..];
                let end = rest.find('}').ok_or_else(|| {
                    Error::Config(format!(
                        "{origin}:{}: `{{` without a closing `}}` (write `{{{{` for a brace)",
                        line_of(i)
                    ))
                })?;
                let name = &rest[..end];
                if !PLACEHOLDERS.contains(&name) {
                    return Err(Error::Config(format!(
                        "{origin}:{}: unknown placeholder `{{{name}}}` (known: {})",
                        line_of(i),
                        PLACEHOLDERS.join(", ")
                    )));
                }
                if !lit.is_empty() {
                    parts.push(Part::Text(std::mem::take(&mut lit)));
                }
                parts.push(Part::Field(name.to_string()));
                for _ in 0..end + 1 {
                    chars.next();
                }
            }
            '}' => {
                return Err(Error::Config(format!(
                    "{origin}:{}: `}}` without an opening `{{` (write `}}}}` for a brace)",
                    line_of(i)
                )))
            }
            c => lit.push(c),
        }
    }
    if !lit.is_empty() {
        parts.push(Part::Text(lit));
    }
    Ok(parts)
}

impl Template {
    /// The built-in template.
    pub fn built_in(show_system: bool) -> Self {
        let text = BUILT_IN.replace(
            "{system_section}",
            if show_system { SYSTEM_SECTION } else { "" },
        );
        Self {
            parts: split(&text, "the built-in judge template").expect("valid template"),
            show_system,
        }
    }

    /// A template from `text` (read from `origin`), checked: known placeholders,
    /// `{response}` and `{criteria}` present, `{system}` only with `show_system`.
    pub fn parse(text: &str, origin: &str, show_system: bool) -> Result<Self> {
        let parts = split(text, origin)?;
        let has = |n: &str| parts.iter().any(|p| *p == Part::Field(n.into()));
        for required in ["response", "criteria"] {
            if !has(required) {
                return Err(Error::Config(format!(
                    "{origin}: the judge template has no `{{{required}}}`"
                )));
            }
        }
        if has("system") && !show_system {
            return Err(Error::Config(format!(
                "{origin}: the template shows `{{system}}` but `judge.show_system` is false"
            )));
        }
        Ok(Self { parts, show_system })
    }

    /// The judge prompt for `response` to `item`, graded by `rubric`.
    pub fn render(&self, item: &BenchItem, rubric: &Rubric, response: &str) -> String {
        let mut values: BTreeMap<&str, &str> = BTreeMap::new();
        values.insert("instruction", &item.prompt);
        values.insert("response", response);
        values.insert("reference_answer", &item.reference_answer);
        values.insert("criteria", &rubric.criteria);
        let keys = [
            "score1_description",
            "score2_description",
            "score3_description",
            "score4_description",
            "score5_description",
        ];
        for (k, d) in keys.iter().zip(&rubric.scores) {
            values.insert(k, d);
        }
        if self.show_system {
            values.insert("system", &item.system);
        }
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Field(f) => out.push_str(values.get(f.as_str()).copied().unwrap_or("")),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::bench::parse_item;

    fn item() -> BenchItem {
        let v = serde_json::json!({
            "source": "s", "system": "SYSTEM-MSG", "prompt": "THE-PROMPT", "reference_answer": "REF",
            "rubrics": [{"criteria": "CRIT", "score_descriptions": {"1": "one", "2": "two", "3": "three", "4": "four", "5": "five"}}],
        });
        parse_item(0, &v).unwrap()
    }

    #[test]
    fn built_in_shows_everything_but_the_system_message_unless_asked() {
        let it = item();
        let p = Template::built_in(false).render(&it, &it.rubrics[0], "THE-ANSWER");
        for s in [
            "THE-PROMPT",
            "THE-ANSWER",
            "REF",
            "CRIT",
            "Grade 1: one",
            "Grade 5: five",
            "[RESULT] N",
            "(grade 5)",
        ] {
            assert!(p.contains(s), "{s} missing from\n{p}");
        }
        assert!(!p.contains("SYSTEM-MSG"));
        let p = Template::built_in(true).render(&it, &it.rubrics[0], "THE-ANSWER");
        assert!(p.contains("SYSTEM-MSG"));
    }

    #[test]
    fn replacement_templates_are_checked() {
        let it = item();
        let t = Template::parse("{{json}} {criteria}: {response}", "t.txt", false).unwrap();
        assert_eq!(t.render(&it, &it.rubrics[0], "A"), "{json} CRIT: A");
        let e = Template::parse("{criteria} {respnse}", "t.txt", false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("t.txt:1") && e.contains("respnse"), "{e}");
        let e = Template::parse("{criteria}", "t.txt", false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("{response}"), "{e}");
        let e = Template::parse("{criteria} {response} {system}", "t.txt", false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("show_system"), "{e}");
        assert!(Template::parse("{criteria} {response} {system}", "t.txt", true).is_ok());
    }
}
