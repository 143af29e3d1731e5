//! In-process retries for one sink call: a few capped exponential attempts with full jitter
//! (a uniform draw in `[0, delay]`, which spreads retrying workers best).
//!
//! The budget is deliberately small: long waits belong to the queue (nack → redelivery with
//! the subscription's backoff → dead-letter), so a message is never held in memory past its
//! ack deadline. A sink's own `Retry-After` is honoured when it fits the in-process cap;
//! longer ones end the in-process attempts and the message goes back to the queue.

use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable as _};
use hookline_shared::config::WorkerSettings;
use hookline_shared::sink::SinkError;
use rand::Rng as _;

/// How many times and how long to retry one sink call in-process.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub retries: usize,
    pub min: Duration,
    pub max: Duration,
}

impl From<&WorkerSettings> for RetryPolicy {
    fn from(s: &WorkerSettings) -> Self {
        Self {
            retries: s.sink_retries,
            min: Duration::from_millis(s.sink_retry_min_ms),
            max: Duration::from_millis(s.sink_retry_max_ms),
        }
    }
}

impl RetryPolicy {
    /// Runs `op`, retrying transient failures. Returns the last error when retries run out
    /// or the error is permanent.
    ///
    /// # Errors
    /// The final [`SinkError`], still classified.
    pub async fn run<T, F, Fut>(&self, sink: &'static str, op: F) -> Result<T, SinkError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, SinkError>>,
    {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.min)
            .with_max_delay(self.max)
            .with_max_times(self.retries);
        let cap = self.max;
        op.retry(backoff)
            .when(SinkError::is_transient)
            .adjust(move |err, planned| {
                let planned = planned?;
                match err {
                    SinkError::Transient {
                        retry_after: Some(after),
                        ..
                    } => (*after <= cap).then_some(*after),
                    _ => Some(full_jitter(planned)),
                }
            })
            .notify(|err, wait| {
                hookline_shared::metrics::inc("hookline_sink_retries_total", &[("sink", sink)]);
                tracing::warn!(sink, error = %err, wait_ms = wait.as_millis() as u64, "sink failed; retrying");
            })
            .await
    }
}

fn full_jitter(delay: Duration) -> Duration {
    let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rand::rng().random_range(0..=ms))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            retries: 3,
            min: Duration::from_millis(100),
            max: Duration::from_secs(2),
        }
    }

    fn transient(after: Option<Duration>) -> SinkError {
        SinkError::Transient {
            message: "busy".into(),
            retry_after: after,
            source: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_are_retried_then_returned() {
        let calls = AtomicUsize::new(0);
        let result: Result<(), _> = policy()
            .run("test", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(transient(None))
            })
            .await;
        assert!(result.unwrap_err().is_transient());
        assert_eq!(
            calls.load(Ordering::SeqCst),
            4,
            "one call plus three retries"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_are_not_retried() {
        let calls = AtomicUsize::new(0);
        let result: Result<(), _> = policy()
            .run("test", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(SinkError::permanent("no", None))
            })
            .await;
        assert!(!result.unwrap_err().is_transient());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_honoured_within_the_cap_and_hands_back_beyond_it() {
        let start = tokio::time::Instant::now();
        let calls = AtomicUsize::new(0);
        let ok = policy()
            .run("test", || async {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    Err(transient(Some(Duration::from_millis(1500))))
                } else {
                    Ok(7)
                }
            })
            .await;
        assert_eq!(ok.unwrap(), 7);
        assert_eq!(start.elapsed(), Duration::from_millis(1500));

        let calls = AtomicUsize::new(0);
        let result: Result<(), _> = policy()
            .run("test", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(transient(Some(Duration::from_secs(30))))
            })
            .await;
        assert!(result.is_err());
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "a 30 s Retry-After goes back to the queue"
        );
    }
}
