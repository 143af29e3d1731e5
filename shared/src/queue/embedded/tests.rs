//! The embedded queue against the Pub/Sub semantics it promises. Short deadlines and
//! backoffs keep these fast; they wait on the queue, never on fixed sleeps for results.

use std::time::Duration;

use super::*;
use crate::envelope::attr;

fn settings(dir: &Path) -> EmbeddedQueueSettings {
    EmbeddedQueueSettings {
        path: dir.join("q.sqlite3"),
        ack_deadline_secs: 1,
        max_delivery_attempts: 5,
        min_backoff_ms: 10,
        max_backoff_ms: 20,
        segment_bytes: 64 * 1024 * 1024,
    }
}

fn envelope(id: &str) -> Envelope {
    crate::test_support::envelope(id, format!("{{\"n\":\"{id}\"}}").as_bytes())
}

const WAIT: Duration = Duration::from_secs(3);

/// Bytes of attributes per message in the WAL tests.
const PADDING: usize = 8 * 1024;

/// Publishes a message whose row is as large as an 8 KB body used to make it: bodies go to
/// segments now, so only attributes make rows (and WAL frames) large.
async fn publish_padded(q: EmbeddedQueue, id: String) -> Result<String, QueueError> {
    let attributes = BTreeMap::from([
        ("delivery_id".to_owned(), id),
        ("padding".to_owned(), "x".repeat(PADDING)),
    ]);
    q.publish_to(MAIN_TOPIC, Bytes::from_static(b"{}"), &attributes)
        .await
}

#[tokio::test]
async fn publish_pull_ack_round_trip_keeps_body_and_attributes() {
    let dir = tempfile::tempdir().unwrap();
    let q = EmbeddedQueue::open(&settings(dir.path()), Duration::from_millis(5)).unwrap();
    let sent = envelope("d1");
    q.publish(&sent).await.unwrap();

    let mut got = q.subscriber().pull(10, WAIT).await.unwrap();
    assert_eq!(got.len(), 1);
    let d = got.pop().unwrap();
    assert_eq!(d.attempt, 1);
    assert_eq!(d.envelope().unwrap(), sent);
    d.acker.ack().await.unwrap();
    assert_eq!(q.depth(MAIN_TOPIC).await.unwrap(), (0, 0));
    assert!(
        q.subscriber()
            .pull(10, Duration::from_millis(50))
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn nack_redelivers_with_a_higher_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let q = EmbeddedQueue::open(&settings(dir.path()), Duration::from_millis(5)).unwrap();
    q.publish(&envelope("d1")).await.unwrap();
    let sub = q.subscriber();
    let first = sub.pull(1, WAIT).await.unwrap().pop().unwrap();
    first.acker.nack().await.unwrap();
    let second = sub.pull(1, WAIT).await.unwrap().pop().unwrap();
    assert_eq!(second.attempt, 2);
    assert_eq!(second.attributes[attr::DELIVERY_ID], "d1");
}

#[tokio::test]
async fn an_expired_lease_redelivers_and_the_old_holder_cannot_ack() {
    let dir = tempfile::tempdir().unwrap();
    let q = EmbeddedQueue::open(&settings(dir.path()), Duration::from_millis(20)).unwrap();
    q.publish(&envelope("d1")).await.unwrap();
    let sub = q.subscriber();
    let stale = sub.pull(1, WAIT).await.unwrap().pop().unwrap();
    // Nothing is visible while leased...
    assert!(
        sub.pull(1, Duration::from_millis(200))
            .await
            .unwrap()
            .is_empty()
    );
    // ...and it comes back once the 1 s ack deadline has passed.
    let fresh = sub.pull(1, WAIT).await.unwrap().pop().unwrap();
    assert_eq!(fresh.attempt, 2);
    stale.acker.ack().await.unwrap();
    assert_eq!(
        q.depth(MAIN_TOPIC).await.unwrap(),
        (0, 1),
        "stale ack must not delete"
    );
    fresh.acker.ack().await.unwrap();
    assert_eq!(q.depth(MAIN_TOPIC).await.unwrap(), (0, 0));
}

#[tokio::test]
async fn extend_keeps_a_message_leased_past_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let q = EmbeddedQueue::open(&settings(dir.path()), Duration::from_millis(20)).unwrap();
    q.publish(&envelope("d1")).await.unwrap();
    let sub = q.subscriber();
    let held = sub.pull(1, WAIT).await.unwrap().pop().unwrap();
    held.acker.extend(Duration::from_secs(30)).await.unwrap();
    assert!(
        sub.pull(1, Duration::from_millis(1500))
            .await
            .unwrap()
            .is_empty()
    );
    held.acker.ack().await.unwrap();
}

