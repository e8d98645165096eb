//! From generated token ids to text: incremental detokenisation for streaming and
//! stop strings. The whole generated sequence is decoded each time (so tokenizers that
//! mark word starts decode exactly as they would at the end); text is released only
//! when it can no longer change: not while it ends in an incomplete UTF-8 character,
//! and not while its end could be the start of a stop string.

use crate::error::Result;
use crate::tokenizer::Tokenizer;

/// The text of one sequence so far.
pub struct TextTracker {
    stops: Vec<String>,
    /// Bytes of the decoded text already handed out.
    emitted: usize,
    /// The text at the last update (up to a stop string, once one is found).
    text: String,
    stopped: bool,
}

/// What one more token changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextUpdate {
    /// Text that became final.
    pub delta: String,
    /// A stop string appeared: the sequence is finished, and the text ends before it.
    pub stopped: bool,
}

impl TextTracker {
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            emitted: 0,
            text: String::new(),
            stopped: false,
        }
    }

    /// Decode `generated` (all ids so far, without the prompt).
    pub fn update(&mut self, tok: &Tokenizer, generated: &[i64]) -> Result<TextUpdate> {
        if self.stopped {
            return Ok(TextUpdate {
                delta: String::new(),
                stopped: true,
            });
        }
        let full = tok.decode(generated)?;
        // A stop string can only begin in the part not yet handed out, or straddle it.
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        let mut from = self.emitted.saturating_sub(longest);
        while !full.is_char_boundary(from) {
            from -= 1;
        }
        let hit = self
            .stops
            .iter()
            .filter_map(|s| full[from..].find(s.as_str()).map(|i| from + i))
            .min();
        if let Some(end) = hit {
            self.text = full[..end].to_string();
            self.stopped = true;
            let delta = self
                .text
                .get(self.emitted..)
                .unwrap_or_default()
                .to_string();
            self.emitted = self.text.len();
            return Ok(TextUpdate {
                delta,
                stopped: true,
            });
        }
        let safe = self.stable_len(&full);
        let delta = if safe > self.emitted {
            full[self.emitted..safe].to_string()
        } else {
            String::new()
        };
        self.emitted = self.emitted.max(safe);
        self.text = full;
        Ok(TextUpdate {
            delta,
            stopped: false,
        })
    }

    /// Bytes of `full` that more tokens cannot change: without a trailing replacement
    /// character (a multi-byte character still being spelled) and without a suffix
    /// that begins a stop string.
    fn stable_len(&self, full: &str) -> usize {
        let end = full.trim_end_matches('\u{FFFD}').len();
        let head = &full[..end];
        let hold = self
            .stops
            .iter()
            .flat_map(|s| s.char_indices().skip(1).map(move |(i, _)| &s[..i]))
            .filter(|prefix| head.ends_with(prefix))
            .map(str::len)
            .max()
            .unwrap_or(0);
        (end - hold).max(self.emitted.min(full.len()))
    }

    /// The rest of the text at the end of the sequence (what was held back).
    pub fn finish(&mut self) -> String {
        let rest = self
            .text
            .get(self.emitted..)
            .unwrap_or_default()
            .to_string();
        self.emitted = self.text.len();
        rest
    }

    /// The whole text (up to the stop string when one was found).
    pub fn text(&self) -> &str {
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tokenizer whose tokens are single characters.
    fn chars_tokenizer(dir: &std::path::Path) -> Tokenizer {
        let texts = vec!["abc STOP xyz é".to_string(); 4];
        Tokenizer::train_bpe(texts.into_iter(), 64, &dir.join("t.json")).unwrap()
    }

    fn run(stops: &[&str], text: &str) -> (Vec<String>, String, bool) {
        let dir = tempfile::tempdir().unwrap();
        let tok = chars_tokenizer(dir.path());
        let ids = tok.encode(text).unwrap();
        let mut t = TextTracker::new(stops.iter().map(|s| s.to_string()).collect());
        let mut deltas = vec![];
        let mut stopped = false;
        for n in 1..=ids.len() {
            let u = t.update(&tok, &ids[..n]).unwrap();
            deltas.push(u.delta);
            if u.stopped {
                stopped = true;
                break;
            }
        }
        deltas.push(t.finish());
        (deltas, t.text().to_string(), stopped)
    }

    #[test]
    fn stop_string_ends_the_text_before_it_and_is_never_streamed() {
        let (deltas, text, stopped) = run(&["STOP"], "abc STOP xyz");
        assert!(stopped);
        assert_eq!(text, "abc ");
        assert_eq!(deltas.concat(), "abc ");
        assert!(deltas.iter().all(|d| !d.contains('S')), "{deltas:?}");
    }

    #[test]
    fn without_a_stop_everything_is_released() {
        let (deltas, text, stopped) = run(&["STOP"], "abc ST xyz é");
        assert!(!stopped);
        assert_eq!(text, "abc ST xyz é");
        assert_eq!(deltas.concat(), text);
    }
}
