# Publishes the benchmark's payload to the Pub/Sub emulator in batches of exactly --batch
# messages, so that bench/run.py can measure the emulator's own CPU per message at each batch
# size (its "pubsub-floor" step). The emulator costs a lot per publish request and little per
# message in it; contenders (3) and (4) can only batch what is waiting at once, so this says
# how fast either could go on this machine whatever the client does.
#
# Runs in bench/run.sh's venv (google-cloud-pubsub). A topic with one subscription, as the
# ingest benchmarks publish to, so the emulator stores each message as it does there; both are
# deleted at the end. Prints one JSON line: {"seconds": ...}.
import argparse
import json
import os
import time

from google.cloud import pubsub_v1
from google.cloud.pubsub_v1.types import BatchSettings

p = argparse.ArgumentParser()
p.add_argument("--payload", required=True)
p.add_argument("--topic", required=True, help="short name; created, then deleted")
p.add_argument("--batch", type=int, required=True)
p.add_argument("--count", type=int, required=True)
a = p.parse_args()

project = os.environ["GOOGLE_CLOUD_PROJECT"]
body = open(a.payload, "rb").read()
# A batch goes out when it holds --batch messages; the latency bound only flushes the last.
publisher = pubsub_v1.PublisherClient(
    BatchSettings(max_messages=a.batch, max_bytes=9_000_000, max_latency=0.5))
subscriber = pubsub_v1.SubscriberClient()
topic = publisher.topic_path(project, a.topic)
subscription = subscriber.subscription_path(project, a.topic + "-sub")
publisher.create_topic(name=topic)
subscriber.create_subscription(name=subscription, topic=topic)
try:
    started = time.monotonic()
    futures = [publisher.publish(topic, body, n=str(i)) for i in range(a.count)]
    for f in futures:
        f.result(timeout=300)
    seconds = time.monotonic() - started
finally:
    subscriber.delete_subscription(subscription=subscription)
    publisher.delete_topic(topic=topic)
print(json.dumps({"seconds": seconds}))
