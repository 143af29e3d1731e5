//! The replay window: a signed timestamp must be within `tolerance_secs` of the time the
//! request was received, in either direction (a clock ahead is as suspect as one behind).

use chrono::{DateTime, Utc};

use super::SignatureError;

/// Parses a Unix-seconds timestamp header value and checks it against `now`.
pub(super) fn check(
    header: &str,
    value: &str,
    now: DateTime<Utc>,
    tolerance_secs: i64,
) -> Result<i64, SignatureError> {
    let ts: i64 = value
        .parse()
        .map_err(|_| SignatureError::MalformedHeader(header.to_owned()))?;
    let age_secs = now.timestamp().saturating_sub(ts);
    if age_secs > tolerance_secs {
        Err(SignatureError::StaleTimestamp {
            age_secs,
            tolerance_secs,
        })
    } else if age_secs.saturating_neg() > tolerance_secs {
        Err(SignatureError::FutureTimestamp {
            ahead_secs: age_secs.saturating_neg(),
            tolerance_secs,
        })
    } else {
        Ok(ts)
    }
}
