//! kpr: reconciles Kinesis data-stream and consumer resource policies from YAML manifests.
//!
//! Data flows one way: [`manifest`] (files -> desired state) -> [`plan`] (desired vs live) ->
//! [`apply`] (writes, retries, verification) -> [`render`] (text / JSON report).
//! [`cli`] wires them for one-shot runs.

pub mod apply;
pub mod arn;
pub mod cli;
pub mod config;
pub mod controller;
pub mod import;
pub mod kinesis;
pub mod manifest;
pub mod plan;
pub mod policy;
pub mod render;
pub mod signals;