#[tokio::test]
async fn after_max_attempts_the_message_is_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let q = EmbeddedQueue::open(&settings(dir.path()), Duration::from_millis(5)).unwrap();
    q.publish(&envelope("poison")).await.unwrap();
    let sub = q.subscriber();
    for attempt in 1..=5 {
        let d = sub.pull(1, WAIT).await.unwrap().pop().unwrap();
        assert_eq!(d.attempt, attempt);
        d.acker.nack().await.unwrap();
    }
    assert!(
        sub.pull(1, Duration::from_millis(100))
            .await
            .unwrap()
            .is_empty()
    );
    let dead = q
        .dead_letter_subscriber()
        .pull(1, WAIT)
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(dead.attributes[attr::DELIVERY_ID], "poison");
    assert_eq!(
        dead.attributes[attr::DEAD_LETTER_REASON],
        "max_delivery_attempts"
    );
    assert_eq!(dead.attributes[attr::DEAD_LETTER_ATTEMPTS], "5");
}

#[tokio::test]
async fn explicit_dead_letter_carries_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let q = EmbeddedQueue::open(&settings(dir.path()), Duration::from_millis(5)).unwrap();
    q.publish(&envelope("bad")).await.unwrap();
    let d = q.subscriber().pull(1, WAIT).await.unwrap().pop().unwrap();
    let reason = DeadLetter {
        sink: "warehouse".into(),
        reason: "row rejected".into(),
        attempts: 1,
    };
    d.acker.dead_letter(reason).await.unwrap();
    assert_eq!(q.depth(MAIN_TOPIC).await.unwrap(), (0, 0));
    let dead = q
        .dead_letter_subscriber()
        .pull(1, WAIT)
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(dead.attributes[attr::DEAD_LETTER_SINK], "warehouse");
    assert_eq!(dead.attributes[attr::DEAD_LETTER_REASON], "row rejected");
    assert_eq!(dead.envelope().unwrap().meta.delivery_id, "bad");
}

#[tokio::test]
async fn two_handles_on_one_file_share_messages_and_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    {
        let producer = EmbeddedQueue::open(&s, Duration::from_millis(5)).unwrap();
        for i in 0..50 {
            producer.publish(&envelope(&format!("m{i}"))).await.unwrap();
        }
    }
    // A second "process" opens the same file after the first has gone.
    let consumer = EmbeddedQueue::open(&s, Duration::from_millis(5)).unwrap();
    let mut seen = Vec::new();
    while seen.len() < 50 {
        for d in consumer.subscriber().pull(16, WAIT).await.unwrap() {
            seen.push(d.attributes[attr::DELIVERY_ID].clone());
            d.acker.ack().await.unwrap();
        }
    }
    let want: Vec<String> = (0..50).map(|i| format!("m{i}")).collect();
    assert_eq!(seen, want, "delivered once each, in publish order");
}

#[tokio::test]
async fn concurrent_publishes_are_group_committed_and_all_stored() {
    let dir = tempfile::tempdir().unwrap();
    let q = EmbeddedQueue::open(&settings(dir.path()), Duration::from_millis(5)).unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let q = q.clone();
        tasks.spawn(async move { q.publish(&envelope(&format!("c{i}"))).await });
    }
    let mut ids = std::collections::BTreeSet::new();
    while let Some(r) = tasks.join_next().await {
        ids.insert(r.unwrap().unwrap());
    }
    assert_eq!(ids.len(), 200);
    assert_eq!(q.depth(MAIN_TOPIC).await.unwrap(), (200, 0));
}

