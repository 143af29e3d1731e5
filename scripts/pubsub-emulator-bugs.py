#!/usr/bin/env python3
"""Shows three Pub/Sub emulator bugs met by the Google Cloud fault run (tests/faults).

    source target/emulators/env    # or any PUBSUB_EMULATOR_HOST
    target/bench/venv/bin/python scripts/pubsub-emulator-bugs.py

Needs google-cloud-pubsub (bench/run.sh puts it in target/bench/venv). Creates resources in
a project of its own ("emulator-bugs") and prints, for each bug, whether this emulator has it.
Neither is hookline's; real Pub/Sub has neither. Both were read from the emulator's bytecode
(0.8.20, google-cloud-cli-pubsub-emulator 528) and reproduced here with Google's own client.

1. Streams of killed clients live on. A streaming-pull client is SIGKILLed; the emulator
   keeps pushing messages to its stream, which never settles them (each comes back after the
   ack deadline, to be taken again). A live subscriber then misses most new messages.
2. The retry-policy delay queue dies. With a retry policy, a message nacked on its second
   attempt or later waits in a delay queue. If one ack id is queued twice (here: a nack
   followed by an ack of the same id), the timer that drains the queue throws a
   NullPointerException and is never scheduled again: no message of that subscription nacked
   on its second attempt or later is ever delivered again.
3. Flow control is ignored. A streaming pull that allows 5 outstanding messages is sent the
   whole backlog. hookline copes (its subscription leases everything it is sent, see
   shared/src/queue/pubsub.rs); a client that leaves the surplus unread sees it expire and
   come back, attempt after attempt, toward the dead-letter topic.
"""
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

from google.pubsub_v1 import PublisherClient, StreamingPullRequest, SubscriberClient

PROJECT = "projects/emulator-bugs"
pub, sub = PublisherClient(), SubscriberClient()


def fresh(retry_policy: bool) -> tuple[str, str]:
    name = uuid.uuid4().hex[:10]
    topic, path = f"{PROJECT}/topics/t{name}", f"{PROJECT}/subscriptions/s{name}"
    pub.create_topic(name=topic)
    req = {"name": path, "topic": topic, "ack_deadline_seconds": 10}
    if retry_policy:
        req["retry_policy"] = {"minimum_backoff": {"seconds": 1}, "maximum_backoff": {"seconds": 5}}
    sub.create_subscription(request=req)
    return topic, path


def pull(path: str) -> list:
    r = sub.pull(request={"subscription": path, "max_messages": 10, "return_immediately": True})
    return list(r.received_messages)


def nack(path: str, ack_ids: list) -> None:
    sub.modify_ack_deadline(
        request={"subscription": path, "ack_ids": ack_ids, "ack_deadline_seconds": 0}
    )


def comes_back(path: str, within: float) -> bool:
    end = time.time() + within
    while time.time() < end:
        got = pull(path)
        if got:
            sub.acknowledge(request={"subscription": path, "ack_ids": [m.ack_id for m in got]})
            return True
        time.sleep(0.3)
    return False


def killed_streams_live_on() -> bool:
    topic, path = fresh(retry_policy=False)
    # Three clients open a stream and are SIGKILLed (a child process each).
    hold = (
        "import time; from google.pubsub_v1 import SubscriberClient, StreamingPullRequest as R\n"
        "def reqs():\n"
        f"    yield R(subscription='{path}', stream_ack_deadline_seconds=10)\n"
        "    time.sleep(3600)\n"
        "for _ in SubscriberClient().streaming_pull(requests=reqs()): pass\n"
    )
    for _ in range(3):
        child = subprocess.Popen([sys.executable, "-c", hold], stderr=subprocess.DEVNULL)
        time.sleep(1.5)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    # A live subscriber acks whatever it gets while 20 messages are published.
    got = set()
    stop = threading.Event()

    def reqs():
        yield StreamingPullRequest(subscription=path, stream_ack_deadline_seconds=10)
        stop.wait(30)

    def live():
        try:
            for resp in sub.streaming_pull(requests=reqs(), timeout=30):
                got.update(m.message.message_id for m in resp.received_messages)
                ids = [m.ack_id for m in resp.received_messages]
                sub.acknowledge(request={"subscription": path, "ack_ids": ids})
        except Exception:  # the stream's own deadline ends it
            pass

    t = threading.Thread(target=live)
    t.start()
    sent = [pub.publish(topic=topic, messages=[{"data": b"m"}]).message_ids[0] for _ in range(20)]
    t.join()
    missed = len([m for m in sent if m not in got])
    print(f"1. live subscriber received {20 - missed} of 20 messages in 30 s")
    return missed > 0


def delay_queue_dies() -> bool:
    _, path = fresh(retry_policy=True)
    topic = path.replace("/subscriptions/s", "/topics/t")

    def to_second_attempt() -> str:
        pub.publish(topic=topic, messages=[{"data": b"m"}])
        time.sleep(0.3)
        nack(path, [m.ack_id for m in pull(path)])  # first attempt: back at once
        time.sleep(0.3)
        return pull(path)[0].ack_id

    ack_id = to_second_attempt()
    nack(path, [ack_id])
    healthy_before = comes_back(path, 10)
    ack_id = to_second_attempt()
    nack(path, [ack_id])
    sub.acknowledge(request={"subscription": path, "ack_ids": [ack_id]})  # the trigger
    time.sleep(7)
    ack_id = to_second_attempt()
    nack(path, [ack_id])
    healthy_after = comes_back(path, 20)
    print(
        f"2. a message nacked on its second attempt came back: before the trigger "
        f"{healthy_before}, after it {healthy_after}"
    )
    return healthy_before and not healthy_after


def flow_control_ignored() -> bool:
    topic, path = fresh(retry_policy=False)
    pub.publish(topic=topic, messages=[{"data": str(i).encode()} for i in range(50)])
    got = 0

    def reqs():
        yield StreamingPullRequest(
            subscription=path, stream_ack_deadline_seconds=10, max_outstanding_messages=5
        )
        time.sleep(5)

    try:
        for resp in sub.streaming_pull(requests=reqs(), timeout=5):
            got += len(resp.received_messages)
    except Exception:  # the stream's own deadline ends it
        pass
    print(f"3. a stream allowing 5 outstanding messages, none acked, was sent {got} of 50")
    return got > 5


if __name__ == "__main__":
    if not os.environ.get("PUBSUB_EMULATOR_HOST"):
        sys.exit("PUBSUB_EMULATOR_HOST is not set (source target/emulators/env)")
    one = killed_streams_live_on()
    two = delay_queue_dies()
    three = flow_control_ignored()
    print(f"bug 1 (streams of killed clients live on): {'present' if one else 'absent'}")
    print(f"bug 2 (the retry-policy delay queue dies): {'present' if two else 'absent'}")
    print(f"bug 3 (streaming pull's flow control is ignored): {'present' if three else 'absent'}")
