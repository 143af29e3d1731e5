//! The Google Cloud engine: Pub/Sub through Google's official `google-cloud-pubsub` crate.
//!
//! - Publishing: data = the raw body, attributes = the envelope metadata; `publish` returns
//!   once Pub/Sub has answered with a message id. A body too large for a message (10 MB,
//!   attributes included) is written to the archive first, under its final archive name,
//!   and published as a pointer (the `claim_check` attribute). The worker reads it back, and
//!   its own archive step then finds the object already there.
//! - Subscribing: the crate only offers streaming pull, so a background task reads the
//!   stream into a channel and [`Subscriber::pull`] takes from it. Flow control is the
//!   stream's flow control (the worker's concurrency and byte budget), which Pub/Sub applies
//!   on its side; the crate extends leases by itself while a message is held, so
//!   [`Acker::extend`] has nothing to do. The task reads the stream as fast as it delivers
//!   (see [`PubSubSubscription::open`] for why).
//! - Dead-lettering: Pub/Sub forwards a message by itself after the subscription's maximum
//!   delivery attempts; a permanent failure is forwarded explicitly (published to the
//!   dead-letter topic with the reason, then acknowledged).
//!
//! Endpoints: an emulator's `http://host:port` comes from configuration (filled from
//! `PUBSUB_EMULATOR_HOST`) and uses anonymous credentials; otherwise Application Default
//! Credentials, which are looked up once at start so a missing login fails at once with a
//! clear message instead of stalling the first call.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use google_cloud_auth::credentials::{Credentials, anonymous};
use google_cloud_gax::error::rpc::Code;
use google_cloud_gax::retry_policy::RetryPolicyExt as _;
use google_cloud_pubsub::client::{
    Publisher as PsPublisher, Subscriber as PsSubscriber, SubscriptionAdmin, TopicAdmin,
};
use google_cloud_pubsub::model::{
    DeadLetterPolicy, Message, RetryPolicy as SubscriptionRetryPolicy,
};
use google_cloud_pubsub::retry_policy::RetryableErrors;
use google_cloud_pubsub::subscriber::ShutdownBehavior;
use google_cloud_pubsub::subscriber::handler::Handler;
use tokio::sync::{Mutex, mpsc};

use super::publish_lanes::Lanes;
use super::{Acker, DeadLetter, Delivery, Publisher, QueueError, Subscriber, redelivery_backoff};
use crate::archive_name;
use crate::config::{PubsubSettings, Settings};
use crate::envelope::{Envelope, attr};
use crate::provision::Provisioned;
use crate::sink::Archive;

/// How long startup checks and readiness probes wait for Pub/Sub.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where and how to reach Pub/Sub.
#[derive(Clone)]
pub struct Connection {
    project: String,
    endpoint: Option<String>,
    credentials: Credentials,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("project", &self.project)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Anonymous credentials for an emulator endpoint, else Application Default Credentials.
    ///
    /// # Errors
    /// No emulator is configured and no Google credentials can be found.
    pub fn new(project: &str, endpoint: Option<&str>) -> Result<Self, QueueError> {
        let credentials = match endpoint {
            Some(_) => anonymous::Builder::new().build(),
            None => google_cloud_auth::credentials::Builder::default()
                .build()
                .map_err(|e| {
                    QueueError::unavailable(format!(
                        "no Google credentials found (set up Application Default Credentials, or set PUBSUB_EMULATOR_HOST for an emulator): {e}"
                    ))
                })?,
        };
        Ok(Self {
            project: project.to_owned(),
            endpoint: endpoint.map(str::to_owned),
            credentials,
        })
    }

    pub fn from_settings(settings: &Settings) -> Result<Self, QueueError> {
        Self::new(
            &settings.gcp.project,
            settings.queue.pubsub.endpoint.as_deref(),
        )
    }

    pub fn topic_path(&self, topic: &str) -> String {
        format!("projects/{}/topics/{topic}", self.project)
    }

    pub fn subscription_path(&self, subscription: &str) -> String {
        format!("projects/{}/subscriptions/{subscription}", self.project)
    }