/// A pull reads only the index entries it returns: no sort of every ready message (which
/// made each pull cost as much as the backlog was long).
#[test]
fn the_next_ready_messages_come_straight_from_the_index() {
    for query in [NEXT_READY, READY_SIZES] {
        next_ready_plan(query);
    }
}

fn next_ready_plan(query: &str) {
    let conn = Connection::open_in_memory().unwrap();
    create_schema(&conn).unwrap();
    let mut stmt = conn
        .prepare(&format!("EXPLAIN QUERY PLAN {query}"))
        .unwrap();
    let plan: Vec<String> = stmt
        .query_map(rusqlite::params![0, 0, MAIN_TOPIC, 0, 16], |r| {
            r.get::<_, String>(3)
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(
        plan.iter()
            .any(|step| step.contains("INDEX messages_ready")),
        "{plan:?}"
    );
    assert!(
        !plan.iter().any(|step| step.contains("TEMP B-TREE")),
        "{plan:?}"
    );
}

#[tokio::test]
async fn a_pull_leases_no_more_than_its_byte_budget_but_always_one() {
    let dir = tempfile::tempdir().unwrap();
    let q = EmbeddedQueue::open(&settings(dir.path()), Duration::from_millis(5)).unwrap();
    for (id, size) in [
        ("b1", 100),
        ("b2", 100),
        ("b3", 100),
        ("big", 1000),
        ("b5", 100),
    ] {
        q.publish(&crate::test_support::envelope(id, &vec![b'x'; size]))
            .await
            .unwrap();
    }
    let sub = q.subscriber();
    let ids = |got: &[Delivery]| -> Vec<String> {
        got.iter()
            .map(|d| d.attributes[attr::DELIVERY_ID].clone())
            .collect()
    };
    let first = sub.pull_within(10, 250, WAIT).await.unwrap();
    assert_eq!(ids(&first), ["b1", "b2"], "two 100-byte bodies fit in 250");
    // A budget smaller than the next body still leases it: nothing waits behind a big one.
    let second = sub.pull_within(10, 300, WAIT).await.unwrap();
    assert_eq!(ids(&second), ["b3"]);
    let third = sub.pull_within(10, 10, WAIT).await.unwrap();
    assert_eq!(ids(&third), ["big"]);
    let rest = sub.pull(10, WAIT).await.unwrap();
    assert_eq!(ids(&rest), ["b5"]);
    assert_eq!(
        q.depth(MAIN_TOPIC).await.unwrap(),
        (0, 5),
        "all leased, none twice"
    );
}

#[tokio::test]
async fn closing_empties_the_write_ahead_log() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    let q = EmbeddedQueue::open(&s, Duration::from_millis(5)).unwrap();
    for i in 0..100 {
        q.publish(&envelope(&format!("w{i}"))).await.unwrap();
    }
    let wal = dir.path().join("q.sqlite3-wal");
    let wal_size = || std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    assert!(wal_size() > 0, "publishes go to the WAL first");
    Publisher::close(&q).await;
    assert_eq!(wal_size(), 0, "the next process has nothing to replay");
    // The queue still works, and nothing was lost.
    q.publish(&envelope("after")).await.unwrap();
    assert_eq!(q.depth(MAIN_TOPIC).await.unwrap(), (101, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_steady_publishing_the_write_ahead_log_starts_over() {
    let dir = tempfile::tempdir().unwrap();
    let q = EmbeddedQueue::open(&settings(dir.path()), Duration::from_millis(5)).unwrap();
    let wal = dir.path().join("q.sqlite3-wal");
    // Far more than RESTART_AT_FRAMES pages, in waves of concurrent publishes, as ingest
    // under load sends them: without restarts the WAL would hold all of it.
    let waves: u16 = 48;
    let per_wave: u16 = 128;
    for wave in 0..waves {
        let mut publishes = tokio::task::JoinSet::new();
        for i in 0..per_wave {
            publishes.spawn(publish_padded(q.clone(), format!("w{wave}-{i}")));
        }
        while let Some(result) = publishes.join_next().await {
            result.unwrap().unwrap();
        }
    }
    let written = u64::from(waves * per_wave) * PADDING as u64;
    let wal_size = std::fs::metadata(&wal).unwrap().len();
    assert!(
        wal_size < written / 2,
        "the WAL is {wal_size} bytes after {written} bytes of rows: it never started over"
    );
    // Nothing was lost on the way.
    assert_eq!(
        q.depth(MAIN_TOPIC).await.unwrap(),
        (i64::from(waves * per_wave), 0)
    );
}

/// A worker process alone only settles: its consumer's writer thread must start the WAL over
/// too, or the leases and deletes of a long drain pile up in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_only_settles_starts_the_write_ahead_log_over() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    let wal = dir.path().join("q.sqlite3-wal");
    let count: u16 = 6144;
    {
        // Ingest: publishes everything, then leaves an empty WAL behind it.
        let ingest = EmbeddedQueue::open(&s, Duration::from_millis(5)).unwrap();
        for wave in 0..count / 128 {
            let mut publishes = tokio::task::JoinSet::new();
            for i in 0..128 {
                publishes.spawn(publish_padded(ingest.clone(), format!("s{wave}-{i}")));
            }
            while let Some(result) = publishes.join_next().await {
                result.unwrap().unwrap();
            }
        }
        Publisher::close(&ingest).await;
    }
    assert_eq!(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0), 0);

    // The worker: leases and acks every message, and publishes nothing.
    let worker = EmbeddedQueue::open(&s, Duration::from_millis(5)).unwrap();
    let sub = worker.subscriber();
    let mut settled = 0;
    while settled < usize::from(count) {
        let batch = sub.pull(64, WAIT).await.unwrap();
        assert!(
            !batch.is_empty(),
            "{settled} of {count} settled, then nothing to pull"
        );
        settled += batch.len();
        let mut acks = tokio::task::JoinSet::new();
        for d in batch {
            acks.spawn(d.acker.ack());
        }
        while let Some(result) = acks.join_next().await {
            result.unwrap().unwrap();
        }
    }
    assert_eq!(worker.depth(MAIN_TOPIC).await.unwrap(), (0, 0));
    // The WAL file never shrinks when it starts over, so its size is its high-water mark.
    let written = u64::from(count) * PADDING as u64;
    let wal_size = std::fs::metadata(&wal).unwrap().len();
    assert!(
        wal_size < written / 2,
        "the WAL is {wal_size} bytes after settling {written} bytes of rows: it never started over"
    );
}

/// The body segments in the queue's folder.
fn segments(s: &EmbeddedQueueSettings) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(bodies::folder(&s.path)) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".seg"))
        .collect();
    names.sort();
    names
}

