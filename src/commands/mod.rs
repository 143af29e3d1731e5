//! The subcommands' bodies.

pub mod provision;
pub mod replay;
pub mod send;
pub mod serve;
