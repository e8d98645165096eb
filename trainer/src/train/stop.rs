//! Stopping on SIGTERM (suspend, preemption, eviction, node drain) at a step boundary,
//! with a checkpoint of the last completed step when one fits in what is left of the
//! pod's grace period, so a disruption loses at most the current step.
//!
//! The ranks must agree: saving gathers the sharded optimizer state from every rank,
//! so a rank that saw the signal and one that did not would otherwise part ways at the
//! next collective. At every boundary the ranks all-reduce whether any of them was
//! signalled, with rank 0's estimate of the save and of the time already gone; every
//! rank then takes the same decision from the same numbers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::dist::{all_reduce_f64, Collective};
use crate::error::Result;

/// Write speed assumed for a checkpoint before the run has timed one: a conservative
/// figure for a local disk or an object store in the same region.
const ASSUMED_BYTES_PER_SECOND: f64 = 100e6;

/// Headroom on the estimate: a save under pressure (other pods terminating on the
/// node, a slower network) takes longer than the last one.
const SAFETY: f64 = 1.5;

/// A stop asked of the run from outside: the flag a signal handler sets, and how long
/// the process has once it is set (the pod's `terminationGracePeriodSeconds`).
#[derive(Debug, Clone)]
pub struct StopRequest {
    pub flag: Arc<AtomicBool>,
    /// Set while the run is in its step loop, where a signal waits for the next step
    /// boundary; outside it (downloads, rendezvous, publishing) the signal handler
    /// exits at once, as the default action would.
    pub armed: Arc<AtomicBool>,
    /// None: no limit known (a terminal's Ctrl-C); a checkpoint is always saved.
    pub grace: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Continue,
    /// Stop now; `save`: write the checkpoint of this step first. `why` is for the log
    /// and the error.
    Stop {
        save: bool,
        why: String,
    },
}

pub struct Stopper {
    request: StopRequest,
    /// Seconds a checkpoint takes: the last one timed, or the estimate from its bytes.
    save_seconds: f64,
    measured: bool,
    boundary: Instant,
}

/// Keeps a stop request armed while alive (the step loop), disarmed after it, on
/// every way out.
pub struct Armed(Arc<AtomicBool>);

impl Armed {
    pub fn new(request: &StopRequest) -> Self {
        request.armed.store(true, Ordering::SeqCst);
        Self(request.armed.clone())
    }
}

impl Drop for Armed {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl Stopper {
    /// `checkpoint_bytes`: the size of one checkpoint (weights and optimizer state).
    pub fn new(request: StopRequest, checkpoint_bytes: u64) -> Self {
        Self {
            request,
            save_seconds: checkpoint_bytes as f64 / ASSUMED_BYTES_PER_SECOND,
            measured: false,
            boundary: Instant::now(),
        }
    }

    /// The seconds a checkpoint is expected to take now.
    pub fn save_seconds(&self) -> f64 {
        self.save_seconds
    }

    /// Whether a checkpoint on SIGTERM is expected to fit in the grace period (true
    /// when none is known); said at start so that a too-short period is seen before
    /// the first disruption, not after it.
    pub fn fits_grace(&self) -> bool {
        self.request
            .grace
            .is_none_or(|g| SAFETY * self.save_seconds <= g.as_secs_f64())
    }

    pub fn grace(&self) -> Option<Duration> {
        self.request.grace
    }

    /// A checkpoint took `seconds`: the next estimate.
    pub fn saved(&mut self, seconds: f64) {
        self.save_seconds = if self.measured {
            self.save_seconds.max(seconds)
        } else {
            seconds
        };
        self.measured = true;
    }