    async fn publisher(
        &self,
        topic: &str,
        time_limit: Duration,
    ) -> Result<PsPublisher, QueueError> {
        let mut b = PsPublisher::builder(self.topic_path(topic))
            .with_credentials(self.credentials.clone())
            // A webhook waits on this publish: batch briefly, and never retry past the
            // time the request may wait (the crate's default is 600 s). Ingest's lanes send
            // their batches at once (`publish_lanes`); the delay is for the other publishers.
            .set_delay_threshold(Duration::from_millis(2))
            .with_retry_policy(RetryableErrors.with_time_limit(time_limit));
        if let Some(e) = &self.endpoint {
            b = b.with_endpoint(e.clone());
        }
        b.build().await.map_err(QueueError::unavailable)
    }

    async fn topic_admin(&self) -> Result<TopicAdmin, QueueError> {
        let mut b = TopicAdmin::builder().with_credentials(self.credentials.clone());
        if let Some(e) = &self.endpoint {
            b = b.with_endpoint(e.clone());
        }
        b.build().await.map_err(QueueError::unavailable)
    }

    async fn subscription_admin(&self) -> Result<SubscriptionAdmin, QueueError> {
        let mut b = SubscriptionAdmin::builder().with_credentials(self.credentials.clone());
        if let Some(e) = &self.endpoint {
            b = b.with_endpoint(e.clone());
        }
        b.build().await.map_err(QueueError::unavailable)
    }

    async fn subscriber(&self) -> Result<PsSubscriber, QueueError> {
        let mut b = PsSubscriber::builder().with_credentials(self.credentials.clone());
        if let Some(e) = &self.endpoint {
            b = b.with_endpoint(e.clone());
        }
        b.build().await.map_err(QueueError::unavailable)
    }

    /// Checks that `topic` exists, with a clear error when it does not or Pub/Sub is unreachable.
    async fn check_topic(&self, admin: &TopicAdmin, topic: &str) -> Result<(), QueueError> {
        let path = self.topic_path(topic);
        let call = admin.get_topic().set_topic(path.clone()).send();
        match tokio::time::timeout(PROBE_TIMEOUT, call).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) if code(&e) == Some(Code::NotFound) => Err(QueueError::unavailable(
                format!("Pub/Sub topic {path} does not exist: run `hookline provision`"),
            )),
            Ok(Err(e)) => Err(QueueError::unavailable(e)),
            Err(_) => Err(QueueError::unavailable(format!(
                "Pub/Sub did not answer within {PROBE_TIMEOUT:?} (endpoint: {}): check the network and the credentials \
                 (Application Default Credentials; an emulator needs PUBSUB_EMULATOR_HOST)",
                self.endpoint.as_deref().unwrap_or("pubsub.googleapis.com")
            ))),
        }
    }
}

fn code(e: &google_cloud_pubsub::Error) -> Option<Code> {
    e.status().map(|s| s.code)
}

/// Builds a Pub/Sub message from raw parts.
fn message(body: Bytes, attributes: &BTreeMap<String, String>) -> Message {
    Message::new()
        .set_data(body)
        .set_attributes(attributes.iter().map(|(k, v)| (k.clone(), v.clone())))
}

/// Publishes to `topic` and waits for the message id.
async fn publish_raw(publisher: &PsPublisher, msg: Message) -> Result<String, QueueError> {
    publisher
        .publish(msg)
        .await
        .map_err(QueueError::unavailable)
}

/// Ingest's publisher.
#[derive(Clone)]
pub struct PubSubPublisher {
    lanes: Lanes,
    admin: TopicAdmin,
    connection: Connection,
    topic: String,
    archive: Arc<dyn Archive>,
    claim_check_bytes: usize,
}

impl std::fmt::Debug for PubSubPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PubSubPublisher")
            .field("topic", &self.connection.topic_path(&self.topic))
            .finish_non_exhaustive()
    }
}

impl PubSubPublisher {
    /// Connects and checks that the topic exists.
    ///
    /// # Errors
    /// Pub/Sub is unreachable, or the topic is missing.
    pub async fn connect(
        connection: Connection,
        settings: &PubsubSettings,
        publish_timeout: Duration,
        archive: Arc<dyn Archive>,
    ) -> Result<Self, QueueError> {
        let mut publishers = Vec::with_capacity(settings.publish_lanes);
        for _ in 0..settings.publish_lanes.max(1) {
            publishers.push(
                connection
                    .publisher(&settings.topic, publish_timeout)
                    .await?,
            );
        }
        let admin = connection.topic_admin().await?;
        connection.check_topic(&admin, &settings.topic).await?;
        Ok(Self {
            lanes: Lanes::start(publishers),
            admin,
            connection,
            topic: settings.topic.clone(),
            archive,
            claim_check_bytes: settings.claim_check_bytes,
        })
    }