/// Waits (up to three collection intervals) for the checkpoint thread to leave `want`.
async fn segments_become(s: &EmbeddedQueueSettings, want: usize) -> Vec<String> {
    let give_up = tokio::time::Instant::now() + COLLECT_INTERVAL * 3;
    loop {
        let now = segments(s);
        if now.len() == want || tokio::time::Instant::now() >= give_up {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A queue where every publish fills its segment, so each (sequential) publish starts one.
fn segment_per_publish(dir: &Path) -> (EmbeddedQueueSettings, EmbeddedQueue) {
    let s = EmbeddedQueueSettings {
        segment_bytes: 1,
        ..settings(dir)
    };
    let q = EmbeddedQueue::open(&s, Duration::from_millis(5)).unwrap();
    (s, q)
}

#[tokio::test]
async fn bodies_are_written_to_segments_which_are_deleted_once_settled() {
    let dir = tempfile::tempdir().unwrap();
    let (s, q) = segment_per_publish(dir.path());
    let sent: Vec<Envelope> = (0..3).map(|i| envelope(&format!("b{i}"))).collect();
    for e in &sent {
        q.publish(e).await.unwrap();
    }
    assert_eq!(segments(&s).len(), 3);
    // The rows hold where the bodies are, not the bodies.
    let rows: Vec<(i64, Option<String>, i64)> = Connection::open(&s.path)
        .unwrap()
        .prepare("SELECT length(body), segment, body_len FROM messages ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    for ((inline, segment, len), e) in rows.iter().zip(&sent) {
        assert_eq!(*inline, 0);
        assert!(segments(&s).contains(&format!("{}.seg", segment.as_ref().unwrap())));
        assert_eq!(*len, e.body.len() as i64);
    }

    let got = q.subscriber().pull(10, WAIT).await.unwrap();
    assert_eq!(got.len(), 3);
    for (d, e) in got.into_iter().zip(&sent) {
        assert_eq!(&d.envelope().unwrap(), e);
        d.acker.ack().await.unwrap();
    }
    // Collected by the checkpoint thread; the segment this handle still appends to stays.
    let left = segments_become(&s, 1).await;
    assert_eq!(left.len(), 1, "{left:?}");

    // The next publish lets go of it, and it goes too.
    q.publish(&envelope("b3")).await.unwrap();
    let now = segments_become(&s, 1).await;
    assert_eq!(now.len(), 1, "{now:?}");
    assert_ne!(now, left);
}

#[tokio::test]
async fn a_queue_file_from_before_segments_keeps_its_inline_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    let old = envelope("inline");
    {
        // The schema as it was, with one message in it.
        let conn = Connection::open(&s.path).unwrap();
        conn.execute_batch(
            "CREATE TABLE messages (
                id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, body BLOB NOT NULL,
                attributes TEXT NOT NULL, published_at INTEGER NOT NULL,
                visible_at INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
                lease INTEGER);
             CREATE INDEX messages_ready ON messages (topic, visible_at, id);",
        )
        .unwrap();
        conn.execute(
            "INSERT INTO messages (topic, body, attributes, published_at, visible_at)
             VALUES (?1, ?2, ?3, 0, 0)",
            params![
                MAIN_TOPIC,
                &old.body[..],
                serde_json::to_string(&old.meta.to_attributes()).unwrap()
            ],
        )
        .unwrap();
    }
    let q = EmbeddedQueue::open(&s, Duration::from_millis(5)).unwrap();
    let new = envelope("segment");
    q.publish(&new).await.unwrap();
    let got = q.subscriber().pull(10, WAIT).await.unwrap();
    let bodies: Vec<Envelope> = got.iter().map(|d| d.envelope().unwrap()).collect();
    assert_eq!(bodies, [old, new]);
}

/// The bodies' sync fails (a writeback error): that publish fails, its segment is given
/// up (what it holds past the last good sync is not known), the next publish starts
/// another, and the message synced before it is still delivered whole from the old one.
#[tokio::test]
async fn a_failed_body_sync_fails_its_publish_and_the_next_one_starts_a_segment() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    let q = EmbeddedQueue::open(&s, Duration::from_millis(5)).unwrap();
    let (before, failed, after) = (envelope("before"), envelope("failed"), envelope("after"));
    q.publish(&before).await.unwrap();
    assert_eq!(segments(&s).len(), 1);
    q.body_writer.lock().unwrap().fail_next_sync();
    let err = q.publish(&failed).await.unwrap_err();
    assert!(
        matches!(&err, QueueError::Unavailable(why) if why.to_string().contains("injected")),
        "{err:?}"
    );
    q.publish(&after).await.unwrap();
    assert_eq!(
        segments(&s).len(),
        2,
        "the given-up segment is kept: a row points into it"
    );
    let got = q.subscriber().pull(10, WAIT).await.unwrap();
    let bodies: Vec<Envelope> = got.iter().map(|d| d.envelope().unwrap()).collect();
    assert_eq!(bodies, [before, after]);
}

