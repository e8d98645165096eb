//! A deadline for asynchronous collectives. NCCL calls return as soon as the work is
//! enqueued; a peer that stops (a dead node, a stalled link) leaves the kernel spinning
//! and the process blocked at its next host synchronisation, forever. The watchdog
//! records an event before and after every collective on the stream it runs on, and a
//! thread of its own watches them: when the oldest collective has not finished within
//! the timeout of the previous one finishing (or of its own enqueue), or NCCL reports
//! an asynchronous error, it hands a message to `on_failure` (for a real communicator:
//! log, abort the communicator, exit with the retryable code, see `super::fail_fast`).
//!
//! The same events time the collectives on the device: the seconds between each pair
//! are added to a counter as they complete, the honest figure for
//! `janus_allreduce_seconds` (the wall time of the calls is only the time to enqueue).
//!
//! Host calls that may block on the peers (communicator init) are watched the same way,
//! by their wall time.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the watchdog needs from a device: events on the collectives' stream.
pub trait Device: Send + Sync + 'static {
    type Event: Send + 'static;
    /// A new event (timing enabled).
    fn create(&self) -> Result<Self::Event, String>;
    /// Record `e` after the work enqueued so far on the collectives' stream: the
    /// default one, or with `side` the communicator's own (caller's thread).
    fn record(&self, e: &Self::Event, side: bool) -> Result<(), String>;
    /// Whether the work before `e` has finished (watchdog thread; never blocks).
    fn done(&self, e: &Self::Event) -> Result<bool, String>;
    /// Seconds between two finished events.
    fn seconds(&self, start: &Self::Event, end: &Self::Event) -> f64;
    /// An error the communicator reported asynchronously, if any.
    fn async_error(&self) -> Option<String>;
    /// Called first on the watchdog's thread (select the device there).
    fn thread_start(&self) {}
}

struct Pending<E> {
    what: String,
    since: Instant,
    /// `None`: a host call, finished when its guard drops.
    events: Option<(E, E)>,
    id: u64,
}

struct State<E> {
    pending: VecDeque<Pending<E>>,
    /// Finished event pairs, reused.
    free: Vec<(E, E)>,
    /// When a collective last finished (or the queue last became non-empty).
    progress: Instant,
    next_id: u64,
    closed: bool,
    failed: bool,
}

struct Shared<D: Device> {
    device: D,
    state: Mutex<State<D::Event>>,
    wake: Condvar,
    timeout: Duration,
    device_nanos: Mutex<Option<Arc<AtomicU64>>>,
    on_failure: Box<dyn Fn(String) + Send + Sync>,
}

pub struct Watchdog<D: Device> {
    shared: Arc<Shared<D>>,
    thread: Option<JoinHandle<()>>,
}

/// How often the thread looks at the oldest collective while one is pending: often
/// enough that the device time of a step's last collective is counted in the step.
const POLL: Duration = Duration::from_millis(2);
/// How often it asks the communicator for asynchronous errors while idle.
const IDLE_POLL: Duration = Duration::from_millis(200);

