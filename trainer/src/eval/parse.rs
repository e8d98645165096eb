//! The judge's score.
//!
//! [`parse_score`] (`judge.parser: strict`, the default): the integer after the
//! *last* `[RESULT]`, 1 to 5. Better than the original parser (docs/method.md): feedback that mentions
//! scores ("closer to Score 3 than 5") cannot win over the final verdict,
//! `[RESULT] 10` is out of range rather than a 10, and what cannot be read is an error
//! for the caller to re-ask and finally count, never a crash and never a silent 0.
//!
//! [`parse_original`] (`judge.parser: original`): what kaistAI/Janus
//! `utils/output_parser.py` `parse_judgment_abs` reads, for comparisons with published
//! numbers, defects included.

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

/// `abs_pattern` of `utils/output_parser.py` as Python compiles it with
/// `re.IGNORECASE | re.VERBOSE`: verbose mode drops the pattern's blanks, so its
/// `score of` alternative is `scoreof`. Python's `\s` (str patterns) also takes the
/// separators U+001C..U+001F, which Rust's does not.
const ORIGINAL_PATTERN: &str = r"(?i)(?:\[RESULT\]|Score|\[SCORE\]|\[RESULT\]:|Score:|score:|Result:|\[Result\]|scoreof)[\s\x1c-\x1f]*(?:\([\s\x1c-\x1f]*|\[[\s\x1c-\x1f]*|)[\s\x1c-\x1f]*(\d+)";

fn original_regex() -> &'static regex::Regex {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| regex::Regex::new(ORIGINAL_PATTERN).expect("valid pattern"))
}

/// The value of a run of Unicode decimal digits, as Python's `int()` reads it (`\d`
/// matches every `Nd` digit: `٤` is 4). Digits come in contiguous runs of ten from 0.
fn unicode_int(digits: &str) -> Option<u64> {
    let is_digit = |c: char| original_regex_digit().is_match(c.encode_utf8(&mut [0; 4]));
    let mut n: u64 = 0;
    for c in digits.chars() {
        if let Some(d) = c.to_digit(10) {
            n = n.checked_mul(10)?.checked_add(d as u64)?;
            continue;
        }
        let mut zero = c as u32;
        while zero > 0 && char::from_u32(zero - 1).is_some_and(is_digit) {
            zero -= 1;
        }
        let d = (c as u32 - zero) % 10;
        n = n.checked_mul(10)?.checked_add(d as u64)?;
    }
    Some(n)
}

fn original_regex_digit() -> &'static regex::Regex {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| regex::Regex::new(r"^\d$").expect("valid pattern"))
}

/// What the original parser reads: the number of the *first* match of its pattern
/// anywhere in the answer (a score mentioned in the feedback wins over the verdict),
/// any size (`[RESULT] 10` is 10, `[RESULT] 0` is 0), or None where it reads nothing
/// (the original then re-asks, and a final None crashes its average). A number past
/// `u8` has no place in a grade and is None here.
pub fn parse_original(answer: &str) -> Option<u8> {
    let caps = original_regex().captures(answer)?;
    let n = unicode_int(caps.get(1)?.as_str())?;
    u8::try_from(n).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Expected values are what Python 3.11's `re` gives with the original pattern and
    /// flags (tests/eval.rs runs the same table through Python).
    #[test]
    fn original_parser_table() {
        let cases: &[(&str, Option<u8>)] = &[
            ("Feedback: good. [RESULT] 4", Some(4)),
            ("[RESULT]: 4", Some(4)),
            ("[RESULT] 4/5", Some(4)),
            ("[RESULT] 10", Some(10)),
            ("[RESULT] 0", Some(0)),
            ("It is closer to Score 3 than 5. [RESULT] 4", Some(3)),
            ("[RESULT] 2 at first, but on reflection [RESULT] 5", Some(2)),
            ("Poor performance. [RESULT] score of 1", None),
            ("Good job. [3]", None),
            ("Good job. (Score 5)", Some(5)),
            ("Good job. [Score 4]", Some(4)),
            ("Well done. [RESULT] Result: 4", Some(4)),
            ("[RESULT] four", None),
            ("Score: 4", Some(4)),
            ("", None),
            ("[result] 3", Some(3)),
            ("[RESULT] **5**", None),
            ("[RESULT] (2)", Some(2)),
            ("The score of 2 is fair", None),
            ("Scores 3", None),
            ("[RESULT] \u{664}", Some(4)),
            ("[RESULT]\u{1c}4", Some(4)),
            ("scoreof 3", Some(3)),
            ("[RESULT] 4.5", Some(4)),
            ("[Result]:\n 2", Some(2)),
            ("[SCORE] [ 3", Some(3)),
            ("Feedback [result] 2 [RESULT] 3", Some(2)),
            ("SCORE:5", Some(5)),
            ("[RESULT] 300", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_original(text), *want, "{text:?}");
        }
    }

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
