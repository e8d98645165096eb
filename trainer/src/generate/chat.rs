//! Conversations in the model's prompt format (docs/method.md): Mistral `[INST]` or
//! ChatML. A single system + user turn renders exactly as training formats the
//! prompt ([`PromptFormat::prompt`]), earlier assistant turns as training formats a
//! response ([`PromptFormat::response`], then EOS for Mistral), so the model sees at
//! inference the text it was trained on.

use crate::data::PromptFormat;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }
}

/// A malformed conversation: the index of the message at fault and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatError {
    pub index: usize,
    pub message: String,
}

/// The prompt text (without BOS) for `messages`: an optional system message first,
/// then user and assistant turns alternating, starting and ending with the user.
pub fn render(format: PromptFormat, messages: &[Message]) -> Result<String, ChatError> {
    let err = |index: usize, message: String| ChatError { index, message };
    if messages.is_empty() {
        return Err(err(0, "at least one user message is needed".into()));
    }
    let (system, turns) = match messages[0].role {
        Role::System => (messages[0].content.as_str(), &messages[1..]),
        _ => ("", messages),
    };
    let offset = messages.len() - turns.len();
    for (i, m) in turns.iter().enumerate() {
        let want = if i % 2 == 0 {
            Role::User
        } else {
            Role::Assistant
        };
        if m.role != want {
            let found = match m.role {
                Role::System => "a system message (only the first message may be one)".to_string(),
                r => format!("{r:?}").to_lowercase(),
            };
            return Err(err(
                i + offset,
                format!(
                    "expected a {} message, found {found}: turns alternate user/assistant, starting with user",
                    format!("{want:?}").to_lowercase()
                ),
            ));
        }
    }
    if turns.last().map(|m| m.role) != Some(Role::User) {
        return Err(err(
            messages.len() - 1,
            "the last message must be the user's".into(),
        ));
    }
    let mut text = String::new();
    for (i, pair) in turns.chunks(2).enumerate() {
        let sys = if i == 0 { system } else { "" };
        text.push_str(&format.prompt(sys, &pair[0].content));
        if let Some(answer) = pair.get(1) {
            text.push_str(&format.response(&answer.content));
            text.push_str(match format {
                PromptFormat::Mistral => "</s>",
                PromptFormat::Chatml => "\n",
            });
        }
    }
    Ok(text)
}

/// Stop strings a format implies: ChatML's end-of-turn marker is ordinary text for
/// the Mistral vocabulary, so it ends an answer as EOS does.
pub fn default_stops(format: PromptFormat) -> Vec<String> {
    match format {
        PromptFormat::Mistral => vec![],
        PromptFormat::Chatml => vec!["<|im_end|>".into()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_turn_is_the_training_prompt() {
        for f in [PromptFormat::Mistral, PromptFormat::Chatml] {
            let m = [
                Message::new(Role::System, "Be brief."),
                Message::new(Role::User, "Hi?"),
            ];
            assert_eq!(render(f, &m).unwrap(), f.prompt("Be brief.", "Hi?"));
            let m = [Message::new(Role::User, "Hi?")];
            assert_eq!(render(f, &m).unwrap(), f.prompt("", "Hi?"));
        }
    }

    #[test]
    fn turns_follow_the_format() {
        let m = [
            Message::new(Role::System, "S"),
            Message::new(Role::User, "U1"),
            Message::new(Role::Assistant, "A1"),
            Message::new(Role::User, "U2"),
        ];
        assert_eq!(
            render(PromptFormat::Mistral, &m).unwrap(),
            "[INST] S\nU1 [/INST] A1</s>[INST] U2 [/INST]"
        );
        assert_eq!(
            render(PromptFormat::Chatml, &m).unwrap(),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n\
             <|im_start|>user\nU2<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn bad_conversations_name_the_message() {
        let e = render(PromptFormat::Mistral, &[]).unwrap_err();
        assert_eq!(e.index, 0);
        let m = [
            Message::new(Role::User, "U"),
            Message::new(Role::System, "S"),
        ];
        let e = render(PromptFormat::Mistral, &m).unwrap_err();
        assert_eq!(e.index, 1);
        assert!(e.message.contains("system"), "{}", e.message);
        let m = [
            Message::new(Role::User, "U"),
            Message::new(Role::Assistant, "A"),
        ];
        assert_eq!(render(PromptFormat::Chatml, &m).unwrap_err().index, 1);
    }
}
