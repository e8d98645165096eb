//! The judge prompt: a system message and a user message per (response, rubric) pair.
//!
//! By default both are the original's: `ABS_SYSTEM_PROMPT` and
//! `ABS_USER_PROMPT_TEMPLATE` of kaistAI/Janus `utils/prompts.py` (Apache-2.0,
//! copyright the Janus authors; quoted unchanged below), filled as its
//! `run_eval_openai.py` `prepare_inputs` fills it: the rubric as
//! `json.dumps(rubric, indent=4)` (a legacy string `rubric` as it is), the formatted
//! text `.strip()`ped. `judge.template` replaces the user message, the system message
//! or both.
//!
//! A user template's placeholders are `{name}` (`{{` and `}}` for literal braces):
//! `instruction`, `response`, `reference_answer`, `score_rubric` (the rubric as the
//! original shows it), `criteria`, `score1_description` .. `score5_description`, and
//! `system`, which a template may use only when the judge is shown the system message.
//! With `judge.show_system` and no `{system}` in the template, `{instruction}` is
//! `system + "\n" + prompt`, as the original builds it when given a system key.
//! A system template is plain text, used as it is.

use std::collections::BTreeMap;

use crate::error::{Error, Result};

use super::bench::{BenchItem, Rubric};

/// The original judge's system message (`utils/prompts.py`, `ABS_SYSTEM_PROMPT`).
pub const ABS_SYSTEM_PROMPT: &str = "You are a fair judge assistant tasked with providing clear, objective feedback based on specific criteria, ensuring each assessment reflects the absolute standards set for performance.";

/// The original judge's user message (`utils/prompts.py`, `ABS_USER_PROMPT_TEMPLATE`),
/// without the newline it starts with and the space it ends with: the original
/// `.strip()`s the formatted text, and those are the only whitespace at its ends
/// whatever the values (they sit inside the text).
pub const ABS_USER_PROMPT_TEMPLATE: &str = "###Task Description:
An instruction (might include an Input inside it), a response to evaluate, and a score rubric representing a evaluation criteria are given.
1. Write a detailed feedback that assess the quality of the response strictly based on the given score rubric, not evaluating in general.
2. After writing a feedback, write a score that is an integer between 1 and 5. You should refer to the score rubric.
3. The output format should look as follows: \"Feedback: (write a feedback for criteria) [RESULT] (an integer number between 1 and 5)\"
4. Please do not generate any other opening, closing, and explanations.

###The instruction to evaluate:
{instruction}

###Response to evaluate:
{response}

###Reference Answer (Score 5):
{reference_answer}

###Score Rubrics:
{score_rubric}

###Feedback:";

const PLACEHOLDERS: &[&str] = &[
    "instruction",
    "response",
    "reference_answer",
    "score_rubric",
    "criteria",
    "score1_description",
    "score2_description",
    "score3_description",
    "score4_description",
    "score5_description",
    "system",
];

/// The two messages of one judge call.
#[derive(Debug, Clone, PartialEq)]
pub struct JudgePrompt {
    pub system: String,
    pub user: String,
}

impl JudgePrompt {
    /// As chat `messages`.
    pub fn messages(&self) -> Vec<serde_json::Value> {
        vec![
            serde_json::json!({"role": "system", "content": self.system}),
            serde_json::json!({"role": "user", "content": self.user}),
        ]
    }
}

/// A judge prompt, its user template split into literal text and placeholders and
/// checked once.
#[derive(Debug, Clone)]
pub struct Template {
    system: String,
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
    /// The original's prompt (system and user message).
    pub fn paper(show_system: bool) -> Self {
        Self {
            system: ABS_SYSTEM_PROMPT.into(),
            parts: split(ABS_USER_PROMPT_TEMPLATE, "the built-in judge template")
                .expect("valid template"),
            show_system,
        }
    }