impl<D: Device> Watchdog<D> {
    /// Watch `device`'s collectives with `timeout` of no progress; `on_failure` gets
    /// the message once (on the watchdog's thread).
    pub fn start(
        device: D,
        timeout: Duration,
        on_failure: impl Fn(String) + Send + Sync + 'static,
    ) -> Self {
        let shared = Arc::new(Shared {
            device,
            state: Mutex::new(State {
                pending: VecDeque::new(),
                free: Vec::new(),
                progress: Instant::now(),
                next_id: 0,
                closed: false,
                failed: false,
            }),
            wake: Condvar::new(),
            timeout,
            device_nanos: Mutex::new(None),
            on_failure: Box::new(on_failure),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("nccl-watchdog".into())
            .spawn(move || s.run())
            .expect("spawning the NCCL watchdog thread");
        Self {
            shared,
            thread: Some(thread),
        }
    }

    /// Add the device seconds of finished collectives to `nanos` from now on.
    pub fn time_into(&self, nanos: Arc<AtomicU64>) {
        *self.shared.device_nanos.lock().expect("watchdog lock") = Some(nanos);
    }

    /// Enqueue one collective: `enqueue` runs between the two events, recorded on the
    /// stream it enqueues on (`side`, see `Device::record`).
    pub fn collective<T>(
        &self,
        what: impl FnOnce() -> String,
        side: bool,
        enqueue: impl FnOnce() -> Result<T, String>,
    ) -> Result<T, String> {
        let s = &self.shared;
        let (start, end) = match s.state.lock().expect("watchdog lock").free.pop() {
            Some(pair) => pair,
            None => (s.device.create()?, s.device.create()?),
        };
        let out = s
            .device
            .record(&start, side)
            .and_then(|()| enqueue())
            .and_then(|out| s.device.record(&end, side).map(|()| out));
        let out = match out {
            Ok(out) => out,
            Err(e) => {
                s.state
                    .lock()
                    .expect("watchdog lock")
                    .free
                    .push((start, end));
                return Err(e);
            }
        };
        let mut st = s.state.lock().expect("watchdog lock");
        if st.pending.is_empty() {
            st.progress = Instant::now();
        }
        let id = st.next_id;
        st.next_id += 1;
        st.pending.push_back(Pending {
            what: what(),
            since: Instant::now(),
            events: Some((start, end)),
            id,
        });
        drop(st);
        s.wake.notify_all();
        Ok(out)
    }

    /// Watch a blocking host call (e.g. communicator init) by its wall time.
    pub fn host_call<T>(&self, what: &str, call: impl FnOnce() -> T) -> T {
        let s = &self.shared;
        let mut st = s.state.lock().expect("watchdog lock");
        let id = st.next_id;
        st.next_id += 1;
        st.pending.push_back(Pending {
            what: what.to_string(),
            since: Instant::now(),
            events: None,
            id,
        });
        drop(st);
        s.wake.notify_all();
        let out = call();
        let mut st = s.state.lock().expect("watchdog lock");
        st.pending.retain(|p| p.id != id);
        st.progress = Instant::now();
        out
    }

    /// Wait until every watched collective has finished, up to the timeout; whether
    /// they all did (a communicator is only destroyed with nothing in flight).
    pub fn drain(&self) -> bool {
        let s = &self.shared;
        let deadline = Instant::now() + s.timeout;
        let mut st = s.state.lock().expect("watchdog lock");
        loop {
            if st.pending.is_empty() {
                return !st.failed;
            }
            if st.failed || Instant::now() >= deadline {
                return false;
            }
            st = s.wake.wait_timeout(st, POLL).expect("watchdog lock").0;
        }
    }
}

impl<D: Device> Drop for Watchdog<D> {
    fn drop(&mut self) {
        self.shared.state.lock().expect("watchdog lock").closed = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `300s`, or `250ms` below a second (the tests' timeouts).
fn seconds(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        format!("{:.0}s", d.as_secs_f64())
    } else {
        format!("{}ms", d.as_millis())
    }
}

impl<D: Device> Shared<D> {
    fn run(&self) {
        self.device.thread_start();
        let mut last_error_check = Instant::now();
        let mut st = self.state.lock().expect("watchdog lock");
        loop {
            if st.closed || st.failed {
                return;
            }
            if last_error_check.elapsed() >= IDLE_POLL {
                last_error_check = Instant::now();
                if let Some(e) = self.device.async_error() {
                    self.fail(&mut st, format!("NCCL reported an error: {e}"));
                    continue;
                }
            }
            let Some(front) = st.pending.front() else {
                st = self.wake.wait_timeout(st, IDLE_POLL).expect("lock").0;
                continue;
            };
            let finished = match &front.events {
                None => Ok(false),
                Some((_, end)) => self.device.done(end),
            };
            match finished {
                Err(e) => {
                    let what = front.what.clone();
                    self.fail(&mut st, format!("{what} failed on the device: {e}"));
                }
                Ok(true) => {
                    let p = st.pending.pop_front().expect("front exists");
                    let (start, end) = p.events.expect("device collective");
                    let secs = self.device.seconds(&start, &end);
                    if let Some(n) = &*self.device_nanos.lock().expect("lock") {
                        n.fetch_add((secs * 1e9) as u64, Ordering::Relaxed);
                    }
                    st.free.push((start, end));
                    st.progress = Instant::now();
                    self.wake.notify_all();
                }
                Ok(false) => {
                    let since = st.progress.max(front.since);
                    if since.elapsed() >= self.timeout {
                        let msg = format!(
                            "{} made no progress for {} (distributed.timeout_seconds): \
                             a peer rank stopped or the network between the ranks stalled",
                            front.what,
                            seconds(self.timeout)
                        );
                        self.fail(&mut st, msg);
                        continue;
                    }
                    st = self.wake.wait_timeout(st, POLL).expect("lock").0;
                }
            }
        }
    }

    fn fail(&self, st: &mut std::sync::MutexGuard<'_, State<D::Event>>, msg: String) {
        st.failed = true;
        self.wake.notify_all();
        (self.on_failure)(msg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    /// Events that finish when the test says so, after a fixed device time.
    struct Fake {
        finish: Arc<AtomicBool>,
        error: Arc<Mutex<Option<String>>>,
    }

    impl Device for Fake {
        type Event = ();
        fn create(&self) -> Result<(), String> {
            Ok(())
        }
        fn record(&self, _: &(), _: bool) -> Result<(), String> {
            Ok(())
        }
        fn done(&self, _: &()) -> Result<bool, String> {
            Ok(self.finish.load(Ordering::SeqCst))
        }
        fn seconds(&self, _: &(), _: &()) -> f64 {
            0.25
        }
        fn async_error(&self) -> Option<String> {
            self.error.lock().unwrap().clone()
        }
    }

    fn fake(finish: bool) -> (Fake, Arc<AtomicBool>, Arc<Mutex<Option<String>>>) {
        let f = Arc::new(AtomicBool::new(finish));
        let e = Arc::new(Mutex::new(None));
        (
            Fake {
                finish: f.clone(),
                error: e.clone(),
            },
            f,
            e,
        )
    }

    /// Failures the watchdog reported, with when.
    type Reports = Arc<Mutex<Vec<(String, Instant)>>>;

    fn recorder() -> (Reports, impl Fn(String) + Send + Sync) {
        let got = Reports::default();
        let g = got.clone();
        (got, move |m| g.lock().unwrap().push((m, Instant::now())))
    }

    fn wait_for(got: &Mutex<Vec<(String, Instant)>>, limit: Duration) -> Option<(String, Instant)> {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Some(m) = got.lock().unwrap().first().cloned() {
                return Some(m);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }

    #[test]
    fn a_collective_that_never_finishes_fails_after_the_timeout_naming_it() {
        let (dev, _, _) = fake(false);
        let (got, on_failure) = recorder();
        let w = Watchdog::start(dev, Duration::from_millis(300), on_failure);
        let t = Instant::now();
        w.collective(
            || "rank 1: NCCL all-reduce of 4 MiB".into(),
            false,
            || Ok(()),
        )
        .unwrap();
        let (msg, at) = wait_for(&got, Duration::from_secs(5)).expect("the watchdog fired");
        let after = at - t;
        assert!(
            after >= Duration::from_millis(300) && after < Duration::from_secs(2),
            "{after:?}"
        );
        assert!(
            msg.contains("rank 1: NCCL all-reduce of 4 MiB made no progress for 300ms"),
            "{msg}"
        );
        assert!(!w.drain(), "a failed communicator is not drained");
    }

    #[test]
    fn finished_collectives_add_their_device_time_and_never_fire() {
        let (dev, _, _) = fake(true);
        let (got, on_failure) = recorder();
        let w = Watchdog::start(dev, Duration::from_millis(100), on_failure);
        let nanos = Arc::new(AtomicU64::new(0));
        w.time_into(nanos.clone());
        for _ in 0..4 {
            w.collective(|| "c".into(), true, || Ok(())).unwrap();
        }
        assert!(w.drain());
        std::thread::sleep(Duration::from_millis(300));
        assert!(got.lock().unwrap().is_empty());
        assert_eq!(nanos.load(Ordering::Relaxed), 1_000_000_000);
    }

    #[test]
    fn a_slow_host_call_fails_and_a_quick_one_does_not() {
        let (dev, _, _) = fake(true);
        let (got, on_failure) = recorder();
        let w = Watchdog::start(dev, Duration::from_millis(200), on_failure);
        w.host_call("NCCL init", || {
            std::thread::sleep(Duration::from_millis(20))
        });
        std::thread::sleep(Duration::from_millis(300));
        assert!(got.lock().unwrap().is_empty());
        w.host_call("rank 0: NCCL init", || {
            std::thread::sleep(Duration::from_millis(600))
        });
        let (msg, _) = wait_for(&got, Duration::from_secs(1)).expect("fired");
        assert!(
            msg.starts_with("rank 0: NCCL init made no progress"),
            "{msg}"
        );
    }

    #[test]
    fn an_asynchronous_error_fails_at_once() {
        let (dev, _, err) = fake(true);
        let (got, on_failure) = recorder();
        let _w = Watchdog::start(dev, Duration::from_secs(600), on_failure);
        *err.lock().unwrap() = Some("remote process exited or there was a network error".into());
        let (msg, _) = wait_for(&got, Duration::from_secs(2)).expect("fired");
        assert!(
            msg.contains("NCCL reported an error: remote process exited"),
            "{msg}"
        );
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(got.lock().unwrap().len(), 1, "reported once");
    }
}
