//! Slack notifications through an incoming-webhook URL.
//!
//! Which deliveries notify is configuration ([`NotifyRule`]s; default: GitHub `issues`
//! `opened`). With no URL configured the message is logged instead, so the embedded default
//! runs with nothing set up. Classification: 429 (with `Retry-After`, clamped) and 5xx,
//! timeouts and connection errors are transient; any other 4xx is permanent (a revoked or
//! mistyped URL will not fix itself by retrying).

mod message;
mod pacer;

use std::sync::Arc;
use std::time::Duration;

use hookline_shared::config::{NotifyRule, SlackSettings};
use hookline_shared::envelope::Envelope;
use hookline_shared::sink::{Outcome, SinkError};
use reqwest::StatusCode;
use reqwest::header::RETRY_AFTER;
use secrecy::{ExposeSecret, SecretString};

pub use message::SlackMessage;
use pacer::{Busy, Pacer};

/// The longest `Retry-After` we honour in-process; longer waits go back to the queue.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct Slack {
    url: Option<SecretString>,
    rules: Vec<NotifyRule>,
    client: reqwest::Client,
    /// Shared by clones: one pace per worker process.
    pacer: Arc<Pacer>,
}

impl Slack {
    /// # Errors
    /// The HTTP client cannot be built (no TLS roots).
    pub fn new(
        settings: &SlackSettings,
        url: Option<SecretString>,
    ) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(settings.timeout_ms))
            .build()?;
        Ok(Self {
            url,
            rules: settings.notify.clone(),
            client,
            pacer: Arc::new(Pacer::new(
                Duration::from_millis(settings.min_interval_ms),
                Duration::from_millis(settings.max_pacing_wait_ms),
            )),
        })
    }

    /// The message this delivery should produce, if a rule matches.
    ///
    /// # Errors
    /// A rule matched but the payload lacks what the message needs: permanent.
    pub fn message_for(&self, envelope: &Envelope) -> Result<Option<SlackMessage>, SinkError> {
        let meta = &envelope.meta;
        let Some(event_type) = meta.event_type.as_deref() else {
            return Ok(None);
        };
        let candidates: Vec<&NotifyRule> = self
            .rules
            .iter()
            .filter(|r| {
                r.event == event_type
                    && r.provider.as_deref().is_none_or(|p| p == meta.provider)
                    && r.source.as_deref().is_none_or(|s| s == meta.source)
            })
            .collect();
        // Most deliveries match no rule: decide that before parsing the body, the costliest
        // step (an 8 KB event is a tenth of the worker's time per message when parsed).
        if candidates.is_empty() {
            return Ok(None);
        }
        let json: Option<serde_json::Value> = serde_json::from_slice(&envelope.body).ok();
        let action = json
            .as_ref()
            .and_then(|j| j.get("action"))
            .and_then(|a| a.as_str());
        let matched = candidates.iter().any(|r| {
            r.actions.is_empty() || action.is_some_and(|a| r.actions.iter().any(|x| x == a))
        });
        if !matched {
            return Ok(None);
        }
        message::build(meta, json.as_ref()).map(Some)
    }

    /// Whether a post now would be paced out (see [`Slack::post`]), reserving nothing: asked
    /// before the post's intent is recorded, so that a message sent back to the queue for
    /// pacing does not look, on its redelivery, like one that may have posted.
    ///
    /// # Errors
    /// The transient error [`Slack::post`] would return, with the wait.
    pub fn paced_out(&self) -> Result<(), SinkError> {
        if self.url.is_none() {
            return Ok(());
        }
        self.pacer
            .check(tokio::time::Instant::now())
            .map_err(|Busy(wait)| paced(wait))
    }

    /// Posts (or logs) one message.
    ///
    /// # Errors
    /// Classified as described in the module docs.
    pub async fn post(&self, msg: &SlackMessage) -> Result<Outcome, SinkError> {
        let Some(url) = &self.url else {
            tracing::info!(slack_text = %msg.text, "slack message (no webhook URL configured, logged instead)");
            return Ok(Outcome::Written);
        };
        if let Err(Busy(wait)) = self.pacer.wait_turn().await {
            return Err(paced(wait));
        }
        let response = self
            .client
            .post(url.expose_secret())
            .json(&msg.payload())
            .send()
            .await
            .map_err(|e| {
                if !e.is_connect() {
                    // Sent, or partly: Slack may have posted it without our hearing so, and
                    // trying again (in-process or on redelivery) may post it twice.
                    tracing::warn!(error = %e, "slack did not answer a post it may have received");
                    hookline_shared::metrics::inc("hookline_slack_possible_duplicates_total", &[]);
                }
                SinkError::transient("slack unreachable", e.without_url())
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(Outcome::Written);
        }
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER));
        let body = response.text().await.unwrap_or_default();
        let detail = format!(
            "slack answered {status}: {}",
            body.chars().take(200).collect::<String>()
        );
        if status == StatusCode::TOO_MANY_REQUESTS {
            self.pacer.back_off(
                tokio::time::Instant::now(),
                retry_after.unwrap_or(Duration::from_secs(1)),
            );
        }
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            Err(SinkError::Transient {
                message: detail,
                retry_after,
                source: None,
            })
        } else {
            Err(SinkError::permanent(detail, None))
        }
    }
}

