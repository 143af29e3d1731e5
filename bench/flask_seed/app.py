# Comparison only — not part of hookline.
#
# The seeds' design (shared/seeds 001 and 002: a Flask webhook target on Cloud Run that
# verifies GitHub's signature with hmac.compare_digest and hands the event to Pub/Sub),
# reproduced as a baseline for bench/run.py (contender 4 in BENCHMARKS.md). It is not
# shipped, tested or supported; it exists so the benchmark compares hookline with the
# design it replaces, under the same load, against the same Pub/Sub emulator and topic.
#
# Faithful to the seeds: Flask, verify the signature, publish the raw body with the
# official client (google-cloud-pubsub, default settings), wait for the publish to be
# confirmed (future.result()) and only then answer 200.
# Deviations, each in the seed's favour or required by the issue:
#   - X-Hub-Signature-256 / HMAC-SHA256 instead of the seed's X-Hub-Signature / SHA-1;
#   - the seed's `hmac.compare_digest(signature)` (one argument, a bug) compares the
#     expected and received signatures here;
#   - the secret is read once from the environment at start, where the seed fetches it from
#     Secret Manager on every request.
import hashlib
import hmac
import os

from flask import Flask, request
from google.cloud import pubsub_v1

SECRET = os.environ["BENCH_SECRET"].encode()
TOPIC = os.environ["BENCH_TOPIC"]  # projects/{project}/topics/{topic}

app = Flask(__name__)
# One client per gunicorn worker process (the module is imported after the fork).
publisher = pubsub_v1.PublisherClient()


def verify_signature(signature, data):
    expected = "sha256=" + hmac.new(SECRET, data, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature or "")


@app.route("/hooks/github", methods=["POST"])
def index():
    signature = request.headers.get("X-Hub-Signature-256")
    data = request.get_data()
    if not verify_signature(signature, data):
        return ("bad signature", 401)
    future = publisher.publish(
        TOPIC,
        data,
        event_type=request.headers.get("X-GitHub-Event", ""),
        delivery_id=request.headers.get("X-GitHub-Delivery", ""),
    )
    future.result(timeout=30)
    return ("", 200)


@app.route("/healthz", methods=["GET"])
def healthz():
    return ("ok", 200)