    /// Sends buffered messages; call before exiting.
    pub async fn flush(&self) {
        self.lanes.flush().await;
    }
}

#[async_trait]
impl Publisher for PubSubPublisher {
    async fn publish(&self, envelope: &Envelope) -> Result<String, QueueError> {
        let mut attributes = envelope.meta.to_attributes();
        let attribute_bytes: usize = attributes.iter().map(|(k, v)| k.len() + v.len()).sum();
        let body = if envelope.body.len() + attribute_bytes > self.claim_check_bytes {
            let object = archive_name::object_name(&envelope.meta);
            self.archive
                .put(&object, envelope)
                .await
                .map_err(QueueError::unavailable)?;
            tracing::info!(%object, bytes = envelope.body.len(), "body stored as a claim check");
            attributes.insert(attr::CLAIM_CHECK.into(), object);
            Bytes::new()
        } else {
            envelope.body.clone()
        };
        self.lanes.publish(message(body, &attributes)).await
    }

    async fn ready(&self) -> Result<(), QueueError> {
        self.connection.check_topic(&self.admin, &self.topic).await
    }
}

type Received = google_cloud_pubsub::Result<(Message, Handler)>;

/// The worker's subscription (or an operator's, on the dead-letter topic).
#[derive(Debug)]
pub struct PubSubSubscription {
    rx: Mutex<mpsc::UnboundedReceiver<Received>>,
    dead_letter: Option<DeadLetterTopic>,
    /// The backoff the worker applies itself before a nack, capped by the lease.
    nack_backoff: Option<NackBackoff>,
    lease: Duration,
    shutdown: Arc<std::sync::Mutex<google_cloud_pubsub::subscriber::ShutdownToken>>,
    task: tokio::task::JoinHandle<()>,
}

/// The dead-letter topic, for explicit forwarding of permanent failures (by the pull
/// subscription's acker, and by the worker's push endpoint).
#[derive(Clone)]
pub struct DeadLetterTopic {
    publisher: PsPublisher,
}

impl std::fmt::Debug for DeadLetterTopic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeadLetterTopic")
    }
}

impl DeadLetterTopic {
    /// # Errors
    /// Pub/Sub is unreachable, or the topic is missing.
    pub async fn open(connection: &Connection, topic: &str) -> Result<Self, QueueError> {
        let admin = connection.topic_admin().await?;
        connection.check_topic(&admin, topic).await?;
        Ok(Self {
            publisher: connection.publisher(topic, Duration::from_secs(30)).await?,
        })
    }

    /// Publishes the message with the reason's attributes and waits for the message id.
    ///
    /// # Errors
    /// The publish failed; the caller must not acknowledge the original.
    pub async fn publish(
        &self,
        body: Bytes,
        attributes: &BTreeMap<String, String>,
        reason: &DeadLetter,
    ) -> Result<String, QueueError> {
        let mut attributes = attributes.clone();
        reason.annotate(&mut attributes);
        publish_raw(&self.publisher, message(body, &attributes)).await
    }
}

/// How long a nacked message is held before it goes back, for a subscription without a
/// retry policy: Pub/Sub would redeliver it at once, and a sink that fails for a minute would
/// use up every delivery attempt in seconds and send the message to the dead-letter topic.
/// The hold grows with the attempt as Pub/Sub's own backoff does (the crate keeps the lease
/// alive meanwhile, up to its maximum extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NackBackoff {
    pub min: Duration,
    pub max: Duration,
}

/// What one streaming pull may hold before Pub/Sub stops sending: unacked messages, and
/// the bytes of their bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowControl {
    pub messages: usize,
    pub bytes: usize,
}

