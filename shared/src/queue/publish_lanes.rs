//! Ingest's Pub/Sub publishes, batched by the load instead of by a timer.
//!
//! Every webhook request waits for its own message id. The crate batches on a timer (a
//! batch leaves 2 ms after its first message) with any number of requests in flight, so
//! under load it sends many small batches at once; yet a publish request costs far more
//! than a message in it (the Pub/Sub emulator: about 1 CPU-ms per request, 0.05 per message
//! once warm; `bench/pubsub_floor.py`).
//!
//! A *lane* is a publisher with at most one request in flight. The next batch leaves when
//! the request in flight is answered, taking every message that arrived meanwhile: under
//! light load a message leaves at once (no timer), under heavy load batches grow with it.
//! One request in flight at a time is what makes the batches large: two lanes that each
//! sent whenever free split the load into batches half the size, and on the emulator gave
//! 12-25% fewer requests/s at a higher CPU cost per request, for hookline and the emulator
//! alike (BENCHMARKS.md). The other lanes are spares: once the newest request in flight
//! has waited [`SPARE_AFTER`], the next lane sends beside it, so one slow or stuck request
//! holds the webhooks behind it up for that long, not for its whole time limit.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use google_cloud_pubsub::client::Publisher as PsPublisher;
use google_cloud_pubsub::model::Message;
use tokio::sync::{Mutex, Notify, mpsc, oneshot};
use tokio::time::Instant;

use super::QueueError;

/// The most messages one lane takes at a time; the crate splits them into requests by its
/// own thresholds (count and bytes) and sends those at once.
const MAX_TAKE: usize = 1000;

/// How long the newest request in flight holds the next batch back. Above the emulator's
/// answer time under full load (a few ms; its garbage-collection pauses run to 30-60 ms,
/// and then a spare lane helps), and about Pub/Sub's usual publish latency seen from Cloud
/// Run, so that a spare lane is the exception there too.
pub(super) const SPARE_AFTER: Duration = Duration::from_millis(20);

type Waiting = (Message, oneshot::Sender<Result<String, QueueError>>);

/// What a lane sends through: the crate's publisher (a fake in the tests).
#[async_trait]
pub(super) trait LaneSink: Send + Sync + 'static {
    /// Publishes `messages` now; their ids (or errors) in the same order.
    async fn send(&self, messages: Vec<Message>) -> Vec<Result<String, QueueError>>;
    /// Sends whatever is still buffered.
    async fn flush(&self);
}

#[async_trait]
impl LaneSink for PsPublisher {
    async fn send(&self, messages: Vec<Message>) -> Vec<Result<String, QueueError>> {
        let ids: Vec<_> = messages.into_iter().map(|m| self.publish(m)).collect();
        // Sends the batch now rather than at the timer, and returns once it was answered.
        PsPublisher::flush(self).await;
        let mut answers = Vec::with_capacity(ids.len());
        for id in ids {
            answers.push(id.await.map_err(QueueError::unavailable));
        }
        answers
    }

    async fn flush(&self) {
        PsPublisher::flush(self).await;
    }
}

/// The publishing end of the lanes; clones share them.
#[derive(Clone)]
pub(super) struct Lanes<P = PsPublisher> {
    waiting: mpsc::UnboundedSender<Waiting>,
    publishers: Arc<[P]>,
}

/// What the lanes share.
struct Shared {
    /// Messages waiting for a lane. The free lane holding the lock takes the next batch.
    waiting: Mutex<mpsc::UnboundedReceiver<Waiting>>,
    /// Per lane: when its request in flight left, in µs since `epoch` plus 1; 0 when none.
    left_at: Vec<AtomicU64>,
    epoch: Instant,
    /// Signalled whenever a lane's request is answered.
    answered: Notify,
}

impl Shared {
    /// When the newest request in flight left; `None` when none is in flight.
    fn newest_in_flight(&self) -> Option<Instant> {
        let newest = self
            .left_at
            .iter()
            .map(|t| t.load(Ordering::Acquire))
            .max()?;
        (newest > 0).then(|| self.epoch + Duration::from_micros(newest - 1))
    }

