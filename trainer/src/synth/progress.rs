//! Progress of a synthesis stage: a bar on a terminal, a structured log line every few
//! seconds otherwise (pods, CI), with the counts the final summary carries.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

/// How often a log line (not a bar) is written.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// One stage's counts. When the stage is complete, `tasks = valid + invalid`, and of
/// the valid outputs `duplicates` were dropped.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StageCounts {
    pub stage: String,
    /// Calls the stage needs in all (one per key).
    pub tasks: usize,
    /// Keys recorded before this run started (resumed).
    pub already_done: usize,
    /// Keys with a valid output.
    pub valid: usize,
    /// Keys whose outputs stayed invalid after every re-ask.
    pub invalid: usize,
    /// Valid outputs dropped as duplicates of an earlier set of the same instruction.
    pub duplicates: usize,
    /// Answers this run read (re-asks included).
    pub calls_made: usize,
    /// Records written to the stage's data set (sft, bench or pairs), when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub records_out: Option<usize>,
}

pub struct SynthProgress {
    bar: Option<ProgressBar>,
    log: bool,
    last_log: Option<Instant>,
}

impl SynthProgress {
    pub fn new(draw_bar: bool) -> Self {
        Self {
            bar: draw_bar.then(ProgressBar::hidden),
            log: true,
            last_log: None,
        }
    }

    /// Neither a bar nor log lines (tests, library callers).
    pub fn quiet() -> Self {
        Self {
            bar: None,
            log: false,
            last_log: None,
        }
    }

    /// A stage starts.
    pub fn start(&mut self, c: &StageCounts) {
        if let Some(b) = &mut self.bar {
            let nb = ProgressBar::new(c.tasks as u64);
            nb.set_style(
                ProgressStyle::with_template(&format!(
                    "{} {{spinner}} [{{elapsed_precise}}<{{eta_precise}}] {{bar:30}} {{pos}}/{{len}} {{msg}}",
                    c.stage
                ))
                .expect("valid template"),
            );
            *b = nb;
        }
        self.last_log = None;
        self.update(c);
    }

    pub fn update(&mut self, c: &StageCounts) {
        let done = (c.valid + c.invalid) as u64;
        if let Some(b) = &self.bar {
            b.set_position(done);
            b.set_message(format!("{} invalid, {} calls", c.invalid, c.calls_made));
            return;
        }
        let due = self.last_log.is_none_or(|t| t.elapsed() >= LOG_EVERY);
        if self.log && (due || done == c.tasks as u64) {
            self.last_log = Some(Instant::now());
            tracing::info!(
                stage = %c.stage, done, total = c.tasks, valid = c.valid, invalid = c.invalid,
                calls = c.calls_made, "synthesis progress"
            );
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish();
        }
    }
}
