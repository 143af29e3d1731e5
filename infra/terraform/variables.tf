# Inputs. Every resource name defaults to the name hookline's code uses when nothing is
# configured (shared/src/config.rs), so `hookline provision` and Terraform agree; the drift
# test tests/deploy/main.rs fails when a default here and the code's default part ways.

# ------------------------------------------------------------------------------ project --

variable "project_id" {
  description = "The Google Cloud project id to deploy into."
  type        = string
}

variable "region" {
  description = "Region of the Cloud Run services, the Artifact Registry repository and (by default) the archive bucket."
  type        = string
  default     = "us-central1"
}

variable "deletion_protection" {
  description = "Refuse to destroy the Cloud Run services and the events table. Set to false before `terraform destroy`."
  type        = bool
  default     = true
}

# ------------------------------------------------------------------------------- image --

variable "artifact_registry_repository" {
  description = "Artifact Registry Docker repository holding the hookline image."
  type        = string
  default     = "hookline"
}

variable "image_tag" {
  description = "Tag of the hookline image in the repository above (use the git commit; a moved tag does not redeploy)."
  type        = string
  default     = "latest"
}

variable "image" {
  description = "Full image reference; overrides artifact_registry_repository + image_tag when not empty."
  type        = string
  default     = ""
}

# ---------------------------------------------------------------------------- services --

variable "ingest_service_name" {
  description = "Cloud Run service name of ingest (public: POST /hooks/{source})."
  type        = string
  default     = "hookline-ingest"
}

variable "worker_service_name" {
  description = "Cloud Run service name of the worker. Its deterministic URL (name-projectnumber.region.run.app) is the push endpoint, so the name must be short."
  type        = string
  default     = "hookline-worker"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,38}[a-z0-9]$", var.worker_service_name))
    error_message = "worker_service_name: 2-40 characters of a-z, 0-9 and '-', so the deterministic URL fits a 63-character DNS label."
  }
}

variable "ingest_concurrency" {
  description = "Requests one ingest instance serves at once."
  type        = number
  default     = 80
}

variable "ingest_max_instances" {
  description = "Upper bound of ingest instances (it scales to zero when idle)."
  type        = number
  default     = 10
}

variable "worker_mode" {
  description = "How the worker receives messages: \"pull\" (streams from the subscription; CPU always allocated, at least one instance) or \"push\" (Pub/Sub POSTs to /pubsub/push with an OIDC token; scales to zero)."
  type        = string
  default     = "pull"

  validation {
    condition     = contains(["pull", "push"], var.worker_mode)
    error_message = "worker_mode must be \"pull\" or \"push\"."
  }
}

variable "worker_concurrency" {
  description = "Messages one worker instance processes at once (worker.concurrency; in push mode also the Cloud Run request concurrency)."
  type        = number
  default     = 128
}

variable "worker_min_instances" {
  description = "Minimum worker instances. Null: 1 in pull mode (the least it may have), 0 in push mode (scales to zero)."
  type        = number
  default     = null
}

variable "worker_max_instances" {
  description = "Upper bound of worker instances."
  type        = number
  default     = 3
}

# ------------------------------------------------------------------------------ Pub/Sub --

variable "pubsub_topic" {
  description = "Topic ingest publishes deliveries to (queue.pubsub.topic)."
  type        = string
  default     = "hookline-events"
}

variable "pubsub_subscription" {
  description = "The worker's subscription on the topic (queue.pubsub.subscription)."
  type        = string
  default     = "hookline-worker"
}

variable "pubsub_dead_letter_topic" {
  description = "Topic that receives messages after max_delivery_attempts and the worker's permanent failures (queue.pubsub.dead_letter_topic)."
  type        = string
  default     = "hookline-events-dead-letter"
}

variable "pubsub_dead_letter_subscription" {
  description = "Operators' subscription on the dead-letter topic (queue.pubsub.dead_letter_subscription)."
  type        = string
  default     = "hookline-dead-letter-operators"
}

variable "ack_deadline_secs" {
  description = "Seconds the worker has to acknowledge a message before redelivery (queue.pubsub.ack_deadline_secs)."
  type        = number
  default     = 60

  validation {
    condition     = var.ack_deadline_secs >= 10 && var.ack_deadline_secs <= 600
    error_message = "ack_deadline_secs must be 10 to 600."
  }
}

variable "max_delivery_attempts" {
  description = "Deliveries before Pub/Sub moves a message to the dead-letter topic (queue.pubsub.max_delivery_attempts)."
  type        = number
  default     = 5

  validation {
    condition     = var.max_delivery_attempts >= 5 && var.max_delivery_attempts <= 100
    error_message = "max_delivery_attempts must be 5 to 100 (Pub/Sub's limits)."
  }
}

