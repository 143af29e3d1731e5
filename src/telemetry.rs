//! Log output. `RUST_LOG` filters (default `info`); secrets and bodies are never logged by
//! hookline's own code, whatever the level.
//!
//! `gcp` writes one JSON object per line in the shape Cloud Logging reads: `severity`,
//! `message`, `time`, the event's fields, the fields of every enclosing span (so
//! `request_id` and `delivery_id` are on every line of a request or a message), and
//! `logging.googleapis.com/trace` when the request carried a trace header.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    Pretty,
    Json,
    /// Cloud Logging's structured JSON (use on Cloud Run).
    Gcp,
}

/// Installs the global subscriber. `project` names the trace resource for `gcp`.
pub fn init(format: Format, project: Option<String>) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        Format::Pretty => builder.init(),
        Format::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
        Format::Gcp => builder
            .fmt_fields(JsonFields::new())
            .event_format(CloudLogging { project })
            .init(),
    }
}

/// The Cloud Logging event format.
pub struct CloudLogging {
    project: Option<String>,
}

fn severity(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARNING",
        Level::INFO => "INFO",
        Level::DEBUG | Level::TRACE => "DEBUG",
    }
}

struct Fields<'a>(&'a mut Map<String, Value>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), format!("{value:?}").into());
    }
}

impl<S, N> FormatEvent<S, N> for CloudLogging
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut out = Map::new();
        // Span fields first, outermost to innermost, so the event's own fields win.
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                if let Some(fields) = span.extensions().get::<FormattedFields<N>>()
                    && let Ok(Value::Object(map)) = serde_json::from_str::<Value>(fields)
                {
                    out.extend(map);
                }
            }
        }
        event.record(&mut Fields(&mut out));
        let meta = event.metadata();
        out.insert("severity".into(), severity(meta.level()).into());
        out.insert("time".into(), chrono::Utc::now().to_rfc3339().into());
        out.insert("target".into(), meta.target().into());
        if let Some(Value::String(trace)) = out.remove("trace_id")
            && let Some(project) = &self.project
        {
            out.insert(
                "logging.googleapis.com/trace".into(),
                format!("projects/{project}/traces/{trace}").into(),
            );
        }
        let line = serde_json::to_string(&Value::Object(out)).map_err(|_| fmt::Error)?;
        writeln!(writer, "{line}")
    }
}