impl PubSubSubscription {
    /// Opens a streaming pull on `subscription`, holding at most what `flow` allows.
    /// With `dead_letter_topic`, permanent failures are published there; with
    /// `nack_backoff`, nacks wait as it says.
    ///
    /// # Errors
    /// Pub/Sub is unreachable, or a topic is missing.
    pub async fn open(
        connection: &Connection,
        subscription: &str,
        flow: FlowControl,
        ack_deadline: Duration,
        dead_letter_topic: Option<&str>,
        nack_backoff: Option<NackBackoff>,
    ) -> Result<Self, QueueError> {
        let dead_letter = match dead_letter_topic {
            Some(topic) => Some(DeadLetterTopic::open(connection, topic).await?),
            None => None,
        };
        let client = connection.subscriber().await?;
        let path = connection.subscription_path(subscription);
        let lease = ack_deadline.clamp(Duration::from_secs(10), Duration::from_secs(600));
        let open = move || {
            client
                .subscribe(path.clone())
                .set_max_outstanding_messages(i64::try_from(flow.messages).unwrap_or(i64::MAX))
                .set_max_outstanding_bytes(i64::try_from(flow.bytes).unwrap_or(i64::MAX))
                .set_max_lease_extension(lease)
                .set_shutdown_behavior(ShutdownBehavior::NackImmediately)
                .build()
        };
        let first = open();
        let shutdown = Arc::new(std::sync::Mutex::new(first.shutdown_token()));
        // Unbounded on purpose. The crate leases a message (and extends its lease) only once
        // the stream has been read past it; a message left unread in the transport has no
        // lease, runs out after the stream's deadline and is delivered again, spending one of
        // its delivery attempts. Pub/Sub bounds what it sends by the flow control above, so
        // this holds at most `flow` anyway. The emulator ignores flow control and sends the
        // whole backlog: with a bounded channel, in a 10,000-delivery fault run, messages
        // expired unread and came back, each return one attempt more toward the dead-letter
        // topic, and 1,366 of the first 3,833 deliveries were processed two or three times.
        let (tx, rx) = mpsc::unbounded_channel();
        let current = Arc::clone(&shutdown);
        let task = tokio::spawn(async move {
            // The crate ends a stream for good on errors such as NotFound or
            // PermissionDenied (common while IAM propagates): open a new one, with backoff,
            // rather than leave the worker idle while it reports healthy.
            let mut stream = first;
            let mut backoff = Duration::from_secs(1);
            loop {
                while let Some(item) = stream.next().await {
                    let failed = item.is_err();
                    if tx.send(item).is_err() {
                        return;
                    }
                    if failed {
                        break;
                    }
                    backoff = Duration::from_secs(1);
                }
                tracing::warn!(
                    wait_s = backoff.as_secs(),
                    "subscription stream ended; reopening"
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(60));
                stream = open();
                *current.lock().unwrap_or_else(|p| p.into_inner()) = stream.shutdown_token();
            }
        });
        Ok(Self {
            rx: Mutex::new(rx),
            dead_letter,
            nack_backoff,
            lease,
            shutdown,
            task,
        })
    }

    fn delivery(&self, msg: Message, handler: Handler) -> Delivery {
        // `delivery_attempt` is only filled when the subscription has a dead-letter policy.
        let attempt = handler
            .delivery_attempt()
            .and_then(|a| u32::try_from(a).ok())
            .filter(|a| *a > 0)
            .unwrap_or(1);
        let attributes: BTreeMap<String, String> = msg.attributes.into_iter().collect();
        Delivery {
            message_id: msg.message_id,
            body: msg.data.clone(),
            attributes: attributes.clone(),
            attempt,
            acker: Box::new(PubSubAcker {
                handler,
                body: msg.data,
                attributes,
                dead_letter: self.dead_letter.clone(),
                nack_hold: self
                    .nack_backoff
                    .map(|b| redelivery_backoff(attempt, b.min, b.max).min(self.lease)),
            }),
        }
    }
}

impl Drop for PubSubSubscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[async_trait]
impl Subscriber for PubSubSubscription {
    async fn pull(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError> {
        let mut rx = self.rx.lock().await;
        let first = match tokio::time::timeout(wait, rx.recv()).await {
            Err(_) => return Ok(Vec::new()),
            Ok(None) => return Err(QueueError::Closed),
            Ok(Some(item)) => item,
        };
        let mut out = Vec::with_capacity(max);
        let mut next = Some(first);
        while let Some(item) = next.take() {
            match item {
                Ok((msg, handler)) => out.push(self.delivery(msg, handler)),
                Err(e) if out.is_empty() => return Err(QueueError::unavailable(e)),
                Err(e) => tracing::warn!(error = %e, "subscription stream error"),
            }
            if out.len() < max {
                next = rx.try_recv().ok();
            }
        }
        Ok(out)
    }

    async fn close(&self) {
        // Stop receiving, then drop what was received but not handed out: dropping a
        // handler nacks it, so those messages go straight back to Pub/Sub.
        self.task.abort();
        {
            let mut rx = self.rx.lock().await;
            rx.close();
            while rx.try_recv().is_ok() {}
        }
        let token = self
            .shutdown
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        // Flushes pending acks; bounded so that SIGTERM's 10 s are never exceeded.
        if tokio::time::timeout(Duration::from_secs(3), token.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("subscription shutdown did not finish in 3 s");
        }
    }
}

/// Settles one Pub/Sub message. Dropping it nacks (the crate's handler does).
struct PubSubAcker {
    handler: Handler,
    body: Bytes,
    attributes: BTreeMap<String, String>,
    dead_letter: Option<DeadLetterTopic>,
    /// How long to hold the message before a nack (see [`NackBackoff`]).
    nack_hold: Option<Duration>,
}

impl std::fmt::Debug for PubSubAcker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PubSubAcker").finish_non_exhaustive()
    }
}

