//! Prompt formats (docs/method.md). A rendered example is the prompt text, which is
//! masked from the loss, and the response text; the tokenizer adds BOS before the
//! prompt and EOS after the response.

use serde::{Deserialize, Serialize};

/// How records become token sequences.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "k8s", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum PromptFormat {
    /// `<s>[INST] {system}\n{prompt} [/INST] {output}</s>` (SFT and inference).
    Mistral,
    /// ChatML markers as ordinary text (the released ORPO and DPO runs).
    Chatml,
}

impl PromptFormat {
    /// The part of the sequence the model conditions on.
    pub fn prompt(self, system: &str, prompt: &str) -> String {
        match self {
            PromptFormat::Mistral if system.is_empty() => format!("[INST] {prompt} [/INST]"),
            PromptFormat::Mistral => format!("[INST] {system}\n{prompt} [/INST]"),
            PromptFormat::Chatml => {
                let sys = if system.is_empty() {
                    String::new()
                } else {
                    format!("<|im_start|>system\n{system}<|im_end|>\n")
                };
                format!("{sys}<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n")
            }
        }
    }

    /// The part the loss is computed on (EOS follows it).
    pub fn response(self, response: &str) -> String {
        match self {
            // The space after `[/INST]` belongs to the response so that tokenizers
            // that merge a leading space into the word see the same text as in the
            // joint string.
            PromptFormat::Mistral => format!(" {response}"),
            PromptFormat::Chatml => format!("{response}<|im_end|>"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mistral_format_matches_the_recipe() {
        let f = PromptFormat::Mistral;
        assert_eq!(
            format!(
                "<s>{}{}</s>",
                f.prompt("Be brief.", "Hi?"),
                f.response("Hello.")
            ),
            "<s>[INST] Be brief.\nHi? [/INST] Hello.</s>"
        );
    }

    #[test]
    fn chatml_format_matches_the_recipe() {
        let f = PromptFormat::Chatml;
        assert_eq!(
            format!("{}{}", f.prompt("S", "P"), f.response("R")),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nP<|im_end|>\n<|im_start|>assistant\nR<|im_end|>"
        );
    }
}
