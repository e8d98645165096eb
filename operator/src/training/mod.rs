//! The JanusTrainingJob controller: a gang of trainer pods, restarted together from the
//! latest checkpoint when a worker fails.

pub mod children;
pub mod config_render;
pub mod controller;
pub mod expectations;
pub mod gang;
pub mod kueue;
pub mod status;
