//! kpr: reconciles Kinesis data-stream and consumer resource policies from YAML manifests.
//!
//! Data flows one way: [`manifest`] (files -> desired state) -> [`plan`] (desired vs live) ->
//! [`apply`] (writes, retries, verification) -> [`render`] (text / JSON report).
//! [`cli`] wires them for one-shot runs.

/// `eprintln!` that never panics. With stderr a closed pipe (`kpr apply 2>&1 | head`),
/// `eprintln!` panics, and one in the middle of an apply (the note on a stop signal) killed the
/// task that answers signals and crashed the report; a message that cannot be written is lost
/// instead.
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

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