/// A nack with a wait longer than the backoff keeps the message away for that wait; the
/// redelivery is the next attempt.
#[tokio::test]
async fn nack_after_keeps_the_message_away_for_the_wait() {
    let dir = tempfile::tempdir().unwrap();
    let q = EmbeddedQueue::open(&settings(dir.path()), Duration::from_millis(5)).unwrap();
    q.publish(&envelope("later")).await.unwrap();
    let sub = q.subscriber();
    let d = sub.pull(10, WAIT).await.unwrap().pop().unwrap();
    let nacked = std::time::Instant::now();
    d.acker
        .nack_after(Duration::from_millis(600))
        .await
        .unwrap();
    // The backoff alone (10-20 ms here) would have brought it back long before.
    assert!(
        sub.pull(10, Duration::from_millis(300))
            .await
            .unwrap()
            .is_empty()
    );
    let again = sub.pull(10, WAIT).await.unwrap().pop().unwrap();
    assert!(
        nacked.elapsed() >= Duration::from_millis(600),
        "{:?}",
        nacked.elapsed()
    );
    assert_eq!(again.attempt, 2);
    assert_eq!(again.attributes[attr::DELIVERY_ID], "later");
}

/// Once its lease ran out and another consumer leased the message, the first holder's
/// extension reports the loss (the worker stops its work on it); the new holder's works.
#[tokio::test]
async fn extending_a_lost_lease_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let q = EmbeddedQueue::open(&settings(dir.path()), Duration::from_millis(5)).unwrap();
    q.publish(&envelope("slow")).await.unwrap();
    let first = q.subscriber().pull(10, WAIT).await.unwrap().pop().unwrap();
    first
        .acker
        .extend(Duration::from_millis(300))
        .await
        .unwrap();
    // Its deadline passes (300 ms); a second consumer leases it.
    let second = q.subscriber().pull(10, WAIT).await.unwrap().pop().unwrap();
    assert_eq!(second.attempt, 2);
    assert!(matches!(
        first.acker.extend(Duration::from_secs(1)).await,
        Err(QueueError::LeaseLost)
    ));
    second.acker.extend(Duration::from_secs(1)).await.unwrap();
}

