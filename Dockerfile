# hookline: one image for every role. The binary's subcommand picks it: `ingest` (the
# default CMD), `worker`, `provision`, `dev`. Both Cloud Run services run this image with
# a different argument (infra/terraform/run.tf), and so do the compose services
# (docker-compose.yml). One image means ingest and worker always share the same build of the
# envelope format, the config keys and the schema, and a release is one build, one scan, one
# push.
#
#   docker build -t hookline .
#   docker run --rm -p 8080:8080 hookline ingest
#
# Cloud Run sets PORT; the logs are Cloud Logging JSON (HOOKLINE_LOG_FORMAT=gcp). Locally,
# override with -e HOOKLINE_LOG_FORMAT=pretty.

ARG RUST_VERSION=1.95

# ---------------------------------------------------------------------------- builder --
FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src

# Dependencies first, from the manifests and the lockfile alone, with empty stand-ins for
# the workspace's own sources: this layer is rebuilt only when a Cargo.toml or Cargo.lock
# changes, not on every source edit. (The [[test]] paths the manifests name get stand-ins
# too, so Cargo can read them.)
COPY Cargo.toml Cargo.lock ./
COPY shared/Cargo.toml shared/Cargo.toml
COPY ingest/Cargo.toml ingest/Cargo.toml
COPY worker/Cargo.toml worker/Cargo.toml
RUN set -eu; \
    for crate in . shared ingest worker; do \
        mkdir -p "$crate/src" && touch "$crate/src/lib.rs"; \
        for path in $(sed -n 's/^path = "\(tests\/[^"]*\)"$/\1/p' "$crate/Cargo.toml"); do \
            mkdir -p "$crate/$(dirname "$path")" && touch "$crate/$path"; \
        done; \
    done; \
    echo 'fn main() {}' > src/main.rs; \
    cargo build --release --locked --bin hookline

# The real sources. COPY keeps the files' own timestamps, which may be older than the
# stand-ins just built: touch them so Cargo rebuilds the workspace crates.
COPY src src
COPY shared shared
COPY ingest ingest
COPY worker worker
# The table schema and the view definitions are compiled in (include_str!).
COPY infra/bigquery infra/bigquery
COPY infra/sql infra/sql
RUN find src shared/src ingest/src worker/src -name '*.rs' -exec touch {} + \
    && cargo build --release --locked --bin hookline \
    && ./target/release/hookline --version

# ---------------------------------------------------------------------------- runtime --
FROM debian:bookworm-slim AS runtime

# CA certificates for TLS to Google APIs and Slack.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# An unprivileged user; its home is the working directory, where `hookline dev` would keep
# its embedded engines' ./data.
RUN groupadd --system --gid 10001 hookline \
    && useradd --system --uid 10001 --gid hookline --home-dir /var/lib/hookline \
       --create-home --shell /usr/sbin/nologin hookline
WORKDIR /var/lib/hookline

COPY --from=builder /src/target/release/hookline /usr/local/bin/hookline

USER 10001:10001
ENV HOOKLINE_LOG_FORMAT=gcp PORT=8080
EXPOSE 8080
ENTRYPOINT ["hookline"]
CMD ["ingest"]
