//! Proactive pacing of Slack posts: one slot per `min_interval`, first come first served.
//!
//! Slack's incoming webhooks accept about one message per second per webhook and answer
//! 429 beyond. Waiting for a 429 and its `Retry-After` would still work, but every 429 is a
//! failed attempt, and a burst of `issues` events (a bulk import) would turn into a storm of
//! them. So posts take turns: each reserves the next free slot and sleeps until it. A 429
//! that comes anyway (another worker instance posting to the same webhook) pushes every
//! later slot past its `Retry-After`. When the next slot is further away than `max_wait`,
//! the post is not queued in-process at all: the caller gets a transient error with that
//! wait as `Retry-After`, and the message goes back to the queue instead of holding a lease.
//!
//! The pacing is per worker process; with several instances the 429 path is what keeps
//! them within Slack's limit.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
pub struct Pacer {
    min_interval: Duration,
    max_wait: Duration,
    next_free: Mutex<Option<Instant>>,
}

/// No slot within `max_wait`: try again after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy(pub Duration);

impl Pacer {
    pub fn new(min_interval: Duration, max_wait: Duration) -> Self {
        Self {
            min_interval,
            max_wait,
            next_free: Mutex::new(None),
        }
    }

    /// Reserves the earliest free slot at or after `now`.
    ///
    /// # Errors
    /// [`Busy`] when that slot is more than `max_wait` away; nothing is reserved then.
    pub fn reserve(&self, now: Instant) -> Result<Instant, Busy> {
        let mut next = self.next_free.lock().expect("pacer lock poisoned");
        let slot = self.free_slot(*next, now)?;
        *next = Some(slot + self.min_interval);
        Ok(slot)
    }

    /// Whether a slot is free within `max_wait` of `now`, reserving nothing.
    ///
    /// # Errors
    /// [`Busy`], as for [`Pacer::reserve`].
    pub fn check(&self, now: Instant) -> Result<(), Busy> {
        let next = self.next_free.lock().expect("pacer lock poisoned");
        self.free_slot(*next, now).map(|_| ())
    }

    /// The earliest slot at or after `now` when the next free one is `next`, if it is
    /// within `max_wait`.
    fn free_slot(&self, next: Option<Instant>, now: Instant) -> Result<Instant, Busy> {
        let slot = next.map_or(now, |n| n.max(now));
        let wait = slot - now;
        if wait > self.max_wait {
            return Err(Busy(wait));
        }
        Ok(slot)
    }

    /// Slack answered 429: no slot before `now + retry_after`.
    pub fn back_off(&self, now: Instant, retry_after: Duration) {
        let mut next = self.next_free.lock().expect("pacer lock poisoned");
        let until = now + retry_after;
        if next.is_none_or(|n| n < until) {
            *next = Some(until);
        }
    }

    /// Waits for a slot.
    ///
    /// # Errors
    /// [`Busy`], as for [`Pacer::reserve`].
    pub async fn wait_turn(&self) -> Result<(), Busy> {
        let slot = self.reserve(Instant::now())?;
        tokio::time::sleep_until(slot).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn slots_are_spaced_by_the_interval_and_idle_time_is_not_banked() {
        let p = Pacer::new(SEC, 10 * SEC);
        let t0 = Instant::now();
        assert_eq!(p.reserve(t0), Ok(t0));
        assert_eq!(p.reserve(t0), Ok(t0 + SEC));
        assert_eq!(p.reserve(t0 + Duration::from_millis(100)), Ok(t0 + 2 * SEC));
        // After a quiet minute the next post goes at once, and only one does.
        let later = t0 + 60 * SEC;
        assert_eq!(p.reserve(later), Ok(later));
        assert_eq!(p.reserve(later), Ok(later + SEC));
    }

    #[test]
    fn check_answers_as_reserve_would_and_reserves_nothing() {
        let p = Pacer::new(SEC, 3 * SEC);
        let t0 = Instant::now();
        assert_eq!(p.check(t0), Ok(()));
        for _ in 0..4 {
            p.reserve(t0).unwrap();
        }
        // Next free slot 4 s away, beyond the 3 s wait: both refuse, with the wait.
        assert_eq!(p.check(t0), Err(Busy(4 * SEC)));
        assert_eq!(p.reserve(t0), Err(Busy(4 * SEC)));
        // A second later it fits: checking left the slot for the reservation.
        assert_eq!(p.check(t0 + SEC), Ok(()));
        assert_eq!(p.reserve(t0 + SEC), Ok(t0 + 4 * SEC));
    }

    #[test]
    fn a_backlog_beyond_max_wait_is_refused_without_reserving() {
        let p = Pacer::new(SEC, 2 * SEC);
        let t0 = Instant::now();
        for i in 0..3 {
            assert_eq!(p.reserve(t0), Ok(t0 + i * SEC));
        }
        assert_eq!(p.reserve(t0), Err(Busy(3 * SEC)));
        assert_eq!(
            p.reserve(t0),
            Err(Busy(3 * SEC)),
            "the refusal took no slot"
        );
        assert_eq!(p.reserve(t0 + SEC), Ok(t0 + 3 * SEC));
    }

    #[test]
    fn a_429_pushes_every_later_slot_past_retry_after() {
        let p = Pacer::new(SEC, 60 * SEC);
        let t0 = Instant::now();
        assert_eq!(p.reserve(t0), Ok(t0));
        p.back_off(t0, 30 * SEC);
        assert_eq!(p.reserve(t0), Ok(t0 + 30 * SEC));
        // An older, shorter Retry-After does not pull the slots back in.
        p.back_off(t0, 5 * SEC);
        assert_eq!(p.reserve(t0), Ok(t0 + 31 * SEC));
    }
}
