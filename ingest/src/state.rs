//! State shared by every request handler.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use hookline_shared::config::{ServerSettings, Source};
use hookline_shared::queue::Publisher;
use tokio::sync::Semaphore;

/// The time source; tests substitute a fixed clock to exercise replay windows.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// Built once at start; cloned (cheaply) into each actix worker.
#[derive(Clone)]
pub struct AppState {
    pub sources: Arc<BTreeMap<String, Source>>,
    pub publisher: Arc<dyn Publisher>,
    pub server: Arc<ServerSettings>,
    pub clock: Clock,
    /// One permit per webhook request in progress (`server.max_concurrent_requests`).
    pub permits: Arc<Semaphore>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("sources", &self.sources.keys().collect::<Vec<_>>())
            .field("publisher", &self.publisher)
            .finish_non_exhaustive()
    }
}

impl AppState {
    pub fn new(
        sources: BTreeMap<String, Source>,
        publisher: Arc<dyn Publisher>,
        server: ServerSettings,
    ) -> Self {
        Self {
            sources: Arc::new(sources),
            publisher,
            permits: Arc::new(Semaphore::new(server.max_concurrent_requests)),
            server: Arc::new(server),
            clock: Arc::new(hookline_shared::envelope::now_millis),
        }
    }
}
