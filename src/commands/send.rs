//! `hookline send`: act as a configured source's provider. Reads a payload file, signs it
//! with the source's first secret exactly as the provider would (including the headers
//! that carry the event type and delivery id, such as `X-GitHub-Event` and
//! `X-GitHub-Delivery`), posts it, and prints the answer.

use std::path::PathBuf;

use anyhow::Context as _;
use chrono::Utc;
use hookline_shared::config::Settings;
use secrecy::ExposeSecret as _;

#[derive(Debug, clap::Args)]
pub struct SendArgs {
    /// The configured source to send as (`POST /hooks/{source}`).
    #[arg(long)]
    source: String,
    /// The payload file, sent byte for byte.
    #[arg(long)]
    file: PathBuf,
    /// The event type, for providers that carry it in a header (GitHub: X-GitHub-Event).
    #[arg(long, default_value = "issues")]
    event: String,
    /// The delivery id, for providers that carry it in a header. Default: a new UUID.
    #[arg(long)]
    delivery_id: Option<String>,
    /// Content-Type of the request.
    #[arg(long, default_value = "application/json")]
    content_type: String,
    /// Base URL of the ingest service. Default: http://127.0.0.1:{server.port}.
    #[arg(long)]
    url: Option<String>,
}

pub async fn run(settings: &Settings, args: SendArgs) -> anyhow::Result<()> {
    let sources = settings
        .resolve_sources(|var| std::env::var(var).ok())
        .context("resolving sources")?;
    let source = sources
        .get(&args.source)
        .with_context(|| format!("no source named `{}` in the configuration", args.source))?;
    let body =
        std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let secret = source.secrets[0].expose_secret();
    let delivery_id = args
        .delivery_id
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());

    let headers = source
        .provider
        .sign(secret, &body, Utc::now(), &delivery_id, &args.event);

    let base = args
        .url
        .unwrap_or_else(|| format!("http://127.0.0.1:{}", settings.server.port));
    let url = format!("{}/hooks/{}", base.trim_end_matches('/'), args.source);
    let mut request = reqwest::Client::new()
        .post(&url)
        .header("Content-Type", &args.content_type)
        .body(body);
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("posting to {url}"))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    println!("{status} {text}");
    anyhow::ensure!(
        status.is_success(),
        "ingest refused the delivery ({status})"
    );
    Ok(())
}