/// A pull dropped while its lease waits for the writer (a worker shutting down) does not
/// strand what the lease takes: the messages are handed back at once, the attempt not
/// counted, instead of returning at their deadline with an attempt spent.
#[tokio::test]
async fn a_pull_dropped_while_leasing_hands_its_messages_back_uncounted() {
    let dir = tempfile::tempdir().unwrap();
    let q = EmbeddedQueue::open(&settings(dir.path()), Duration::from_millis(5)).unwrap();
    q.publish(&envelope("dropped")).await.unwrap();
    // Hold the consumer's writer so that the pull's lease waits behind it.
    let (release, wait) = std::sync::mpsc::channel::<()>();
    let held = tokio::spawn({
        let q = q.clone();
        async move {
            q.with_consumer(move |_| {
                wait.recv().ok();
                Ok(())
            })
            .await
            .unwrap();
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let sub = q.subscriber();
    let pull = tokio::spawn(async move { sub.pull(10, WAIT).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    pull.abort();
    assert!(pull.await.unwrap_err().is_cancelled());
    release.send(()).unwrap();
    held.await.unwrap();
    // The ack deadline is 1 s: only a message handed back comes within 500 ms.
    let again = q
        .subscriber()
        .pull(10, Duration::from_millis(500))
        .await
        .unwrap()
        .pop()
        .expect("handed back at once");
    assert_eq!(
        again.attempt, 1,
        "the dropped pull's attempt is not counted"
    );
    assert_eq!(again.attributes[attr::DELIVERY_ID], "dropped");
}

/// The attributes of the one message on the dead-letter topic, read from the file.
fn dead_letter_attributes(s: &EmbeddedQueueSettings) -> BTreeMap<String, String> {
    let attributes: String = Connection::open(&s.path)
        .unwrap()
        .query_row(
            "SELECT attributes FROM messages WHERE topic = ?1",
            [DEAD_LETTER_TOPIC],
            |r| r.get(0),
        )
        .unwrap();
    serde_json::from_str(&attributes).unwrap()
}

#[tokio::test]
async fn a_message_whose_body_is_gone_is_dead_lettered_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (s, q) = segment_per_publish(dir.path());
    q.publish(&envelope("lost")).await.unwrap();
    q.publish(&envelope("kept")).await.unwrap();
    let first = segments(&s).remove(0);
    std::fs::remove_file(bodies::folder(&s.path).join(first)).unwrap();

    let got = q.subscriber().pull(10, WAIT).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].attributes[attr::DELIVERY_ID], "kept");
    assert_eq!(q.depth(DEAD_LETTER_TOPIC).await.unwrap(), (1, 0));
    let attributes = dead_letter_attributes(&s);
    assert_eq!(attributes[attr::DELIVERY_ID], "lost");
    assert_eq!(attributes[attr::DEAD_LETTER_SINK], "queue");
    assert!(
        attributes[attr::DEAD_LETTER_REASON].starts_with("body unreadable: "),
        "{attributes:?}"
    );
    // On the dead-letter topic it is not delivered either (nothing to deliver), and stays.
    let dead = q.dead_letter_subscriber();
    assert!(
        dead.pull(10, Duration::from_millis(50))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(q.depth(DEAD_LETTER_TOPIC).await.unwrap(), (0, 1));
}

/// A body that cannot be read for a reason that may pass (here its segment replaced by a
/// folder: "is a directory") holds back neither the messages behind it nor itself for
/// ever: each pull counts an attempt, and after the last the message is dead-lettered.
#[tokio::test]
async fn a_body_that_cannot_be_read_costs_attempts_then_is_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let s = EmbeddedQueueSettings {
        segment_bytes: 1,
        max_delivery_attempts: 2,
        ..settings(dir.path())
    };
    let q = EmbeddedQueue::open(&s, Duration::from_millis(5)).unwrap();
    q.publish(&envelope("stuck")).await.unwrap();
    q.publish(&envelope("behind")).await.unwrap();
    let first = bodies::folder(&s.path).join(segments(&s).remove(0));
    std::fs::remove_file(&first).unwrap();
    std::fs::create_dir(&first).unwrap();

    let sub = q.subscriber();
    let got = sub.pull(10, WAIT).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].attributes[attr::DELIVERY_ID], "behind");
    for d in got {
        d.acker.ack().await.unwrap();
    }
    // Leased (attempt 1) until its deadline; then attempt 2 fails too; then it moves on.
    assert_eq!(q.depth(MAIN_TOPIC).await.unwrap(), (0, 1));
    let give_up = tokio::time::Instant::now() + Duration::from_secs(10);
    while q.depth(DEAD_LETTER_TOPIC).await.unwrap() == (0, 0) {
        assert!(tokio::time::Instant::now() < give_up, "never dead-lettered");
        assert!(
            sub.pull(10, Duration::from_millis(100))
                .await
                .unwrap()
                .is_empty()
        );
    }
    assert_eq!(q.depth(MAIN_TOPIC).await.unwrap(), (0, 0));
    let attributes = dead_letter_attributes(&s);
    assert_eq!(attributes[attr::DELIVERY_ID], "stuck");
    assert_eq!(
        attributes[attr::DEAD_LETTER_REASON],
        "max_delivery_attempts"
    );
    assert_eq!(attributes[attr::DEAD_LETTER_ATTEMPTS], "2");
}

