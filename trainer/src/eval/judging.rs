//! A judge stage under way, and what online and batch judging share: the calls still
//! to ask, their messages and seeds, how an answer becomes a grade, and the record of
//! grades. Below both modes ([`super::judge`] online, [`super::batch`]), so neither
//! imports the other.

use std::collections::{HashMap, HashSet};

use serde::Serialize;
use serde_json::Value;

use super::answers::Answers;
use super::bench::{self, Bench, BenchItem};
use super::grades::{grades_of, CallKey, Grade};
use super::parse::{parse_original, parse_score};
use super::progress::StageProgress;
use super::template::Template;
use super::GRADES;
use crate::config::EvalConfig;
use crate::error::{Error, Result};
use crate::openai::CallError;
use crate::stage_log::JsonlLog;
use janus_crds::config::eval::{JudgeParser, JudgeTemplate};

#[derive(Debug, Clone, Serialize)]
pub struct JudgeSummary {
    pub calls_total: usize,
    /// Graded before this run started (resumed).
    pub already_graded: usize,
    /// Calls made by this run (re-asks included).
    pub calls_made: usize,
    pub parse_failures: usize,
}

/// The judge's seed for a call: its run and how many times it was asked before, so
/// runs differ and a re-ask is not the same sample again.
pub fn seed(key: CallKey, attempt: usize) -> u64 {
    ((key.run as u64) << 32) | attempt as u64
}

fn read_file(path: &str, what: &str) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::Config(format!("{what} `{path}`: {e}")))
}

/// The judge prompt of `cfg`: the original's, or what `judge.template` replaces.
pub fn template(cfg: &EvalConfig) -> Result<Template> {
    let j = &cfg.judge;
    let (system, user) = match &j.template {
        None => (None, None),
        Some(JudgeTemplate::User(u)) => (None, Some(u.as_str())),
        Some(JudgeTemplate::Messages(m)) => (m.system.as_deref(), m.user.as_deref()),
    };
    let t = match user {
        None => Template::paper(j.show_system),
        Some(path) => Template::parse(
            &read_file(path, "judge.template user")?,
            path,
            j.show_system,
        )?,
    };
    Ok(match system {
        None => t,
        Some(path) => t.with_system(read_file(path, "judge.template system")?),
    })
}

/// The score `parser` reads in `text`, or why there is none.
pub fn read_score(parser: JudgeParser, text: &str) -> std::result::Result<u8, String> {
    match parser {
        JudgeParser::Strict => parse_score(text).map_err(|e| e.to_string()),
        JudgeParser::Original => parse_original(text)
            .ok_or_else(|| "the original parser reads no score in the answer".to_string()),
    }
}

/// The grade of an answer to `key` on its `attempt`-th try: the score, or None while
/// re-asks are left (`max_parse_retries`), or a failure carrying the last answer.
pub fn grade_of(
    parser: JudgeParser,
    key: CallKey,
    attempt: usize,
    max_parse_retries: usize,
    text: String,
) -> Option<Grade> {
    let (score, error) = match read_score(parser, &text) {
        Ok(s) => (Some(s), None),
        Err(_) if attempt < max_parse_retries => return None,
        Err(why) => (None, Some(why)),
    };
    Some(Grade {
        item: key.item,
        rubric: key.rubric,
        run: key.run,
        score,
        feedback: text,
        attempts: attempt + 1,
        error,
    })
}

/// The calls still to make, in run, item, rubric order.
fn pending(cfg: &EvalConfig, bench: &Bench, done: &HashSet<CallKey>) -> Vec<CallKey> {
    let mut out = vec![];
    for run in 0..cfg.judge.runs {
        for item in &bench.items {
            for rubric in 0..item.rubrics.len() {
                let k = CallKey {
                    item: item.id,
                    rubric,
                    run,
                };
                if !done.contains(&k) {
                    out.push(k);
                }
            }
        }
    }
    out
}

/// A judge stage under way: what to ask, and the grades recorded so far.
pub struct Judging {
    pub bench: Bench,
    /// Position of each item in `bench.items`, by id.
    by_id: HashMap<usize, usize>,
    answers: Answers,
    template: Template,
    pub log: JsonlLog,
    pub grades: Vec<Grade>,
    /// The calls without a grade when the stage started.
    pub todo: Vec<CallKey>,
    pub summary: JudgeSummary,
}

impl Judging {
    /// Open the stage: the bench, its answers (all of them), the grades so far.
    pub fn open(cfg: &EvalConfig) -> Result<Self> {
        let bench = bench::load(&cfg.bench.path, cfg.bench.limit)?;
        let answers = Answers::read(&cfg.output_dir)?;
        answers.check_complete(&bench)?;
        let template = template(cfg)?;
        let (log, existing) = JsonlLog::open(&cfg.output_dir, GRADES)?;
        let grades = grades_of(&existing, &log.url())?;
        let done: HashSet<CallKey> = grades.iter().map(Grade::key).collect();
        let todo = pending(cfg, &bench, &done);
        let summary = JudgeSummary {
            calls_total: todo.len() + done.len(),
            already_graded: done.len(),
            calls_made: 0,
            parse_failures: grades.iter().filter(|g| g.score.is_none()).count(),
        };
        Ok(Self {
            by_id: bench
                .items
                .iter()
                .enumerate()
                .map(|(i, it)| (it.id, i))
                .collect(),
            bench,
            answers,
            template,
            log,
            grades,
            todo,
            summary,
        })
    }

    /// The judge's messages for `key`.
    pub fn messages(&self, key: CallKey) -> Vec<Value> {
        let item: &BenchItem = &self.bench.items[self.by_id[&key.item]];
        self.template
            .render(
                item,
                &item.rubrics[key.rubric],
                self.answers.response(key.item),
            )
            .messages()
    }

    /// Record `g` (durable when this returns) and report progress.
    pub fn record(&mut self, g: Grade, progress: &mut StageProgress) -> Result<()> {
        if g.score.is_none() {
            self.summary.parse_failures += 1;
            tracing::warn!(
                item = g.item,
                rubric = g.rubric,
                run = g.run,
                error = g.error.as_deref().unwrap_or_default(),
                "no readable score; counted as a failure"
            );
        }
        self.log
            .append(&[serde_json::to_value(&g).expect("grade serializes")])?;
        self.grades.push(g);
        progress.judge(&self.bench, &self.grades, self.summary.calls_total);
        Ok(())
    }

    /// Every call graded: fold the log (object stores) and return the summary.
    pub fn finish(mut self) -> Result<JudgeSummary> {
        let all: Vec<Value> = self
            .grades
            .iter()
            .map(|g| serde_json::to_value(g).expect("grade"))
            .collect();
        self.log.compact(&all)?;
        Ok(self.summary)
    }
}

/// The error a stage ends with after a call gave up or was refused.
pub fn call_error(e: CallError, graded: usize, total: usize) -> Error {
    match e {
        CallError::Refused(m) => Error::Config(format!(
            "the judge refused the requests (check judge.url, judge.model and the API key): {m}"
        )),
        CallError::GaveUp(m) => Error::io(
            format!("judging: {graded} of {total} calls graded"),
            std::io::Error::other(m),
        ),
    }
}