#[async_trait]
impl Acker for PubSubAcker {
    async fn ack(self: Box<Self>) -> Result<(), QueueError> {
        self.handler.ack();
        Ok(())
    }

    async fn nack(self: Box<Self>) -> Result<(), QueueError> {
        if let Some(hold) = self.nack_hold {
            tokio::time::sleep(hold).await;
        }
        self.handler.nack();
        Ok(())
    }

    async fn dead_letter(self: Box<Self>, reason: DeadLetter) -> Result<(), QueueError> {
        let Some(target) = &self.dead_letter else {
            // Already on the dead-letter subscription: leave it there.
            self.handler.nack();
            return Ok(());
        };
        // Acknowledge only once the dead-letter topic holds it; on failure the handler is
        // dropped (a nack) and the message comes back.
        target
            .publish(self.body.clone(), &self.attributes, &reason)
            .await?;
        self.handler.ack();
        Ok(())
    }

    async fn extend(&self, _by: Duration) -> Result<(), QueueError> {
        // The crate extends leases itself for as long as the handler is held.
        Ok(())
    }
}

/// Creates the topics and subscriptions, idempotently.
///
/// # Errors
/// Pub/Sub refused a creation for another reason than "already exists".
pub async fn provision(
    connection: &Connection,
    s: &PubsubSettings,
) -> Result<Vec<Provisioned>, QueueError> {
    let topics = connection.topic_admin().await?;
    let subs = connection.subscription_admin().await?;
    let outcome = |path: String, r: Result<(), google_cloud_pubsub::Error>| match r {
        Ok(()) => Ok(Provisioned::Created(path)),
        Err(e) if code(&e) == Some(Code::AlreadyExists) => Ok(Provisioned::Exists(path)),
        Err(e) => Err(QueueError::unavailable(e)),
    };
    let mut done = Vec::new();
    for topic in [&s.topic, &s.dead_letter_topic] {
        let path = connection.topic_path(topic);
        let r = topics
            .create_topic()
            .set_name(path.clone())
            .send()
            .await
            .map(|_| ());
        done.push(outcome(path, r)?);
    }
    let secs = |n: u32| google_cloud_wkt::Duration::clamp(i64::from(n), 0);
    let path = connection.subscription_path(&s.subscription);
    let mut create = subs
        .create_subscription()
        .set_name(path.clone())
        .set_topic(connection.topic_path(&s.topic))
        .set_ack_deadline_seconds(i32::try_from(s.ack_deadline_secs).unwrap_or(60))
        .set_dead_letter_policy(
            DeadLetterPolicy::new()
                .set_dead_letter_topic(connection.topic_path(&s.dead_letter_topic))
                .set_max_delivery_attempts(i32::try_from(s.max_delivery_attempts).unwrap_or(5)),
        );
    if s.retry_policy {
        create = create.set_retry_policy(
            SubscriptionRetryPolicy::new()
                .set_minimum_backoff(secs(s.min_backoff_secs))
                .set_maximum_backoff(secs(s.max_backoff_secs)),
        );
    }
    let r = create.send().await.map(|_| ());
    done.push(outcome(path, r)?);
    let path = connection.subscription_path(&s.dead_letter_subscription);
    let r = subs
        .create_subscription()
        .set_name(path.clone())
        .set_topic(connection.topic_path(&s.dead_letter_topic))
        .set_ack_deadline_seconds(60)
        .send()
        .await
        .map(|_| ());
    done.push(outcome(path, r)?);
    Ok(done)
}