    fn mark_left(&self, lane: usize) {
        let micros = u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX - 1);
        self.left_at[lane].store(micros + 1, Ordering::Release);
    }

    /// Returns once no request is in flight, or the newest one has waited [`SPARE_AFTER`].
    async fn wait_for_turn(&self) {
        loop {
            let answered = self.answered.notified();
            tokio::pin!(answered);
            // Registered before the check, so an answer between the two is not missed.
            answered.as_mut().enable();
            let Some(newest) = self.newest_in_flight() else {
                return;
            };
            let spare_at = newest + SPARE_AFTER;
            if Instant::now() >= spare_at {
                return;
            }
            tokio::select! {
                () = answered => {}
                () = tokio::time::sleep_until(spare_at) => {}
            }
        }
    }
}

impl<P: LaneSink + Clone> Lanes<P> {
    /// One lane per publisher. The lanes run until every clone of the result is dropped.
    pub fn start(publishers: Vec<P>) -> Self {
        let (waiting, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            waiting: Mutex::new(rx),
            left_at: publishers.iter().map(|_| AtomicU64::new(0)).collect(),
            epoch: Instant::now(),
            answered: Notify::new(),
        });
        for (index, publisher) in publishers.iter().enumerate() {
            tokio::spawn(lane(publisher.clone(), index, Arc::clone(&shared)));
        }
        Self {
            waiting,
            publishers: publishers.into(),
        }
    }

    /// Publishes `msg` with the next lane and returns its message id.
    ///
    /// # Errors
    /// Pub/Sub refused or did not answer within the publisher's time limit.
    pub async fn publish(&self, msg: Message) -> Result<String, QueueError> {
        let (answer, id) = oneshot::channel();
        self.waiting.send((msg, answer)).map_err(|_| stopped())?;
        id.await.map_err(|_| stopped())?
    }

    /// Sends whatever the lanes' publishers still buffer; call before exiting.
    pub async fn flush(&self) {
        for publisher in self.publishers.iter() {
            publisher.flush().await;
        }
    }
}

fn stopped() -> QueueError {
    QueueError::unavailable(std::io::Error::other("the Pub/Sub publish lanes stopped"))
}

