//! Push mode: Pub/Sub pushes to the worker's `POST /pubsub/push`. End to end with the
//! emulator (which attaches no token, so verification is off there), and the token checks
//! against a local key set: refused requests are answered 401 and reach no sink.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use hookline_shared::queue::pubsub::{Connection, DeadLetterTopic};
use hookline_worker::Pipeline;
use hookline_worker::push::PushState;
use hookline_worker::push::oidc::OidcVerifier;
use jsonwebtoken::{EncodingKey, Header};
use tokio::sync::oneshot;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::*;

const SIGNING_KEY: &[u8] = include_bytes!("../fixtures/oidc/signing-key.pem");
const OTHER_KEY: &[u8] = include_bytes!("../fixtures/oidc/other-key.pem");
const JWKS: &str = include_str!("../fixtures/oidc/jwks.json");
const AUDIENCE: &str = "https://hookline-worker.example";
const PUSHER: &str = "pusher@hookline-test.iam.gserviceaccount.com";

async fn spawn_push_worker(
    env: &GcpEnv,
    verifier: Option<OidcVerifier>,
) -> (u16, oneshot::Sender<()>) {
    let pipeline = Pipeline::from_settings(&env.settings, None).await.unwrap();
    let connection = Connection::from_settings(&env.settings).unwrap();
    let dead_letter =
        DeadLetterTopic::open(&connection, &env.settings.queue.pubsub.dead_letter_topic)
            .await
            .unwrap();
    let state = PushState {
        pipeline: Arc::new(pipeline),
        dead_letter,
        verifier: verifier.map(Arc::new),
    };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = oneshot::channel();
    tokio::spawn(hookline_worker::http::run(listener, Some(state), async {
        let _ = rx.await;
    }));
    (port, tx)
}

#[tokio::test]
async fn the_emulator_pushes_to_the_worker_and_the_sinks_fill() {
    let env = GcpEnv::new("");
    env.provision();
    let (port, stop) = spawn_push_worker(&env, None).await;
    // A push subscription on the topic, to the worker's endpoint.
    let sub = format!("push-{}", env.suffix);
    let resp = reqwest::Client::new()
        .put(format!(
            "{}/v1/projects/{PROJECT}/subscriptions/{sub}",
            env.settings.queue.pubsub.endpoint.as_deref().unwrap()
        ))
        .json(&serde_json::json!({
            "topic": format!("projects/{PROJECT}/topics/{}", env.settings.queue.pubsub.topic),
            "pushConfig": { "pushEndpoint": format!("http://127.0.0.1:{port}/pubsub/push") },
            "ackDeadlineSeconds": 30,
        }))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.text().await.unwrap());

    let (url, ingest) = spawn_ingest(&env).await;
    let body = ISSUES_OPENED.as_bytes().to_vec();
    let (status, _, _) = post(
        &format!("{url}/hooks/gh"),
        &github_headers(&body, "issues", "pushed-1"),
        body.clone(),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        wait_for(Duration::from_secs(30), async || env
            .query("SELECT count(*) FROM {ds}.events")
            .await[0][0]
            .as_deref()
            == Some("1"))
        .await,
        "the pushed message never reached BigQuery"
    );
    let objects = env.objects().await;
    assert_eq!(objects.len(), 1);
    assert!(objects[0].0.ends_with("_pushed-1"));
    let _ = stop.send(());
    ingest.stop().await.unwrap();
}

fn token(key: &[u8], audience: &str, email: &str) -> String {
    let now = chrono::Utc::now().timestamp();
    let mut header = Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("test-key-1".into());
    let claims = serde_json::json!({
        "iss": "https://accounts.google.com", "aud": audience, "email": email,
        "email_verified": true, "iat": now, "exp": now + 600,
    });
    format!(
        "Bearer {}",
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_rsa_pem(key).unwrap()).unwrap()
    )
}

fn push_body(delivery: &str) -> serde_json::Value {
    let attributes = serde_json::json!({
        "source": "gh", "provider": "github", "event_type": "push", "delivery_id": delivery,
        "received_at": "2026-11-22T10:00:00.000Z", "request_id": "r-1", "content_type": "application/json",
    });
    serde_json::json!({
        "message": {
            "data": base64::engine::general_purpose::STANDARD.encode(br#"{"ref":"refs/heads/main"}"#),
            "attributes": attributes,
            "messageId": "m-1",
        },
        "subscription": "projects/hookline-test/subscriptions/push",
        "deliveryAttempt": 1,
    })
}

#[tokio::test]
async fn push_tokens_are_verified_and_refused_requests_reach_nothing() {
    let env = GcpEnv::new("");
    env.provision();
    let keys = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/certs"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(JWKS, "application/json"))
        .mount(&keys)
        .await;
    let mut push = env.settings.worker.push.clone();
    push.audience = AUDIENCE.into();
    push.service_account_email = PUSHER.into();
    push.jwks_url = format!("{}/certs", keys.uri());
    let (port, stop) = spawn_push_worker(&env, Some(OidcVerifier::new(push))).await;
    let endpoint = format!("http://127.0.0.1:{port}/pubsub/push");
    let client = reqwest::Client::new();
    let send = async |auth: Option<String>, delivery: &str| {
        let mut req = client.post(&endpoint).json(&push_body(delivery));
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        req.send().await.unwrap().status().as_u16()
    };
    for (name, auth) in [
        ("missing", None),
        (
            "wrong audience",
            Some(token(SIGNING_KEY, "https://elsewhere.example", PUSHER)),
        ),
        ("bad signature", Some(token(OTHER_KEY, AUDIENCE, PUSHER))),
        (
            "another identity",
            Some(token(SIGNING_KEY, AUDIENCE, "intruder@example.com")),
        ),
    ] {
        assert_eq!(send(auth, &format!("refused-{name}")).await, 401, "{name}");
    }
    assert!(
        env.objects().await.is_empty(),
        "refused pushes reach no sink"
    );
    assert_eq!(
        send(Some(token(SIGNING_KEY, AUDIENCE, PUSHER)), "accepted-1").await,
        204
    );
    let objects = env.objects().await;
    assert_eq!(objects.len(), 1);
    assert!(objects[0].0.ends_with("_accepted-1"), "{objects:?}");
    let _ = stop.send(());
}
