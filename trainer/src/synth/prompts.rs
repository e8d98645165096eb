//! The prompt templates of the stages: the shipped defaults (`prompts/synth/*.txt`,
//! embedded in the binary) or files a user names in `prompts.*`. A template is the
//! user message's text with `{name}` placeholders; a placeholder the stage does not
//! fill is an error when the file is loaded, not a literal in thousands of requests.
//! Other braces (the JSON shapes the prompts show) are text.

use regex::Regex;

use janus_crds::config::synth::SynthConfig;

use crate::error::{Error, Result};

/// Which template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Preferences,
    System,
    Answer,
    Rubric,
}

impl Kind {
    fn key(self) -> &'static str {
        match self {
            Kind::Preferences => "prompts.preferences",
            Kind::System => "prompts.system",
            Kind::Answer => "prompts.answer",
            Kind::Rubric => "prompts.rubric",
        }
    }

    /// The placeholders the stage fills.
    pub fn placeholders(self) -> &'static [&'static str] {
        match self {
            Kind::Preferences => &["instruction", "set_index", "sets"],
            Kind::System => &["instruction", "preference_set"],
            Kind::Answer => &["instruction"],
            Kind::Rubric => &[
                "instruction",
                "system",
                "dimension",
                "subdimension",
                "preference",
                "description",
            ],
        }
    }

    fn default_text(self) -> &'static str {
        match self {
            Kind::Preferences => include_str!("../../../prompts/synth/preferences.txt"),
            Kind::System => include_str!("../../../prompts/synth/system.txt"),
            Kind::Answer => include_str!("../../../prompts/synth/answer.txt"),
            Kind::Rubric => include_str!("../../../prompts/synth/rubric.txt"),
        }
    }
}

fn placeholder() -> Regex {
    Regex::new(r"\{([a-z_]+)\}").expect("valid pattern")
}

#[derive(Debug, Clone)]
pub struct Template {
    kind: Kind,
    text: String,
}

impl Template {
    /// The template `text` of `kind`, checked: every `{name}` must be one `kind` fills.
    pub fn parse(kind: Kind, text: &str, origin: &str) -> Result<Self> {
        for c in placeholder().captures_iter(text) {
            let name = &c[1];
            if !kind.placeholders().contains(&name) {
                return Err(Error::Config(format!(
                    "{} `{origin}`: unknown placeholder `{{{name}}}` (this prompt fills {})",
                    kind.key(),
                    kind.placeholders()
                        .iter()
                        .map(|p| format!("{{{p}}}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        Ok(Self {
            kind,
            text: text.trim_end().to_string(),
        })
    }

    /// The shipped default of `kind`.
    pub fn default_of(kind: Kind) -> Self {
        Self::parse(kind, kind.default_text(), "the default").expect("the defaults are valid")
    }

    /// `kind`'s template: the file `path` names, else the default.
    pub fn load(kind: Kind, path: Option<&str>) -> Result<Self> {
        match path {
            None => Ok(Self::default_of(kind)),
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| Error::Config(format!("{} `{p}`: {e}", kind.key())))?;
                Self::parse(kind, &text, p)
            }
        }
    }

    /// The text with each placeholder replaced, in one pass: a value that itself holds
    /// `{name}` (an instruction about templates) is inserted as it is.
    pub fn render(&self, vars: &[(&str, &str)]) -> String {
        debug_assert!(vars
            .iter()
            .all(|(k, _)| self.kind.placeholders().contains(k)));
        placeholder()
            .replace_all(&self.text, |c: &regex::Captures| {
                let name = &c[1];
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
                    .unwrap_or_else(|| c[0].to_string())
            })
            .into_owned()
    }
}

/// The four templates of a run.
#[derive(Debug, Clone)]
pub struct Prompts {
    pub preferences: Template,
    pub system: Template,
    pub answer: Template,
    pub rubric: Template,
}

impl Prompts {
    pub fn load(cfg: &SynthConfig) -> Result<Self> {
        let p = &cfg.prompts;
        Ok(Self {
            preferences: Template::load(Kind::Preferences, p.preferences.as_deref())?,
            system: Template::load(Kind::System, p.system.as_deref())?,
            answer: Template::load(Kind::Answer, p.answer.as_deref())?,
            rubric: Template::load(Kind::Rubric, p.rubric.as_deref())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_checked_and_filled_in_one_pass() {
        for k in [Kind::Preferences, Kind::System, Kind::Answer, Kind::Rubric] {
            let t = Template::default_of(k);
            assert!(t.text.contains("{instruction}"), "{k:?}");
        }
        let e = Template::parse(Kind::Answer, "{instruction} {system}", "x.txt")
            .unwrap_err()
            .to_string();
        assert!(e.contains("x.txt") && e.contains("{system}"), "{e}");
        let t = Template::parse(
            Kind::System,
            "A {\"k\": 1} {instruction}|{preference_set}",
            "t",
        )
        .unwrap();
        assert_eq!(
            t.render(&[
                ("instruction", "say {preference_set}"),
                ("preference_set", "P")
            ]),
            "A {\"k\": 1} say {preference_set}|P"
        );
    }
}