/// One lane: wait for a message and for its turn, take what is waiting, publish it, answer
/// each caller, repeat.
async fn lane<P: LaneSink>(publisher: P, index: usize, shared: Arc<Shared>) {
    let mut taken = Vec::new();
    loop {
        {
            // One free lane at a time waits for the next batch; the others queue here.
            let mut rx = shared.waiting.lock().await;
            let Some(first) = rx.recv().await else {
                return;
            };
            taken.push(first);
            shared.wait_for_turn().await;
            while taken.len() < MAX_TAKE {
                match rx.try_recv() {
                    Ok(next) => taken.push(next),
                    Err(_) => break,
                }
            }
            // Before the lock is released, so that the next lane waits for this request.
            shared.mark_left(index);
        }
        let (messages, answers): (Vec<_>, Vec<_>) = taken.drain(..).unzip();
        let ids = publisher.send(messages).await;
        shared.left_at[index].store(0, Ordering::Release);
        shared.answered.notify_waiters();
        // A caller left without an id (a sink answering fewer) gets "stopped": a 503.
        for (answer, id) in answers.into_iter().zip(ids) {
            // The caller may have given up (its request ended); the publish stands.
            let _ = answer.send(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// Answers each message with its data as the id. Holds its first batch until released
    /// when `hold_first`; records every batch's size.
    #[derive(Clone, Default)]
    struct Fake {
        hold_first: bool,
        release_first: Arc<Notify>,
        calls: Arc<AtomicUsize>,
        batches: Arc<std::sync::Mutex<Vec<usize>>>,
    }

    impl Fake {
        fn holding_first() -> Self {
            Self {
                hold_first: true,
                ..Self::default()
            }
        }

        fn batches(&self) -> Vec<usize> {
            self.batches.lock().unwrap().clone()
        }

        async fn wait_for_batches(&self, n: usize) {
            while self.batches.lock().unwrap().len() < n {
                tokio::task::yield_now().await;
            }
        }
    }

    #[async_trait]
    impl LaneSink for Fake {
        async fn send(&self, messages: Vec<Message>) -> Vec<Result<String, QueueError>> {
            self.batches.lock().unwrap().push(messages.len());
            if self.calls.fetch_add(1, Ordering::SeqCst) == 0 && self.hold_first {
                self.release_first.notified().await;
            }
            messages
                .iter()
                .map(|m| Ok(String::from_utf8_lossy(&m.data).into_owned()))
                .collect()
        }

        async fn flush(&self) {}
    }

    fn publish(lanes: &Lanes<Fake>, data: &str) -> tokio::task::JoinHandle<String> {
        let (lanes, msg) = (lanes.clone(), Message::new().set_data(data.to_owned()));
        tokio::spawn(async move { lanes.publish(msg).await.unwrap() })
    }

    #[tokio::test(start_paused = true)]
    async fn with_nothing_in_flight_a_message_leaves_at_once() {
        let fake = Fake::default();
        let lanes = Lanes::start(vec![fake.clone(), fake.clone()]);
        let started = Instant::now();
        for i in 0..3 {
            assert_eq!(
                publish(&lanes, &format!("m{i}")).await.unwrap(),
                format!("m{i}")
            );
        }
        assert_eq!(started.elapsed(), Duration::ZERO, "no timer, no wait");
        assert_eq!(fake.batches(), [1, 1, 1]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_next_batch_waits_for_the_answer_and_takes_all_that_arrived_meanwhile() {
        let fake = Fake::holding_first();
        let lanes = Lanes::start(vec![fake.clone(), fake.clone()]);
        let first = publish(&lanes, "m0");
        fake.wait_for_batches(1).await;
        let rest: Vec<_> = (1..=10)
            .map(|i| publish(&lanes, &format!("m{i}")))
            .collect();
        // Under SPARE_AFTER: the free lane waits for the request in flight.
        tokio::time::sleep(SPARE_AFTER / 2).await;
        assert_eq!(fake.batches(), [1]);
        fake.release_first.notify_one();
        assert_eq!(first.await.unwrap(), "m0");
        for (i, caller) in rest.into_iter().enumerate() {
            assert_eq!(
                caller.await.unwrap(),
                format!("m{}", i + 1),
                "each its own id"
            );
        }
        assert_eq!(fake.batches(), [1, 10]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_flight_too_long_gets_the_next_lane_beside_it() {
        let fake = Fake::holding_first(); // never released: a stuck request
        let lanes = Lanes::start(vec![fake.clone(), fake.clone()]);
        let stuck = publish(&lanes, "m0");
        fake.wait_for_batches(1).await;
        let started = Instant::now();
        let beside = tokio::time::timeout(SPARE_AFTER * 10, publish(&lanes, "m1")).await;
        assert_eq!(beside.expect("no spare lane").unwrap(), "m1");
        let waited = started.elapsed();
        assert!(
            waited >= SPARE_AFTER && waited < SPARE_AFTER + Duration::from_millis(5),
            "{waited:?}"
        );
        assert_eq!(fake.batches(), [1, 1]);
        assert!(!stuck.is_finished());
        // With one lane there is no spare: the next message waits for the stuck one.
        let fake = Fake::holding_first();
        let lanes = Lanes::start(vec![fake.clone()]);
        let _stuck = publish(&lanes, "m0");
        fake.wait_for_batches(1).await;
        let waiting = publish(&lanes, "m1");
        tokio::time::sleep(SPARE_AFTER * 10).await;
        assert!(!waiting.is_finished());
        fake.release_first.notify_one();
        assert_eq!(waiting.await.unwrap(), "m1");
    }
}
