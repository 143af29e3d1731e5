//! The outcome of creating one resource, reported by `hookline provision`. Creation is
//! idempotent: running it again reports `Exists` (or `Replaced`, for views, which are
//! `CREATE OR REPLACE` so that a changed definition is applied).

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Provisioned {
    Created(String),
    Exists(String),
    Replaced(String),
}

impl fmt::Display for Provisioned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Created(r) => write!(f, "created  {r}"),
            Self::Exists(r) => write!(f, "exists   {r}"),
            Self::Replaced(r) => write!(f, "replaced {r}"),
        }
    }
}
