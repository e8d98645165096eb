//! `janus data synthesize`: the Multifaceted Collection's pipeline (docs/data.md,
//! "Synthesizing data") through any OpenAI-compatible endpoint, as resumable stages
//! over one output directory (a path or an object-store URL; layout in
//! `janus_crds::config::synth::layout`):
//! - `preferences`: per instruction, N preference sets (one preference per dimension);
//! - `system`: a system message per kept set;
//! - `answers`: a gold answer per kept system message -> `sft.jsonl` and `sft/`;
//! - `rubrics`: a rubric per preference -> `bench.jsonl` (Multifaceted Bench schema);
//! - `pairs`: chosen = an answer to its own system message, rejected = answers to the
//!   same instruction's other system messages -> `pairs.jsonl` and `pairs/`.
//!
//! Each call's outcome (a validated output, or a failure after its re-asks) is appended
//! to its stage's log as it arrives ([`crate::stage_log`], the same logs `janus eval`
//! keeps), so a killed run asks again only what has no record.

pub mod batch;
pub mod calls;
pub mod config;
pub mod input;
pub mod output;
pub mod progress;
pub mod prompts;
pub mod records;
pub mod stages;
pub mod validation;
