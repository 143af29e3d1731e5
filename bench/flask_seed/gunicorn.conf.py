# Comparison only — not part of hookline.
#
# Gunicorn settings for the seeds' Flask receiver (bench/flask_seed/app.py) on a small
# machine. Gunicorn's documented starting point is (2 x cores) + 1 workers; each request
# spends most of its time waiting for Pub/Sub to confirm the publish (I/O), so every
# worker also runs threads (gthread) to keep several publishes in flight per process:
# 2 cores -> 5 workers x 4 threads = 20 requests in progress at once.
import multiprocessing
import os

bind = os.environ.get("BENCH_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("BENCH_GUNICORN_WORKERS", 2 * multiprocessing.cpu_count() + 1))
worker_class = "gthread"
threads = int(os.environ.get("BENCH_GUNICORN_THREADS", 4))
keepalive = 5
timeout = 60
graceful_timeout = 5
accesslog = None
loglevel = "warning"
