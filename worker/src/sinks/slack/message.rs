//! Slack message content: Block Kit blocks plus a plain-text fallback (`text`, which Slack
//! shows in notifications and to clients without blocks).

use hookline_shared::envelope::Metadata;
use hookline_shared::sink::SinkError;
use serde_json::{Value, json};

/// One message: the fallback text and the blocks.
#[derive(Debug, Clone, PartialEq)]
pub struct SlackMessage {
    pub text: String,
    pub blocks: Value,
}

impl SlackMessage {
    /// The JSON body posted to the incoming webhook.
    pub fn payload(&self) -> Value {
        json!({ "text": self.text, "blocks": self.blocks })
    }
}

/// Escapes the three characters Slack's mrkdwn gives meaning to.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

pub(super) fn build(meta: &Metadata, json: Option<&Value>) -> Result<SlackMessage, SinkError> {
    match (meta.provider.as_str(), meta.event_type.as_deref(), json) {
        ("github", Some(kind @ ("issues" | "pull_request")), Some(j)) => github_item(kind, j),
        _ => Ok(generic(meta)),
    }
}

/// "New issue in repo: #N title by author" with links, for `issues` and `pull_request`.
fn github_item(kind: &str, j: &Value) -> Result<SlackMessage, SinkError> {
    let item = if kind == "issues" {
        &j["issue"]
    } else {
        &j["pull_request"]
    };
    let field = |v: &Value, what: &str| {
        v.as_str().map(str::to_owned).ok_or_else(|| {
            SinkError::permanent(format!("github {kind} payload lacks {what}"), None)
        })
    };
    let title = field(&item["title"], "title")?;
    let url = field(&item["html_url"], "html_url")?;
    let number = item["number"]
        .as_u64()
        .ok_or_else(|| SinkError::permanent(format!("github {kind} payload lacks number"), None))?;
    let repo = field(&j["repository"]["full_name"], "repository.full_name")?;
    let repo_url = field(&j["repository"]["html_url"], "repository.html_url")?;
    let author = field(&item["user"]["login"], "user.login")?;
    let author_url = field(&item["user"]["html_url"], "user.html_url")?;
    let action = j["action"].as_str().unwrap_or("updated");
    let noun = if kind == "issues" {
        "issue"
    } else {
        "pull request"
    };
    let headline = if action == "opened" {
        format!("New {noun}")
    } else {
        format!("{} {action}", capitalise(noun))
    };
    Ok(SlackMessage {
        // `text` is mrkdwn too: a title like `<!channel>` must not ping anyone.
        text: escape(&format!(
            "{headline} in {repo}: #{number} {title} by {author} {url}"
        )),
        blocks: json!([
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": format!(
                        "*{headline} in <{repo_url}|{}>*\n<{url}|#{number} {}>",
                        escape(&repo),
                        escape(&title)
                    )
                }
            },
            {
                "type": "context",
                "elements": [
                    { "type": "mrkdwn", "text": format!("by <{author_url}|{}>", escape(&author)) }
                ]
            }
        ]),
    })
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

/// For events a rule selects but no formatter knows: what arrived, from where.
fn generic(meta: &Metadata) -> SlackMessage {
    let event = meta.event_type.as_deref().unwrap_or("event");
    let text = format!(
        "{} {event} received on source {} (delivery {})",
        meta.provider, meta.source, meta.delivery_id
    );
    let text = escape(&text);
    SlackMessage {
        blocks: json!([{ "type": "section", "text": { "type": "mrkdwn", "text": text } }]),
        text,
    }
}
