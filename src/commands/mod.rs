//! The subcommands' bodies.

pub mod send;
pub mod serve;