#[test]
fn a_queue_whose_segments_folder_cannot_be_made_does_not_open() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    // Where the segments' folder should be, a file.
    std::fs::write(bodies::folder(&s.path), b"in the way").unwrap();
    let e = EmbeddedQueue::open(&s, Duration::from_millis(5)).unwrap_err();
    let QueueError::Unavailable(why) = &e else {
        panic!("{e:?}")
    };
    assert!(
        why.to_string()
            .contains("cannot create the body segments' folder"),
        "{why}"
    );
}

#[tokio::test]
async fn a_hookline_from_before_segments_cannot_lease_from_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    let q = EmbeddedQueue::open(&s, Duration::from_millis(5)).unwrap();
    q.publish(&envelope("new")).await.unwrap();
    // The lease statement of the versions before: it would read the empty inline body.
    let old = Connection::open(&s.path).unwrap();
    let refused = old
        .prepare(
            "UPDATE messages SET attempts = attempts + 1, visible_at = ?1, lease = ?2
             WHERE id IN (SELECT id FROM messages WHERE topic = ?3 AND visible_at <= ?4
                          ORDER BY visible_at, id LIMIT ?5)
             RETURNING id, body, attributes, attempts",
        )
        .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("no such function: hookline_reads_body_segments"),
        "{refused}"
    );
    // Their ingest may still publish (inline), and this version delivers both.
    old.execute(
        "INSERT INTO messages (topic, body, attributes, published_at, visible_at)
         VALUES (?1, X'7B7D', '{}', 0, 0)",
        [MAIN_TOPIC],
    )
    .unwrap();
    let got = q.subscriber().pull(10, WAIT).await.unwrap();
    assert_eq!(got.len(), 2);
    let mut bodies: Vec<&[u8]> = got.iter().map(|d| &d.body[..]).collect();
    bodies.sort_unstable();
    let new = envelope("new");
    assert_eq!(bodies, [&new.body[..], &b"{}"[..]]);
}

