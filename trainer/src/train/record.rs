//! What a run is asked beyond its config (`RunOptions`), what this process has done
//! so far (`RunRecord`), and what it reports at the end (`Summary`, also written as
//! `summary.json` beside the final model).

use serde::Serialize;

use super::feed::{Counts, SourceCounts};
use super::stop::StopRequest;
use crate::checkpoint::TrainerState;
use crate::config::{Method, TrainConfig};
use crate::data::TokenizeStats;
use crate::dist::WorldInfo;

/// Options of a run that are not part of the job's config.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Stop (as if interrupted) right after the checkpoint of this step is saved.
    pub stop_after_steps: Option<u64>,
    /// Draw a progress bar (a terminal); otherwise log lines.
    pub progress_bar: bool,
    /// This process's place in a data-parallel job (None: a job of one).
    pub world: Option<WorldInfo>,
    /// Stop at the next step boundary once set (SIGTERM), with a checkpoint when one
    /// fits in the grace period.
    pub stop: Option<StopRequest>,
    /// The operator's gang attempt (`JANUS_ATTEMPT`): checkpoints are fenced by it
    /// (None: a run outside the operator, unfenced).
    pub attempt: Option<u64>,
}

/// What a run did, printed at the end and written as `summary.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub job: String,
    pub method: Method,
    pub resumed_from_step: Option<u64>,
    pub steps_completed: u64,
    pub total_steps: u64,
    pub first_loss: Option<f64>,
    pub last_loss: Option<f64>,
    pub tokens_per_second: f64,
    pub records: usize,
    pub skipped_records: usize,
    pub tokenize: TokenizeStats,
    /// Per source of a weighted mixture: records, units and units drawn by this rank.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<SourceCounts>,
    pub last_checkpoint: Option<String>,
    /// The final HF model directory (None when the run stopped early).
    pub output_dir: Option<String>,
    pub finished: bool,
}

/// What this process has done so far, beyond the checkpointed trainer state.
#[derive(Default)]
pub struct RunRecord {
    pub resumed_from: Option<u64>,
    pub last_checkpoint: Option<String>,
    /// Tokens processed by all ranks in this run (not before a resume).
    pub tokens: i64,
    /// Seconds spent in training steps (not data preparation or checkpoints).
    pub compute_secs: f64,
}

impl RunRecord {
    pub fn tokens_per_second(&self) -> f64 {
        self.tokens as f64 / self.compute_secs.max(1e-9)
    }
}

impl Summary {
    pub fn of(
        cfg: &TrainConfig,
        c: &Counts,
        state: &TrainerState,
        run: &RunRecord,
        output_dir: Option<String>,
        finished: bool,
    ) -> Self {
        Summary {
            job: cfg.job.clone(),
            method: cfg.method,
            resumed_from_step: run.resumed_from,
            steps_completed: state.step,
            total_steps: state.total_steps,
            first_loss: state.losses.first().copied(),
            last_loss: state.losses.last().copied(),
            tokens_per_second: run.tokens_per_second(),
            records: c.records,
            skipped_records: c.skipped,
            tokenize: c.stats.clone(),
            sources: c.sources.clone(),
            last_checkpoint: run.last_checkpoint.clone(),
            finished,
            output_dir,
        }
    }
}
