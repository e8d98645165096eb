//! The JanusTrainingJob controller: a gang of trainer pods, restarted together from the
//! latest checkpoint when a worker fails. Its decision (`gang`), status (`status`),
//! children (`children`, `pod_group`) and Kueue admission (`kueue`); `controller` puts
//! them on the shared controller layer ([`crate::controller`]).

pub mod children;
pub mod config_render;
pub mod controller;
pub mod gang;
pub mod kueue;
pub mod pod_group;
pub mod status;

#[cfg(test)]
mod fixtures;
