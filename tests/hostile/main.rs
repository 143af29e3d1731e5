//! Hostile input: a webhook URL is public, so anyone can send anything to it. Every case is
//! refused with its expected status and error code, and nothing is enqueued; a validly
//! signed JSON bomb is accepted without harm. All log output of the suite is captured and
//! must contain no configured secret and no request body.

use std::io::Write;
use std::net::TcpListener;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chrono::Utc;
use hookline_ingest::AppState;
use hookline_shared::config::Settings;
use hookline_shared::queue::embedded::{EmbeddedQueue, MAIN_TOPIC};
use hookline_shared::verify::Provider;
use tokio::sync::oneshot;

const SECRETS: [(&str, &str); 8] = [
    ("gh", "gh-secret-Zq81vX"),
    ("fx", "fx-secret-Nb42qW"),
    ("sl", "sl-secret-Pw55kR"),
    ("st", "whsec_st-secret-Hy27mN"),
    ("sh", "sh-secret-Lk90tB"),
    ("sw", "whsec_c3ctc2VjcmV0LVZ1NDRhQy0yNGJ5dGVzIQ=="),
    ("hm", "hm-secret-Ju61cD"),
    ("ss", "ss-secret-Ox38eF"),
];

fn secret(source: &str) -> &'static str {
    SECRETS.iter().find(|(s, _)| *s == source).unwrap().1
}

fn config(dir: &std::path::Path) -> String {
    let d = dir.display();
    let s = |name| secret(name);
    format!(
        r#"
[server]
host = "127.0.0.1"
max_body_bytes = 65536
body_read_timeout_ms = 2000
[queue.embedded]
path = "{d}/queue.sqlite3"
[sources.gh]
provider = "github"
secrets = ["{}"]
[sources.fx]
provider = "flexport"
secrets = ["{}"]
[sources.sl]
provider = "slack"
secrets = ["{}"]
[sources.st]
provider = "stripe"
secrets = ["{}"]
[sources.sh]
provider = "shopify"
secrets = ["{}"]
[sources.sw]
provider = "standard_webhooks"
secrets = ["{}"]
[sources.hm]
provider = "hmac"
header = "X-Sig"
algorithm = "sha512"
encoding = "base64"
prefix = "sha512="
timestamp_header = "X-Ts"
signed_content = "{{timestamp}}.{{body}}"
delivery_id_header = "X-Id"
secrets = ["{}"]
[sources.ss]
provider = "shared_secret"
header = "X-Token"
secrets = ["{}"]
"#,
        s("gh"),
        s("fx"),
        s("sl"),
        s("st"),
        s("sh"),
        s("sw"),
        s("hm"),
        s("ss")
    )
}

/// Everything every test in this binary logs, at debug level and above.
fn captured() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&buf);
        tracing_subscriber::fmt()
            .with_env_filter("debug")
            .with_ansi(false)
            .with_writer(move || Capture(Arc::clone(&sink)))
            .init();
        buf
    })
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Running {
    url: String,
    queue: EmbeddedQueue,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    _dir: tempfile::TempDir,
}

async fn start() -> Running {
    captured();
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings::from_parts(&config(dir.path()), []).unwrap();
    let queue = EmbeddedQueue::open(&settings.queue.embedded, Duration::from_millis(10)).unwrap();
    let sources = settings.resolve_sources(|_| None).unwrap();
    let state = AppState::new(sources, Arc::new(queue.clone()), settings.server.clone());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, rx) = oneshot::channel();
    let task = tokio::spawn(hookline_ingest::run(listener, state, 1, async {
        let _ = rx.await;
    }));
    Running {
        url,
        queue,
        stop,
        task,
        _dir: dir,
    }
}

type Headers = Vec<(String, String)>;

/// Headers `source`'s provider would send, signed at `at` with the right secret.
fn signed(source: &str, body: &[u8], at: chrono::DateTime<Utc>) -> Headers {
    let provider = match source {
        "gh" => Provider::Github,
        "fx" => Provider::Flexport,
        "sl" => Provider::Slack {
            tolerance_secs: 300,
        },
        "st" => Provider::Stripe {
            tolerance_secs: 300,
        },
        "sh" => Provider::Shopify,
        "sw" => Provider::StandardWebhooks {
            tolerance_secs: 300,
        },
        _ => unreachable!("signed() covers the HMAC kinds"),
    };
    let mut h = provider.sign(secret(source), body, at, "d-hostile", "issues");
    h.push(("Content-Type".into(), "application/json".into()));
    h
}

