# The queue: ingest publishes to the topic, the worker reads the subscription, Pub/Sub moves
# a message to the dead-letter topic after max_delivery_attempts, operators read the
# dead-letter subscription. `hookline provision` creates the same four with the same
# settings (shared/src/queue/pubsub.rs), so either may run first.

locals {
  pubsub_service_agent = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"
  # Unacknowledged messages are kept 7 days (stated, not left to the default): a worker
  # outage shorter than that loses nothing.
  message_retention = "604800s"
}

resource "google_pubsub_topic" "events" {
  name = var.pubsub_topic

  depends_on = [google_project_service.enabled]
}

resource "google_pubsub_topic" "dead_letter" {
  name = var.pubsub_dead_letter_topic

  depends_on = [google_project_service.enabled]
}

resource "google_pubsub_subscription" "worker" {
  name                       = var.pubsub_subscription
  topic                      = google_pubsub_topic.events.id
  ack_deadline_seconds       = var.ack_deadline_secs
  message_retention_duration = local.message_retention

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.dead_letter.id
    max_delivery_attempts = var.max_delivery_attempts
  }

  # Without a retry policy Pub/Sub redelivers a nacked message at once.
  dynamic "retry_policy" {
    for_each = var.retry_policy ? [1] : []
    content {
      minimum_backoff = "${var.min_backoff_secs}s"
      maximum_backoff = "${var.max_backoff_secs}s"
    }
  }

  # Never expire for inactivity (the default is 31 days without a subscriber).
  expiration_policy {
    ttl = ""
  }

  # Push mode: Pub/Sub POSTs each message to the worker with an OIDC token signed for the
  # push service account. The endpoint is the worker's deterministic URL, known before the
  # service exists, so the worker can depend on this subscription without a cycle.
  dynamic "push_config" {
    for_each = var.worker_mode == "push" ? [1] : []
    content {
      push_endpoint = "${local.worker_url}/pubsub/push"
      oidc_token {
        service_account_email = one(google_service_account.push[*].email)
        audience              = local.worker_url
      }
    }
  }

  lifecycle {
    precondition {
      condition     = var.min_backoff_secs <= var.max_backoff_secs
      error_message = "min_backoff_secs must not exceed max_backoff_secs."
    }
  }
}

resource "google_pubsub_subscription" "dead_letter_operators" {
  name                       = var.pubsub_dead_letter_subscription
  topic                      = google_pubsub_topic.dead_letter.id
  ack_deadline_seconds       = 60
  message_retention_duration = local.message_retention

  expiration_policy {
    ttl = ""
  }
}

# Dead-lettering is done by the Pub/Sub service agent, not by hookline: it must be allowed
# to publish to the dead-letter topic and to acknowledge on the worker subscription. Without
# these two bindings dead-lettering silently does not happen: messages are redelivered
# forever and the dead-letter topic stays empty (the console shows a warning, nothing fails).
resource "google_pubsub_topic_iam_member" "service_agent_dead_letter_publisher" {
  topic  = google_pubsub_topic.dead_letter.name
  role   = "roles/pubsub.publisher"
  member = local.pubsub_service_agent
}

resource "google_pubsub_subscription_iam_member" "service_agent_worker_subscriber" {
  subscription = google_pubsub_subscription.worker.name
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_service_agent
}