/// Ingest and worker as two handles on one file, small segments, collection every 50 ms:
/// every body delivered is the body published, however collection interleaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collection_racing_publishes_and_acks_never_loses_a_body() {
    let dir = tempfile::tempdir().unwrap();
    let s = EmbeddedQueueSettings {
        segment_bytes: 200,
        ..settings(dir.path())
    };
    let ingest = EmbeddedQueue::open(&s, Duration::from_millis(5)).unwrap();
    let worker = EmbeddedQueue::open(&s, Duration::from_millis(5)).unwrap();
    let count = 600;
    let publishing = tokio::spawn(async move {
        for wave in 0..count / 20 {
            let mut publishes = tokio::task::JoinSet::new();
            for i in 0..20 {
                let q = ingest.clone();
                publishes.spawn(async move { q.publish(&envelope(&format!("r{wave}-{i}"))).await });
            }
            while let Some(result) = publishes.join_next().await {
                result.unwrap().unwrap();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        ingest
    });
    let sub = worker.subscriber();
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < count {
        let batch = sub.pull(16, WAIT).await.unwrap();
        assert!(
            !batch.is_empty(),
            "{} of {count} delivered, then nothing",
            seen.len()
        );
        for d in batch {
            let e = d.envelope().unwrap();
            let published = envelope(&e.meta.delivery_id);
            assert_eq!(e.body, published.body, "the body published with this id");
            assert!(seen.insert(e.meta.delivery_id));
            d.acker.ack().await.unwrap();
        }
    }
    let ingest = publishing.await.unwrap();
    assert_eq!(worker.depth(DEAD_LETTER_TOPIC).await.unwrap(), (0, 0));
    // Everything settled: only the segment ingest still appends to is left.
    let left = segments_become(&s, 1).await;
    assert_eq!(left.len(), 1, "{left:?}");
    drop(ingest);
}

/// A queue file in folders that do not exist yet: they are made (and their entries synced)
/// at open, and a folder that cannot be made fails the open with the reason.
#[tokio::test]
async fn opens_in_folders_it_makes_and_reports_one_it_cannot() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("a/b");
    let q = EmbeddedQueue::open(&settings(&nested), Duration::from_millis(5)).unwrap();
    q.publish(&envelope("d1")).await.unwrap();
    let got = q.subscriber().pull(10, WAIT).await.unwrap();
    assert_eq!(got.len(), 1);
    assert!(nested.join("q.sqlite3").is_file());

    std::fs::write(dir.path().join("taken"), b"a file").unwrap();
    let err = EmbeddedQueue::open(
        &settings(&dir.path().join("taken/c")),
        Duration::from_millis(5),
    )
    .unwrap_err();
    assert!(matches!(err, QueueError::Unavailable(_)), "{err:?}");
}
