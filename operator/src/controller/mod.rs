//! The controller layer under every kind (`training/`, `eval/`, and the kinds to come):
//! a kind implements [`Kind`] (its decision, its children, its status shape) and gets
//! the rest from here, so a fix here is a fix for every kind.
//!
//! | module | what it holds |
//! |---|---|
//! | [`run`] | the run loop: watches, `reconcile` / `error_policy`, per-job backoff, the order of reads and writes |
//! | [`decision`] | the decision every kind makes: its own step, or the lifecycle's ends |
//! | [`context`] | [`Kind`] (a kind's types and hooks, its [`Policy`], the [`Plan`] of a look at a job) and the [`Context`] its hooks get: client, recorder, metrics, health, pod and node caches, backoff, expectations, the kind's own caches |
//! | [`apply`] | server-side apply of children and status under one field manager; the TTL delete with a UID precondition |
//! | [`expectations`] | pods created and status written that the caches may not show yet |
//! | [`conditions`] | [`JobStatus`], conditions and their Events written together ([`conditions::Transitions`]) |
//! | [`children`] | child metadata with owner references, and the pod spec pieces every kind shares |
//! | [`lifecycle`] | finished / TTL, clean-up, suspend and resume, deadline, foreign pods |
//! | [`pods`], [`nodes`] | what decisions know of a pod and its node |
//! | [`stuck`] | refused creates, pods that cannot be scheduled or started, scheduling timeouts, unreachable nodes |

pub mod apply;
pub mod children;
pub mod conditions;
pub mod context;
pub mod decision;
pub mod expectations;
pub mod lifecycle;
pub mod nodes;
pub mod pods;
pub mod run;
pub mod stuck;

#[cfg(test)]
pub mod fixtures;
#[cfg(test)]
pub mod testing;

pub use conditions::JobStatus;
pub use context::{Context, Settings};
pub use context::{Kind, Plan, Policy};
pub use decision::{Decision, Step};
