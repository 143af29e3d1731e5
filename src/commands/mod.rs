//! The subcommands' bodies.

pub mod provision;
pub mod send;
pub mod serve;
