//! End-to-end tests on the Google Cloud engines, against real emulators: Google's Pub/Sub
//! emulator, fake-gcs-server and bqemulator. They need the emulators running and their
//! variables set; `scripts/test.sh` does both. Without them every test here fails at once,
//! naming the command to run; none is skipped.

mod analytics;
mod dead_letter;
mod pipeline;
mod provisioning;
mod push;
mod replay;
mod replay_archive;
mod support;
