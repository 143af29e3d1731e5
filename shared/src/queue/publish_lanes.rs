//! Ingest's Pub/Sub publishes, batched by the load instead of by a timer.
//!
//! Every webhook request waits for its own message id. The crate batches on a timer (a
//! batch leaves 2 ms after its first message) with any number of requests in flight, so
//! under load it sends many small batches at once; yet a publish request costs far more
//! than a message in it (the Pub/Sub emulator: about 1 CPU-ms per request, 0.05 per message
//! once warm; `bench/pubsub_floor.py`). A *lane* is a publisher with at most one request in
//! flight: a free lane takes every message waiting, sends them at once, and answers each
//! with its id; what arrives meanwhile waits for the next free lane. Under light load a
//! message leaves at once (no timer); under heavy load batches grow with it. More than one
//! lane keeps one slow request from holding up every webhook behind it.

use std::sync::Arc;

use google_cloud_pubsub::client::Publisher as PsPublisher;
use google_cloud_pubsub::model::Message;
use tokio::sync::{Mutex, mpsc, oneshot};

use super::QueueError;

/// The most messages one lane takes at a time; the crate splits them into requests by its
/// own thresholds (count and bytes) and sends those at once.
const MAX_TAKE: usize = 1000;

type Waiting = (Message, oneshot::Sender<Result<String, QueueError>>);

/// The publishing end of the lanes; clones share them.
#[derive(Clone)]
pub(super) struct Lanes {
    waiting: mpsc::UnboundedSender<Waiting>,
    publishers: Arc<[PsPublisher]>,
}

impl Lanes {
    /// One lane per publisher. The lanes run until every clone of the result is dropped.
    pub fn start(publishers: Vec<PsPublisher>) -> Self {
        let (waiting, rx) = mpsc::unbounded_channel();
        let rx = Arc::new(Mutex::new(rx));
        for publisher in &publishers {
            tokio::spawn(lane(publisher.clone(), Arc::clone(&rx)));
        }
        Self {
            waiting,
            publishers: publishers.into(),
        }
    }

    /// Publishes `msg` with the next free lane and returns its message id.
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

/// One lane: take what is waiting, publish it, wait for every answer, repeat.
async fn lane(publisher: PsPublisher, waiting: Arc<Mutex<mpsc::UnboundedReceiver<Waiting>>>) {
    let mut taken = Vec::new();
    loop {
        {
            // One free lane at a time waits for the next message; the others queue here.
            let mut rx = waiting.lock().await;
            let Some(first) = rx.recv().await else {
                return;
            };
            taken.push(first);
            while taken.len() < MAX_TAKE {
                match rx.try_recv() {
                    Ok(next) => taken.push(next),
                    Err(_) => break,
                }
            }
        }
        let sent: Vec<_> = taken
            .drain(..)
            .map(|(msg, answer)| (publisher.publish(msg), answer))
            .collect();
        // Sends the batch now rather than at the timer, and returns once it was answered.
        publisher.flush().await;
        for (id, answer) in sent {
            // The caller may have given up (its request ended); the publish stands.
            let _ = answer.send(id.await.map_err(QueueError::unavailable));
        }
    }
}
