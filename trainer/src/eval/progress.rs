//! Progress of an evaluation stage: a bar on a terminal, log lines elsewhere, and in a
//! pod the `janus.dev/eval-progress` annotation the operator mirrors into the job's
//! status (at most one update per interval).

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use janus_crds::progress::{EvalReport, ScoreSummary};

use super::bench::Bench;
use super::grades::Grade;
use crate::report::{now_rfc3339, Reporter};

/// How often a log line (not a bar) is written.
const LOG_EVERY: Duration = Duration::from_secs(10);

pub struct StageProgress {
    bar: Option<ProgressBar>,
    reporter: Option<Reporter>,
    report: EvalReport,
    last_log: Option<Instant>,
    /// Log lines when there is no bar.
    log: bool,
}

impl StageProgress {
    /// Progress of `stage` (`generate`, `judge` or `score`).
    pub fn new(stage: &str, draw_bar: bool) -> Self {
        let bar = draw_bar.then(|| {
            let b = ProgressBar::new(0);
            b.set_style(
                ProgressStyle::with_template(&format!(
                    "{stage} {{spinner}} [{{elapsed_precise}}<{{eta_precise}}] {{bar:30}} {{pos}}/{{len}} {{msg}}"
                ))
                .expect("valid template"),
            );
            b
        });
        Self {
            bar,
            reporter: Reporter::for_pod(0, Duration::from_secs(5)),
            report: EvalReport {
                stage: stage.into(),
                ..Default::default()
            },
            last_log: None,
            log: true,
        }
    }

    /// Without a bar, annotation or logs (tests, library callers).
    pub fn quiet(stage: &str) -> Self {
        Self {
            bar: None,
            reporter: None,
            report: EvalReport {
                stage: stage.into(),
                ..Default::default()
            },
            last_log: None,
            log: false,
        }
    }

    pub fn report(&self) -> &EvalReport {
        &self.report
    }

    /// Generation: `done` of `total` items of this shard.
    pub fn generate(&mut self, done: usize, total: usize, tokens: u64) {
        self.report.items_done = done as u64;
        self.report.items_total = total as u64;
        self.publish(
            done as u64,
            total as u64,
            &format!("{tokens} tokens"),
            false,
        );
    }

    /// Judging: calls answered so far and items with every call answered.
    pub fn judge(&mut self, bench: &Bench, grades: &[Grade], calls_total: usize) {
        let mut answered = std::collections::HashMap::<usize, usize>::new();
        for g in grades {
            *answered.entry(g.item).or_default() += 1;
        }
        let runs = calls_total
            .checked_div(bench.items.iter().map(|i| i.rubrics.len()).sum::<usize>())
            .unwrap_or(0);
        let items_done = bench
            .items
            .iter()
            .filter(|i| answered.get(&i.id).copied().unwrap_or(0) >= i.rubrics.len() * runs)
            .count();
        let failures = grades.iter().filter(|g| g.score.is_none()).count();
        self.report.items_done = items_done as u64;
        self.report.items_total = bench.items.len() as u64;
        self.report.calls_done = grades.len() as u64;
        self.report.calls_total = calls_total as u64;
        self.report.parse_failures = failures as u64;
        self.publish(
            grades.len() as u64,
            calls_total as u64,
            &format!("calls, {failures} unparsable"),
            false,
        );
    }

    /// Scoring is done: the headline numbers.
    pub fn scored(&mut self, items: usize, calls: usize, failures: usize, s: Option<ScoreSummary>) {
        self.report.items_done = items as u64;
        self.report.items_total = items as u64;
        self.report.calls_done = calls as u64;
        self.report.calls_total = calls as u64;
        self.report.parse_failures = failures as u64;
        self.report.scores = s;
        self.publish(items as u64, items as u64, "scored", true);
    }

    fn publish(&mut self, pos: u64, len: u64, msg: &str, force: bool) {
        self.report.updated_at = now_rfc3339();
        if let Some(r) = &self.reporter {
            r.report_eval(self.report.clone());
        }
        if let Some(b) = &self.bar {
            b.set_length(len);
            b.set_position(pos);
            b.set_message(msg.to_string());
            return;
        }
        let due = self.last_log.is_none_or(|t| t.elapsed() >= LOG_EVERY);
        if self.log && (force || due || pos == len) {
            self.last_log = Some(Instant::now());
            tracing::info!(stage = %self.report.stage, done = pos, total = len, detail = msg, "eval progress");
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish();
        }
    }
}