variable "retry_policy" {
  description = "Whether the worker's subscription waits min_backoff_secs..max_backoff_secs before redelivering a nacked message; false redelivers at once (queue.pubsub.retry_policy)."
  type        = bool
  default     = true
}

variable "min_backoff_secs" {
  description = "Redelivery delay after a nack, lower bound (queue.pubsub.min_backoff_secs)."
  type        = number
  default     = 10

  validation {
    condition     = var.min_backoff_secs >= 0 && var.min_backoff_secs <= 600
    error_message = "min_backoff_secs must be 0 to 600."
  }
}

variable "max_backoff_secs" {
  description = "Redelivery delay after a nack, upper bound (queue.pubsub.max_backoff_secs)."
  type        = number
  default     = 600

  validation {
    condition     = var.max_backoff_secs >= 0 && var.max_backoff_secs <= 600
    error_message = "max_backoff_secs must be 0 to 600."
  }
}

# ------------------------------------------------------------------------------ archive --

variable "archive_bucket" {
  description = "Archive bucket name (archive.gcs.bucket; globally unique). Empty: \"<project_id>-hookline-archive\"."
  type        = string
  default     = ""
}

variable "archive_location" {
  description = "Archive bucket location. Null: the region."
  type        = string
  default     = null
}

variable "archive_nearline_after_days" {
  description = "Archived bodies move to the NEARLINE storage class after this many days."
  type        = number
  default     = 30
}

variable "archive_delete_after_days" {
  description = "Archived bodies are deleted after this many days. Null: kept forever."
  type        = number
  default     = null
}

# ---------------------------------------------------------------------------- BigQuery --

variable "bigquery_dataset" {
  description = "Dataset holding the events table and the views (warehouse.bigquery.dataset)."
  type        = string
  default     = "hookline"
}

variable "bigquery_table" {
  description = "The events table (warehouse.bigquery.table). The views in infra/sql/bigquery/ read `events`: rename both or neither."
  type        = string
  default     = "events"
}

variable "bigquery_location" {
  description = "Dataset location (warehouse.bigquery.location)."
  type        = string
  default     = "US"
}

# ----------------------------------------------------------------------------- sources --

variable "sources" {
  description = <<-EOT
    Webhook sources, by name (POST /hooks/<name>): the provider kind (github, flexport, slack,
    shared_secret), the environment variable the signing secret is mounted as, the header
    for shared_secret, and previous_version: a Secret Manager version number still accepted
    while a rotation is under way (docs/deploy-gcp.md, "Rotate a secret").
  EOT
  type = map(object({
    provider         = string
    secret_env       = string
    header           = optional(string)
    previous_version = optional(string)
  }))
  default = {
    github = {
      provider   = "github"
      secret_env = "GITHUB_WEBHOOK_SECRET"
    }
  }

  validation {
    condition     = length(var.sources) > 0
    error_message = "Configure at least one source: ingest refuses to start without one."
  }

  validation {
    # Names travel in HOOKLINE__SOURCES__<NAME>__... variables, whose path segments are
    # separated by "__": no '-', no leading, trailing or doubled '_'.
    condition     = alltrue([for name in keys(var.sources) : can(regex("^[a-z0-9]+(_[a-z0-9]+)*$", name)) && length(name) <= 63])
    error_message = "Source names: 1-63 characters of a-z and 0-9, single '_' between them."
  }

  validation {
    condition     = alltrue([for s in values(var.sources) : contains(["github", "flexport", "slack", "shared_secret"], s.provider)])
    error_message = "provider must be github, flexport, slack or shared_secret."
  }

  validation {
    condition     = alltrue([for s in values(var.sources) : s.provider != "shared_secret" || s.header != null])
    error_message = "A shared_secret source needs header (the request header carrying the secret)."
  }

  validation {
    condition     = alltrue([for s in values(var.sources) : can(regex("^[A-Z][A-Z0-9_]*$", s.secret_env)) && !startswith(s.secret_env, "HOOKLINE")])
    error_message = "secret_env must be an upper-case environment variable name not starting with HOOKLINE."
  }

  validation {
    condition     = length(distinct([for s in values(var.sources) : s.secret_env])) == length(var.sources)
    error_message = "Each source needs its own secret_env."
  }
}

# ------------------------------------------------------------------------------- Slack --

variable "slack_notifications" {
  description = "Create the Slack incoming-webhook URL secret and mount it on the worker. False: the worker logs the messages instead."
  type        = bool
  default     = true
}

variable "slack_webhook_url_env" {
  description = "Environment variable the worker reads the Slack incoming-webhook URL from (slack.webhook_url_env)."
  type        = string
  default     = "SLACK_WEBHOOK_URL"
}
