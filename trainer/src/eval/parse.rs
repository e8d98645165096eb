//! The judge's score: the integer after the *last* `[RESULT]`, 1 to 5.
//!
//! Better than the original parser (docs/method.md): feedback that mentions scores
//! ("closer to Score 3 than 5") cannot win over the final verdict, `[RESULT] 10` is
//! out of range rather than a 10, and what cannot be read is an error for the caller
//! to re-ask and finally count, never a crash and never a silent 0.

/// Why a judge answer has no score.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// No `[RESULT]` marker at all.
    NoResult,
    /// `[RESULT]` followed by something that is not a whole number.
    NotANumber(String),
    /// A whole number outside 1..5 (or on another scale, `8/10`).
    OutOfRange(String),
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParseError::NoResult => write!(f, "no `[RESULT]` in the answer"),
            ParseError::NotANumber(s) => {
                write!(f, "`[RESULT]` is followed by `{s}`, not a whole number 1-5")
            }
            ParseError::OutOfRange(s) => write!(f, "`[RESULT] {s}` is outside 1-5"),
        }
    }
}

const MARKER: &str = "[result]";

/// The score of a judge's answer.
pub fn parse_score(answer: &str) -> Result<u8, ParseError> {
    let lower = answer.to_ascii_lowercase();
    let at = lower.rfind(MARKER).ok_or(ParseError::NoResult)?;
    let rest = &answer[at + MARKER.len()..];
    // Separators people (and models) put between the marker and the number:
    // `[RESULT] 4`, `[RESULT]: 4`, `[RESULT] = 4`, `[RESULT] **4**`, `[RESULT] (4)`,
    // `[RESULT] Score: 4`.
    let mut s = rest.trim_start_matches(|c: char| c.is_whitespace() || ":=-*([#".contains(c));
    if s.get(..5).is_some_and(|w| w.eq_ignore_ascii_case("score")) {
        s = s[5..].trim_start_matches(|c: char| c.is_whitespace() || ":=-*([#".contains(c));
    }
    let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
    let snippet = || rest.trim().chars().take(20).collect::<String>();
    if digits.is_empty() {
        return Err(ParseError::NotANumber(snippet()));
    }
    let after = &s[digits.len()..];
    // `4.5` is not a whole number; `4.` ending a sentence is.
    if let Some(frac) = after.strip_prefix('.') {
        if frac.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(ParseError::NotANumber(snippet()));
        }
    }
    // `4/5` and `4 out of 5` name the scale; another scale is not ours.
    let scale = after.trim_start();
    let denominator = scale
        .strip_prefix('/')
        .or_else(|| scale.strip_prefix("out of"))
        .map(|d| {
            d.trim_start()
                .chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        });
    if let Some(d) = denominator.filter(|d| !d.is_empty() && d != "5") {
        return Err(ParseError::OutOfRange(format!("{digits}/{d}")));
    }
    match digits.parse::<u64>() {
        Ok(n @ 1..=5) => Ok(n as u8),
        _ => Err(ParseError::OutOfRange(digits)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parser_table() {
        use ParseError::*;
        let cases: &[(&str, Result<u8, ParseError>)] = &[
            ("Feedback: good. [RESULT] 4", Ok(4)),
            ("[RESULT]: 4", Ok(4)),
            ("[RESULT]:4", Ok(4)),
            ("[RESULT] 4/5", Ok(4)),
            ("[RESULT] 4 / 5", Ok(4)),
            ("[RESULT] 4 out of 5", Ok(4)),
            ("[RESULT] 4\nThanks for reading.", Ok(4)),
            ("[RESULT] 4. The end.", Ok(4)),
            ("[RESULT] **5**", Ok(5)),
            ("[RESULT] (2)", Ok(2)),
            ("[result] 3", Ok(3)),
            ("[RESULT] Score: 1", Ok(1)),
            // The last marker wins over scores mentioned earlier.
            ("It is closer to Score 3 than 5. [RESULT] 4", Ok(4)),
            (
                "[RESULT] 2 was my first thought, but on reflection [RESULT] 5",
                Ok(5),
            ),
            // Out of range, other scales, and nothing readable.
            ("[RESULT] 10", Err(OutOfRange("10".into()))),
            ("[RESULT] 0", Err(OutOfRange("0".into()))),
            ("[RESULT] 6", Err(OutOfRange("6".into()))),
            ("[RESULT] 8/10", Err(OutOfRange("8/10".into()))),
            ("[RESULT] 4.5", Err(NotANumber("4.5".into()))),
            ("[RESULT] four", Err(NotANumber("four".into()))),
            ("[RESULT]", Err(NotANumber("".into()))),
            ("Score: 4", Err(NoResult)),
            ("", Err(NoResult)),
            ("[RESULT] é", Err(NotANumber("é".into()))),
        ];
        for (text, want) in cases {
            assert_eq!(&parse_score(text), want, "{text:?}");
        }
    }
}
