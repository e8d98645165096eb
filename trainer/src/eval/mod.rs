//! The Multifaceted Bench protocol (docs/method.md), as three resumable stages over
//! one output directory (a path or an object-store URL; layout in
//! `janus_crds::config::eval`):
//! - [`generation`]: bench items -> `answers/shard-<i>.jsonl` (one line per item);
//! - [`judge`]: one judge call per (answer, rubric, run) -> `grades.jsonl`, online or
//!   through the OpenAI Batch API ([`batch`]);
//! - [`score`]: grades -> `results.json`, `summary.json` and [`report`] (`report.md`
//!   with SVG charts).
//!
//! Each stage appends what it finishes and skips what is already there, so a killed
//! or restarted stage redoes nothing it recorded.

pub mod answers;
pub mod batch;
pub mod bench;
pub mod generation;
pub mod grades;
pub mod judge;
pub mod judging;
pub mod parse;
pub mod progress;
pub mod pyjson;
pub mod report;
pub mod results;
pub mod score;
pub mod template;

/// The output layout (defined with the config the operator renders).
pub use janus_crds::config::eval::layout::{ANSWERS_DIR, GRADES, REPORT, RESULTS, SUMMARY};
