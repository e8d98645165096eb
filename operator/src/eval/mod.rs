//! The JanusEvalJob controller: generation pods (the bench split by item id, one shard
//! per pod, each retried alone), then one judge pod (`janus eval judge`, then
//! `janus eval score`); status mirrors the pods' progress and the judge's scores.

pub mod children;
pub mod config_render;
pub mod controller;
pub mod gates;
pub mod stage;
pub mod status;

#[cfg(test)]
mod fixtures;