    /// At a step boundary, on every rank (a collective when there are several):
    /// whether to stop, and whether to save first. `saved_here`: this step's
    /// checkpoint is already written (or being written in the background). `in_flight`:
    /// the seconds a background save has run; a save of this step would wait for the
    /// rest of it first, so that rest counts against the grace period too.
    pub fn check(
        &mut self,
        comm: &mut dyn Collective,
        rank: usize,
        saved_here: bool,
        in_flight: Option<f64>,
    ) -> Result<Decision> {
        let signalled = self.request.flag.load(Ordering::SeqCst);
        // The signal came during the step just ended at the earliest: its whole
        // length counts as gone.
        let gone = self.boundary.elapsed().as_secs_f64();
        let own = |v: f64| if rank == 0 { v } else { 0.0 };
        let rest = in_flight.map_or(0.0, |ran| (self.save_seconds - ran).max(0.0));
        let agreed = all_reduce_f64(
            comm,
            &[
                f64::from(u8::from(signalled)),
                own(self.save_seconds + rest),
                own(gone),
            ],
        )?;
        self.boundary = Instant::now();
        if agreed[0] == 0.0 {
            return Ok(Decision::Continue);
        }
        Ok(decide(
            saved_here,
            agreed[1],
            agreed[2],
            self.request.grace.map(|g| g.as_secs_f64()),
        ))
    }
}

/// The decision from the agreed numbers (the same on every rank).
fn decide(saved_here: bool, save_seconds: f64, gone: f64, grace: Option<f64>) -> Decision {
    if saved_here {
        return Decision::Stop {
            save: false,
            why: "stopped by a signal after this step's checkpoint".into(),
        };
    }
    match grace {
        Some(g) if SAFETY * save_seconds > g - gone => Decision::Stop {
            save: false,
            why: format!(
                "stopped by a signal without a checkpoint: one takes about {save_seconds:.1} s \
                 and {:.1} s of the {g:.0} s grace period are left; raise \
                 spec.workers.terminationGracePeriodSeconds to keep the steps since the last one",
                (g - gone).max(0.0)
            ),
        },
        _ => Decision::Stop {
            save: true,
            why: "stopped by a signal, after saving a checkpoint of this step".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::Single;

    #[test]
    fn a_save_that_fits_what_is_left_of_the_grace_is_made() {
        assert!(matches!(
            decide(false, 10.0, 5.0, Some(30.0)),
            Decision::Stop { save: true, .. }
        ));
        // 1.5 x 10 s does not fit in the 12 s left.
        let Decision::Stop { save, why } = decide(false, 10.0, 18.0, Some(30.0)) else {
            panic!("must stop");
        };
        assert!(!save);
        assert!(why.contains("terminationGracePeriodSeconds"), "{why}");
        // No limit known: always save; already saved: never twice.
        assert!(matches!(
            decide(false, 1e6, 0.0, None),
            Decision::Stop { save: true, .. }
        ));
        assert!(matches!(
            decide(true, 1.0, 0.0, Some(30.0)),
            Decision::Stop { save: false, .. }
        ));
    }

    #[test]
    fn the_flag_decides_and_the_estimate_follows_the_slowest_save() {
        let flag = Arc::new(AtomicBool::new(false));
        let request = StopRequest {
            flag: flag.clone(),
            armed: Arc::new(AtomicBool::new(true)),
            grace: Some(Duration::from_secs(60)),
        };
        let mut s = Stopper::new(request, 1_000_000_000);
        assert_eq!(s.save_seconds(), 10.0);
        assert!(s.fits_grace());
        s.saved(30.0);
        s.saved(20.0);
        assert_eq!(s.save_seconds(), 30.0);
        assert!(s.fits_grace());
        assert_eq!(
            s.check(&mut Single, 0, false, None).unwrap(),
            Decision::Continue
        );
        flag.store(true, Ordering::SeqCst);
        assert!(matches!(
            s.check(&mut Single, 0, false, None).unwrap(),
            Decision::Stop { save: true, .. }
        ));
        // 1.5 x 50 s no longer fits in 60 s.
        s.saved(50.0);
        assert!(!s.fits_grace());
        assert!(matches!(
            s.check(&mut Single, 0, false, None).unwrap(),
            Decision::Stop { save: false, .. }
        ));
    }
}
