//! End-to-end tests of the embedded pipeline: real HTTP, real queue file, real sinks, a
//! fake Slack (wiremock). One binary, one module per area.

mod analytics;
mod contract;
mod pipeline;
mod processes;
mod replay;
mod replay_archive;
mod support;
