//! The Janus operator: the JanusTrainingJob controller (gang restarts, status, events),
//! its HTTP endpoints, metrics and leader election.

pub mod children;
pub mod config_render;
pub mod controller;
pub mod error;
pub mod gang;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod status;
pub mod telemetry;