/// A post that found no slot within `max_pacing_wait_ms`: back to the queue for `wait`.
fn paced(wait: Duration) -> SinkError {
    SinkError::Transient {
        message: format!("slack posts are paced; the next free slot is {wait:?} away"),
        retry_after: Some(wait),
        source: None,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use wiremock::matchers::method;
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::*;
    use crate::pipeline::tests::envelope;

    fn slack(url: Option<String>, notify: Vec<NotifyRule>) -> Slack {
        let settings = SlackSettings {
            notify,
            ..SlackSettings::default()
        };
        Slack::new(&settings, url.map(SecretString::from)).unwrap()
    }

    fn issue(action: &str) -> Envelope {
        let mut e = envelope("d1", "issues");
        e.body = Bytes::from(format!(
            r#"{{"action":"{action}","issue":{{"number":7,"title":"A <b> & c","html_url":"https://gh/i/7","user":{{"login":"bob","html_url":"https://gh/bob"}}}},"repository":{{"full_name":"o/r","html_url":"https://gh/o/r"}}}}"#
        ));
        e
    }

    #[test]
    fn default_rule_selects_opened_issues_only() {
        let s = slack(None, SlackSettings::default().notify);
        let msg = s.message_for(&issue("opened")).unwrap().unwrap();
        assert_eq!(
            msg.text,
            "New issue in o/r: #7 A &lt;b&gt; &amp; c by bob https://gh/i/7"
        );
        assert_eq!(
            msg.blocks[0]["text"]["text"],
            "*New issue in <https://gh/o/r|o/r>*\n<https://gh/i/7|#7 A &lt;b&gt; &amp; c>"
        );
        assert_eq!(s.message_for(&issue("closed")).unwrap(), None);
        assert_eq!(s.message_for(&envelope("d2", "push")).unwrap(), None);
    }

    #[test]
    fn rules_filter_by_provider_source_and_action() {
        let rule = |provider: Option<&str>, source: Option<&str>, actions: &[&str]| NotifyRule {
            provider: provider.map(Into::into),
            source: source.map(Into::into),
            event: "issues".into(),
            actions: actions.iter().map(|a| a.to_string()).collect(),
        };
        let closed = issue("closed");
        assert!(
            slack(None, vec![rule(None, None, &[])])
                .message_for(&closed)
                .unwrap()
                .is_some()
        );
        assert!(
            slack(None, vec![rule(Some("github"), Some("gh"), &["closed"])])
                .message_for(&closed)
                .unwrap()
                .is_some()
        );
        assert!(
            slack(None, vec![rule(Some("slack"), None, &[])])
                .message_for(&closed)
                .unwrap()
                .is_none()
        );
        assert!(
            slack(None, vec![rule(None, Some("other"), &[])])
                .message_for(&closed)
                .unwrap()
                .is_none()
        );
        let msg = slack(None, vec![rule(None, None, &[])])
            .message_for(&closed)
            .unwrap()
            .unwrap();
        assert!(msg.text.starts_with("Issue closed in o/r"), "{}", msg.text);
    }

    #[test]
    fn a_matching_event_without_the_fields_is_a_permanent_failure() {
        let mut e = issue("opened");
        e.body = Bytes::from_static(br#"{"action":"opened","issue":{}}"#);
        let err = slack(None, SlackSettings::default().notify)
            .message_for(&e)
            .unwrap_err();
        assert!(!err.is_transient());
    }

    async fn post_with(status: u16, retry_after: Option<&str>) -> Result<Outcome, SinkError> {
        let server = MockServer::start().await;
        let mut response = ResponseTemplate::new(status).set_body_string("rate_limited");
        if let Some(after) = retry_after {
            response = response.insert_header("Retry-After", after);
        }
        Mock::given(method("POST"))
            .respond_with(response)
            .expect(1)
            .mount(&server)
            .await;
        let s = slack(
            Some(format!("{}/hook", server.uri())),
            SlackSettings::default().notify,
        );
        let msg = s.message_for(&issue("opened")).unwrap().unwrap();
        s.post(&msg).await
    }

    #[tokio::test]
    async fn http_answers_are_classified() {
        assert_eq!(post_with(200, None).await.unwrap(), Outcome::Written);
        match post_with(429, Some("3")).await.unwrap_err() {
            SinkError::Transient { retry_after, .. } => {
                assert_eq!(retry_after, Some(Duration::from_secs(3)))
            }
            other => panic!("429 must be transient: {other}"),
        }
        match post_with(429, Some("3600")).await.unwrap_err() {
            SinkError::Transient { retry_after, .. } => {
                assert_eq!(retry_after, Some(MAX_RETRY_AFTER))
            }
            other => panic!("429 must be transient: {other}"),
        }
        assert!(post_with(503, None).await.unwrap_err().is_transient());
        assert!(!post_with(404, None).await.unwrap_err().is_transient());
        assert!(!post_with(400, None).await.unwrap_err().is_transient());
    }

    #[tokio::test]
    async fn unreachable_slack_is_transient() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let s = slack(
            Some(format!("http://127.0.0.1:{port}/hook")),
            SlackSettings::default().notify,
        );
        let msg = s.message_for(&issue("opened")).unwrap().unwrap();
        assert!(s.post(&msg).await.unwrap_err().is_transient());
    }

    /// Records when each request arrived.
    struct Clock(Arc<std::sync::Mutex<Vec<std::time::Instant>>>);

    impl wiremock::Respond for Clock {
        fn respond(&self, _: &wiremock::Request) -> ResponseTemplate {
            self.0.lock().unwrap().push(std::time::Instant::now());
            ResponseTemplate::new(200)
        }
    }

    #[tokio::test]
    async fn posts_are_paced_and_a_long_backlog_goes_back_to_the_queue() {
        let server = MockServer::start().await;
        let arrivals = Arc::new(std::sync::Mutex::new(Vec::new()));
        Mock::given(method("POST"))
            .respond_with(Clock(arrivals.clone()))
            .mount(&server)
            .await;
        let settings = SlackSettings {
            min_interval_ms: 200,
            max_pacing_wait_ms: 500,
            ..SlackSettings::default()
        };
        let s = Slack::new(&settings, Some(format!("{}/hook", server.uri()).into())).unwrap();
        let msg = s.message_for(&issue("opened")).unwrap().unwrap();
        // Four posts at once: three get slots 0, 200 and 400 ms; the fourth would wait
        // 600 ms > 500 ms and is handed back with that wait as Retry-After.
        let (a, b, c, d) = tokio::join!(s.post(&msg), s.post(&msg), s.post(&msg), s.post(&msg));
        let outcomes = [a, b, c, d];
        let busy: Vec<_> = outcomes.iter().filter(|o| o.is_err()).collect();
        assert_eq!(busy.len(), 1, "{outcomes:?}");
        match busy[0] {
            Err(SinkError::Transient { retry_after, .. }) => {
                // 600 ms from the first post's clock read, a little less from its own.
                let wait = retry_after.expect("a wait");
                assert!(
                    wait > Duration::from_millis(500) && wait <= Duration::from_millis(600),
                    "{wait:?}"
                );
            }
            other => panic!("a full pace must be transient: {other:?}"),
        }
        let mut times = arrivals.lock().unwrap().clone();
        times.sort();
        assert_eq!(times.len(), 3);
        for pair in times.windows(2) {
            // Slots are exactly 200 ms apart; allow for the clock read in the responder.
            assert!(
                pair[1] - pair[0] >= Duration::from_millis(190),
                "posts {:?} apart",
                pair[1] - pair[0]
            );
        }
    }

    /// A post Slack may have received but did not answer in time is a transient failure,
    /// and counted as a possible duplicate (trying again may post it twice); one that never
    /// reached Slack (nothing listening) is not counted.
    #[tokio::test]
    async fn an_unanswered_post_counts_as_a_possible_duplicate_an_unsent_one_not() {
        use crate::pipeline::tests::{POSSIBLE_DUPLICATES, possible_duplicates};
        let _turn = POSSIBLE_DUPLICATES.lock().await;
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(2)))
            .mount(&server)
            .await;
        let settings = SlackSettings {
            timeout_ms: 200,
            ..SlackSettings::default()
        };
        let msg = slack(None, SlackSettings::default().notify)
            .message_for(&issue("opened"))
            .unwrap()
            .unwrap();
        let before = possible_duplicates();
        let slow = Slack::new(&settings, Some(format!("{}/hook", server.uri()).into())).unwrap();
        let err = slow.post(&msg).await.unwrap_err();
        assert!(err.is_transient(), "{err:?}");
        assert_eq!(possible_duplicates(), before + 1);
        // Nothing listens there: the post never left.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let nowhere = Slack::new(
            &settings,
            Some(format!("http://127.0.0.1:{port}/hook").into()),
        )
        .unwrap();
        assert!(nowhere.post(&msg).await.unwrap_err().is_transient());
        assert_eq!(possible_duplicates(), before + 1);
    }
}