    /// A user template from `text` (read from `origin`), checked: known placeholders,
    /// `{response}` and a rubric (`{score_rubric}` or `{criteria}`) present, `{system}`
    /// only with `show_system`. The system message stays the original's.
    pub fn parse(text: &str, origin: &str, show_system: bool) -> Result<Self> {
        let parts = split(text, origin)?;
        let has = |n: &str| parts.iter().any(|p| *p == Part::Field(n.into()));
        if !has("response") {
            return Err(Error::Config(format!(
                "{origin}: the judge template has no `{{response}}`"
            )));
        }
        if !has("criteria") && !has("score_rubric") {
            return Err(Error::Config(format!(
                "{origin}: the judge template shows no rubric (`{{score_rubric}}` or `{{criteria}}`)"
            )));
        }
        if has("system") && !show_system {
            return Err(Error::Config(format!(
                "{origin}: the template shows `{{system}}` but `judge.show_system` is false"
            )));
        }
        Ok(Self {
            system: ABS_SYSTEM_PROMPT.into(),
            parts,
            show_system,
        })
    }

    /// The same user message with `system` as the system message.
    pub fn with_system(mut self, system: String) -> Self {
        self.system = system;
        self
    }

    /// The judge's messages for `response` to `item`, graded by `rubric`.
    pub fn render(&self, item: &BenchItem, rubric: &Rubric, response: &str) -> JudgePrompt {
        let shows_system = self.parts.contains(&Part::Field("system".into()));
        let instruction = if self.show_system && !shows_system && !item.system.is_empty() {
            format!("{}\n{}", item.system, item.prompt)
        } else {
            item.prompt.clone()
        };
        let mut values: BTreeMap<&str, &str> = BTreeMap::new();
        values.insert("instruction", &instruction);
        values.insert("response", response);
        values.insert("reference_answer", &item.reference_answer);
        values.insert("score_rubric", &rubric.shown);
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
        let mut user = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => user.push_str(t),
                Part::Field(f) => user.push_str(values.get(f.as_str()).copied().unwrap_or("")),
            }
        }
        JudgePrompt {
            system: self.system.clone(),
            user,
        }
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
        let p = Template::paper(false).render(&it, &it.rubrics[0], "THE-ANSWER");
        assert_eq!(p.system, ABS_SYSTEM_PROMPT);
        for s in [
            "THE-PROMPT",
            "THE-ANSWER",
            "REF",
            "\"criteria\": \"CRIT\"",
            "\"1\": \"one\"",
            "\"5\": \"five\"",
            "[RESULT] (an integer number between 1 and 5)",
            "(Score 5)",
        ] {
            assert!(p.user.contains(s), "{s} missing from\n{}", p.user);
        }
        assert!(!p.user.contains("SYSTEM-MSG"));
        // Shown as the original shows it with a system key: before the instruction.
        let p = Template::paper(true).render(&it, &it.rubrics[0], "THE-ANSWER");
        assert!(p.user.contains("SYSTEM-MSG\nTHE-PROMPT"), "{}", p.user);
    }

    #[test]
    fn replacement_templates_are_checked() {
        let it = item();
        let t = Template::parse("{{json}} {criteria}: {response}", "t.txt", false).unwrap();
        assert_eq!(t.render(&it, &it.rubrics[0], "A").user, "{json} CRIT: A");
        let e = Template::parse("{criteria} {respnse}", "t.txt", false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("t.txt:1") && e.contains("respnse"), "{e}");
        let e = Template::parse("{criteria}", "t.txt", false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("{response}"), "{e}");
        let e = Template::parse("{response}", "t.txt", false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("rubric"), "{e}");
        let e = Template::parse("{criteria} {response} {system}", "t.txt", false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("show_system"), "{e}");
        let t = Template::parse("{criteria} {response} {system}", "t.txt", true).unwrap();
        let p = t.with_system("S".into()).render(&it, &it.rubrics[0], "A");
        assert_eq!(
            (p.system.as_str(), p.user.as_str()),
            ("S", "CRIT A SYSTEM-MSG")
        );
    }
}