fn hm_signed(body: &[u8], ts: i64, prefix: &str) -> Headers {
    use base64::Engine as _;
    let mac = hookline_shared::verify::Algorithm::Sha512.sign(
        secret("hm").as_bytes(),
        &[ts.to_string().as_bytes(), b".", body],
    );
    vec![
        (
            "X-Sig".into(),
            format!(
                "{prefix}{}",
                base64::engine::general_purpose::STANDARD.encode(mac)
            ),
        ),
        ("X-Ts".into(), ts.to_string()),
    ]
}

fn set(mut h: Headers, name: &str, value: &str) -> Headers {
    h.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    h.push((name.into(), value.into()));
    h
}

fn without(mut h: Headers, name: &str) -> Headers {
    h.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    h
}

fn get(h: &Headers, name: &str) -> String {
    h.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .unwrap()
        .1
        .clone()
}

fn body(n: usize) -> Vec<u8> {
    format!(r#"{{"marker":"BODY-MARKER-{n:03}","action":"opened","issue":{{"number":{n}}}}}"#)
        .into_bytes()
}

struct Case {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    headers: Headers,
    body: Vec<u8>,
    status: u16,
    code: Option<&'static str>,
}

fn case(
    name: &'static str,
    path: &'static str,
    headers: Headers,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
) -> Case {
    Case {
        name,
        method: "POST",
        path,
        headers,
        body,
        status,
        code: Some(code),
    }
}

fn cases() -> Vec<Case> {
    let now = Utc::now();
    let old = now - chrono::Duration::seconds(360);
    let ahead = now + chrono::Duration::seconds(360);
    let b = body;
    let gh = |n| signed("gh", &b(n), now);
    let gh_sig = |n| get(&gh(n), "X-Hub-Signature-256");
    let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes();
    let mut many: Headers = (0..80)
        .map(|i| (format!("X-Filler-{i}"), "x".into()))
        .collect();
    many.extend(gh(30));
    vec![
        // GitHub
        case(
            "gh: no signature",
            "/hooks/gh",
            without(without(gh(1), "X-Hub-Signature-256"), "X-Hub-Signature"),
            b(1),
            401,
            "missing_signature",
        ),
        case(
            "gh: wrong secret",
            "/hooks/gh",
            {
                let mut h = Provider::Github.sign("not-the-secret", &b(2), now, "d", "issues");
                h.push(("Content-Type".into(), "application/json".into()));
                h
            },
            b(2),
            401,
            "bad_signature",
        ),
        case(
            "gh: tampered body",
            "/hooks/gh",
            gh(3),
            b(103),
            401,
            "bad_signature",
        ),
        case(
            "gh: signature header twice",
            "/hooks/gh",
            {
                let mut h = gh(4);
                h.push(("X-Hub-Signature-256".into(), gh_sig(4)));
                h
            },
            b(4),
            401,
            "duplicate_header",
        ),
        case(
            "gh: sha1= prefix in the sha256 header",
            "/hooks/gh",
            set(
                gh(5),
                "X-Hub-Signature-256",
                &gh_sig(5).replace("sha256=", "sha1="),
            ),
            b(5),
            401,
            "malformed_signature",
        ),
        case(
            "gh: non-hex signature",
            "/hooks/gh",
            set(gh(6), "X-Hub-Signature-256", "sha256=not-hex-at-all"),
            b(6),
            401,
            "malformed_signature",
        ),
        case(
            "gh: truncated signature",
            "/hooks/gh",
            set(gh(7), "X-Hub-Signature-256", &gh_sig(7)[..39]),
            b(7),
            401,
            "bad_signature",
        ),
        case(
            "gh: empty signature",
            "/hooks/gh",
            set(gh(8), "X-Hub-Signature-256", "sha256="),
            b(8),
            401,
            "bad_signature",
        ),
        case(
            "gh: empty body signed for another",
            "/hooks/gh",
            gh(9),
            Vec::new(),
            401,
            "bad_signature",
        ),
        case(
            "gh: binary body, forged signature",
            "/hooks/gh",
            gh(10),
            vec![0, 159, 146, 150, 255, 1, 2],
            401,
            "bad_signature",
        ),
        case(
            "gh: invalid UTF-8 body, forged signature",
            "/hooks/gh",
            gh(11),
            b"BODY-MARKER-011 \xc3\x28 \xff".to_vec(),
            401,
            "bad_signature",
        ),
        case(
            "gh: text/plain, forged signature",
            "/hooks/gh",
            set(gh(12), "Content-Type", "text/plain"),
            b(112),
            401,
            "bad_signature",
        ),
        case(
            "gh: JSON bomb, forged signature",
            "/hooks/gh",
            gh(13),
            nested.clone(),
            413,
            "payload_too_large",
        ),
        case(
            "gh: deep JSON under the limit, forged",
            "/hooks/gh",
            gh(14),
            format!("{}{}", "[".repeat(20_000), "]".repeat(20_000)).into_bytes(),
            401,
            "bad_signature",
        ),
        case(
            "gh: oversize body, valid signature",
            "/hooks/gh",
            signed("gh", &vec![b'x'; 70_000], now),
            vec![b'x'; 70_000],
            413,
            "payload_too_large",
        ),
        case(
            "gh: legacy sha1 header of another body",
            "/hooks/gh",
            without(
                set(gh(15), "X-Hub-Signature", &get(&gh(115), "X-Hub-Signature")),
                "X-Hub-Signature-256",
            ),
            b(15),
            401,
            "bad_signature",
        ),
        case(
            "gh: valid signature, delivery id with spaces",
            "/hooks/gh",
            set(gh(16), "X-GitHub-Delivery", "has spaces in it"),
            b(16),
            400,
            "invalid_identifier",
        ),
        case(
            "gh: valid signature, 300-char event type",
            "/hooks/gh",
            set(gh(17), "X-GitHub-Event", &"e".repeat(300)),
            b(17),
            400,
            "invalid_identifier",
        ),
        // Slack
        case(
            "slack: url_verification with a bad signature",
            "/hooks/sl",
            {
                let body = br#"{"type":"url_verification","challenge":"BODY-MARKER-018"}"#;
                set(
                    signed("sl", body, now),
                    "X-Slack-Signature",
                    &format!("v0={}", "0".repeat(64)),
                )
            },
            br#"{"type":"url_verification","challenge":"BODY-MARKER-018"}"#.to_vec(),
            401,
            "bad_signature",
        ),
        case(
            "slack: replayed after the window",
            "/hooks/sl",
            signed("sl", &b(19), old),
            b(19),
            401,
            "timestamp_out_of_window",
        ),
        case(
            "slack: timestamp from the future",
            "/hooks/sl",
            signed("sl", &b(20), ahead),
            b(20),
            401,
            "timestamp_out_of_window",
        ),
        case(
            "slack: timestamp not a number",
            "/hooks/sl",
            set(
                signed("sl", &b(21), now),
                "X-Slack-Request-Timestamp",
                "soon",
            ),
            b(21),
            401,
            "malformed_signature",
        ),
        case(
            "slack: no timestamp",
            "/hooks/sl",
            without(signed("sl", &b(22), now), "X-Slack-Request-Timestamp"),
            b(22),
            401,
            "missing_signature",
        ),
        case(
            "slack: timestamp moved, signature kept",
            "/hooks/sl",
            set(
                signed("sl", &b(23), now),
                "X-Slack-Request-Timestamp",
                &(now.timestamp() - 1).to_string(),
            ),
            b(23),
            401,
            "bad_signature",
        ),
        case(
            "slack: timestamp header twice",
            "/hooks/sl",
            {
                let mut h = signed("sl", &b(24), now);
                h.push((
                    "X-Slack-Request-Timestamp".into(),
                    now.timestamp().to_string(),
                ));
                h
            },
            b(24),
            401,
            "duplicate_header",
        ),
        // Stripe
        case(
            "stripe: no header",
            "/hooks/st",
            vec![],
            b(25),
            401,
            "missing_signature",
        ),
        case(
            "stripe: no t",
            "/hooks/st",
            set(
                vec![],
                "Stripe-Signature",
                &format!("v1={}", "a".repeat(64)),
            ),
            b(26),
            401,
            "malformed_signature",
        ),
        case(
            "stripe: two t",
            "/hooks/st",
            set(
                vec![],
                "Stripe-Signature",
                &format!(
                    "t=1,{}",
                    get(&signed("st", &b(27), now), "Stripe-Signature")
                ),
            ),
            b(27),
            401,
            "malformed_signature",
        ),
        case(
            "stripe: stale",
            "/hooks/st",
            signed("st", &b(28), old),
            b(28),
            401,
            "timestamp_out_of_window",
        ),
        case(
            "stripe: garbage header",
            "/hooks/st",
            set(vec![], "Stripe-Signature", "garbage"),
            b(29),
            401,
            "malformed_signature",
        ),
        case(
            "stripe: v1 for another body",
            "/hooks/st",
            signed("st", &b(130), now),
            b(30),
            401,
            "bad_signature",
        ),
        // Flexport (its `sha1=` prefix is optional: the only preset without one required)
        case(
            "flexport: no signature",
            "/hooks/fx",
            without(signed("fx", &b(51), now), "X-Hub-Signature"),
            b(51),
            401,
            "missing_signature",
        ),
        case(
            "flexport: wrong secret",
            "/hooks/fx",
            {
                let mut h = Provider::Flexport.sign("not-the-secret", &b(52), now, "d", "e");
                h.push(("Content-Type".into(), "application/json".into()));
                h
            },
            b(52),
            401,
            "bad_signature",
        ),
        case(
            "flexport: signature for another body",
            "/hooks/fx",
            signed("fx", &b(153), now),
            b(53),
            401,
            "bad_signature",
        ),
        case(
            "flexport: sha256= prefix on a sha1 signature",
            "/hooks/fx",
            {
                let h = signed("fx", &b(54), now);
                let sig = get(&h, "X-Hub-Signature");
                let hex = sig.strip_prefix("sha1=").unwrap_or(&sig).to_owned();
                set(h, "X-Hub-Signature", &format!("sha256={hex}"))
            },
            b(54),
            401,
            "malformed_signature",
        ),
        // Shopify
        case(
            "shopify: signature for another body",
            "/hooks/sh",
            signed("sh", &b(131), now),
            b(31),
            401,
            "bad_signature",
        ),
        case(
            "shopify: not base64",
            "/hooks/sh",
            set(vec![], "X-Shopify-Hmac-Sha256", "***"),
            b(32),
            401,
            "malformed_signature",
        ),
        case(
            "shopify: hex where base64 is expected",
            "/hooks/sh",
            set(vec![], "X-Shopify-Hmac-Sha256", &"ab".repeat(32)),
            b(33),
            401,
            "bad_signature",
        ),
        // Standard Webhooks
        case(
            "standard: no id",
            "/hooks/sw",
            without(signed("sw", &b(34), now), "webhook-id"),
            b(34),
            401,
            "missing_signature",
        ),
        case(
            "standard: id changed, signature kept",
            "/hooks/sw",
            set(signed("sw", &b(35), now), "webhook-id", "msg_other"),
            b(35),
            401,
            "bad_signature",
        ),
        case(
            "standard: only asymmetric v1a",
            "/hooks/sw",
            set(signed("sw", &b(36), now), "webhook-signature", "v1a,AAAA"),
            b(36),
            401,
            "malformed_signature",
        ),
        case(
            "standard: stale",
            "/hooks/sw",
            signed("sw", &b(37), old),
            b(37),
            401,
            "timestamp_out_of_window",
        ),
        // Generic HMAC
        case(
            "hmac: wrong algorithm prefix",
            "/hooks/hm",
            hm_signed(&b(38), now.timestamp(), "sha256="),
            b(38),
            401,
            "malformed_signature",
        ),
        case(
            "hmac: no timestamp",
            "/hooks/hm",
            without(hm_signed(&b(39), now.timestamp(), "sha512="), "X-Ts"),
            b(39),
            401,
            "missing_signature",
        ),
        case(
            "hmac: stale timestamp",
            "/hooks/hm",
            hm_signed(&b(40), old.timestamp(), "sha512="),
            b(40),
            401,
            "timestamp_out_of_window",
        ),
        // Shared secret
        case(
            "shared: wrong token",
            "/hooks/ss",
            vec![("X-Token".into(), "ss-secret-wrong".into())],
            b(41),
            401,
            "bad_signature",
        ),
        case(
            "shared: prefix of the token",
            "/hooks/ss",
            vec![("X-Token".into(), "ss-secret".into())],
            b(42),
            401,
            "bad_signature",
        ),
        case(
            "shared: token twice",
            "/hooks/ss",
            vec![
                ("X-Token".into(), secret("ss").into()),
                ("X-Token".into(), secret("ss").into()),
            ],
            b(43),
            401,
            "duplicate_header",
        ),
        // Paths and methods
        case(
            "path: unknown source, valid GitHub signature",
            "/hooks/nope",
            gh(44),
            b(44),
            404,
            "unknown_source",
        ),
        case(
            "path: source in upper case",
            "/hooks/GH",
            gh(45),
            b(45),
            404,
            "unknown_source",
        ),
        case(
            "path: encoded traversal",
            "/hooks/%2e%2e%2fgh",
            gh(46),
            b(46),
            404,
            "unknown_source",
        ),
        case(
            "path: extra segment",
            "/hooks/gh/extra",
            gh(47),
            b(47),
            404,
            "not_found",
        ),
        case(
            "path: no source",
            "/hooks/",
            gh(48),
            b(48),
            404,
            "not_found",
        ),
        Case {
            name: "method: PUT",
            method: "PUT",
            path: "/hooks/gh",
            headers: gh(49),
            body: b(49),
            status: 405,
            code: Some("method_not_allowed"),
        },
        case(
            "headers: 80 extra headers",
            "/hooks/gh",
            many,
            b(30),
            431,
            "headers_too_large",
        ),
        case(
            "headers: one 40 KB header",
            "/hooks/gh",
            set(gh(50), "X-Huge", &"h".repeat(40_000)),
            b(50),
            431,
            "headers_too_large",
        ),
    ]
}

#[tokio::test]
async fn hostile_requests_are_refused_enqueue_nothing_and_leak_nothing_to_logs() {
    let server = start().await;
    let client = reqwest::Client::new();
    let cases = cases();
    assert!(cases.len() >= 40, "the suite promises at least 40 cases");
    let mut failures = Vec::new();
    for case in cases {
        let method = reqwest::Method::from_bytes(case.method.as_bytes()).unwrap();
        let mut req = client
            .request(method, format!("{}{}", server.url, case.path))
            .body(case.body.clone());
        for (k, v) in &case.headers {
            req = req.header(k, v);
        }
        let (status, text) = match req.send().await {
            Ok(resp) => (
                resp.status().as_u16(),
                resp.text().await.unwrap_or_default(),
            ),
            Err(e) => panic!("case {:?}: request failed: {e}", case.name),
        };
        let code =
            serde_json::from_str::<serde_json::Value>(&text).unwrap_or_default()["error"].clone();
        let code_ok = case
            .code
            .filter(|c| !c.is_empty())
            .is_none_or(|c| code == c);
        if status != case.status || !code_ok {
            failures.push(format!(
                "{:?}: want {} {:?}, got {status} {text}",
                case.name, case.status, case.code
            ));
        }
        let depth = server.queue.depth(MAIN_TOPIC).await.unwrap();
        assert_eq!(
            depth,
            (0, 0),
            "case {:?} enqueued something ({status} {text})",
            case.name
        );
    }
    assert!(
        failures.is_empty(),
        "{} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    let _ = server.stop.send(());
    server.task.await.unwrap().unwrap();

    let logs = String::from_utf8(captured().lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("request refused"),
        "the capture works: refusals are logged"
    );
    for (source, secret) in SECRETS {
        assert!(
            !logs.contains(secret),
            "the {source} secret appears in the logs"
        );
    }
    assert!(
        !logs.contains("BODY-MARKER"),
        "a request body appears in the logs"
    );
}

#[tokio::test]
async fn a_validly_signed_json_bomb_is_accepted_without_harm() {
    let server = start().await;
    // Parsed for an id (Stripe reads `id` from the body): nesting far past serde_json's
    // recursion limit must fall back to the body hash, not crash.
    let bomb = format!("{}{}", "{\"a\":".repeat(5_000), "}".repeat(5_000)).into_bytes();
    let mut req = reqwest::Client::new()
        .post(format!("{}/hooks/st", server.url))
        .body(bomb.clone());
    for (k, v) in signed("st", &bomb, Utc::now()) {
        req = req.header(k, v);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let json: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        json["delivery_id"],
        hookline_shared::verify::body_hash_id(&bomb)
    );
    assert_eq!(server.queue.depth(MAIN_TOPIC).await.unwrap(), (1, 0));
    let _ = server.stop.send(());
    server.task.await.unwrap().unwrap();
}
