# The two Cloud Run services, one image: the container argument picks the role.
#
# Configuration reaches hookline as HOOKLINE__SECTION__KEY environment variables (the README's
# configuration reference); every name below must be a settings key, which the drift test
# tests/deploy/main.rs checks against the code. Secrets are mounted from Secret Manager as
# the environment variables the settings name (`secrets_env`, `slack.webhook_url_env`).
#
# Both services listen on $PORT (8080, set by Cloud Run from the container port), answer
# GET /healthz (alive), /readyz (queue reachable) and /metrics, and finish in-flight work
# within the 10 s Cloud Run allows after SIGTERM.

locals {
  # The worker's deterministic URL: known before the service exists, so the push
  # subscription and the worker's own audience setting can name it without a cycle.
  worker_url = "https://${var.worker_service_name}-${data.google_project.this.number}.${var.region}.run.app"

  # Pull mode streams from the subscription between requests: CPU always allocated and at
  # least one instance. Push mode is request-driven and may scale to zero.
  worker_pull          = var.worker_mode == "pull"
  worker_min_instances = max(local.worker_pull ? 1 : 0, coalesce(var.worker_min_instances, 0))

  common_env = {
    GOOGLE_CLOUD_PROJECT                              = var.project_id
    HOOKLINE_LOG_FORMAT                               = "gcp"
    HOOKLINE__QUEUE__BACKEND                          = "pubsub"
    HOOKLINE__QUEUE__PUBSUB__TOPIC                    = google_pubsub_topic.events.name
    HOOKLINE__QUEUE__PUBSUB__SUBSCRIPTION             = google_pubsub_subscription.worker.name
    HOOKLINE__QUEUE__PUBSUB__DEAD_LETTER_TOPIC        = google_pubsub_topic.dead_letter.name
    HOOKLINE__QUEUE__PUBSUB__DEAD_LETTER_SUBSCRIPTION = google_pubsub_subscription.dead_letter_operators.name
    HOOKLINE__QUEUE__PUBSUB__ACK_DEADLINE_SECS        = var.ack_deadline_secs
    HOOKLINE__QUEUE__PUBSUB__MAX_DELIVERY_ATTEMPTS    = var.max_delivery_attempts
    HOOKLINE__QUEUE__PUBSUB__RETRY_POLICY             = var.retry_policy
    HOOKLINE__QUEUE__PUBSUB__MIN_BACKOFF_SECS         = var.min_backoff_secs
    HOOKLINE__QUEUE__PUBSUB__MAX_BACKOFF_SECS         = var.max_backoff_secs
    HOOKLINE__ARCHIVE__BACKEND                        = "gcs"
    HOOKLINE__ARCHIVE__GCS__BUCKET                    = google_storage_bucket.archive.name
    HOOKLINE__ARCHIVE__GCS__LOCATION                  = local.archive_location
    HOOKLINE__WAREHOUSE__BACKEND                      = "bigquery"
    HOOKLINE__WAREHOUSE__BIGQUERY__DATASET            = google_bigquery_dataset.hookline.dataset_id
    HOOKLINE__WAREHOUSE__BIGQUERY__TABLE              = google_bigquery_table.events.table_id
    HOOKLINE__WAREHOUSE__BIGQUERY__LOCATION           = var.bigquery_location
  }

  # Sources: HOOKLINE__SOURCES__<NAME>__PROVIDER and __SECRETS_ENV (a TOML array of variable
  # names; during a rotation the previous secret version is accepted too).
  source_env = merge([
    for name, s in var.sources : merge(
      {
        "HOOKLINE__SOURCES__${upper(name)}__PROVIDER"    = s.provider
        "HOOKLINE__SOURCES__${upper(name)}__SECRETS_ENV" = jsonencode(concat([s.secret_env], s.previous_version == null ? [] : ["${s.secret_env}_PREVIOUS"]))
      },
      s.header == null ? {} : {
        "HOOKLINE__SOURCES__${upper(name)}__HEADER" = s.header
      },
    )
  ]...)

  ingest_env = merge(local.common_env, local.source_env)

  # Push mode: the worker checks each push request's OIDC token against these two.
  worker_push_env = local.worker_pull ? {} : {
    HOOKLINE__WORKER__PUSH__AUDIENCE              = local.worker_url
    HOOKLINE__WORKER__PUSH__SERVICE_ACCOUNT_EMAIL = one(google_service_account.push[*].email)
  }

  worker_env = merge(local.common_env, local.worker_push_env, {
    HOOKLINE__WORKER__MODE           = var.worker_mode
    HOOKLINE__WORKER__CONCURRENCY    = var.worker_concurrency
    HOOKLINE__SLACK__WEBHOOK_URL_ENV = var.slack_webhook_url_env
  })

  # Environment variable => Secret Manager secret and version.
  ingest_secret_env = merge(
    { for name, s in var.sources : s.secret_env => {
      secret  = google_secret_manager_secret.source[name].secret_id
      version = "latest"
    } },
    { for name, s in var.sources : "${s.secret_env}_PREVIOUS" => {
      secret  = google_secret_manager_secret.source[name].secret_id
      version = s.previous_version
    } if s.previous_version != null },
  )

  worker_secret_env = var.slack_notifications ? {
    (var.slack_webhook_url_env) = {
      secret  = one(google_secret_manager_secret.slack[*].secret_id)
      version = "latest"
    }
  } : {}
}

resource "google_cloud_run_v2_service" "ingest" {
  name                = var.ingest_service_name
  location            = var.region
  ingress             = "INGRESS_TRAFFIC_ALL"
  deletion_protection = var.deletion_protection

  template {
    service_account                  = google_service_account.ingest.email
    max_instance_request_concurrency = var.ingest_concurrency
    timeout                          = "60s"

    scaling {
      min_instance_count = 0
      max_instance_count = var.ingest_max_instances
    }

    containers {
      image = local.image
      args  = ["ingest"]

      ports {
        container_port = 8080
      }

      # Bodies are held in memory until the queue confirms: up to `ingest_concurrency`
      # requests of up to server.max_body_bytes (10 MiB) each, so 80 x 10 MiB plus the
      # process needs about 1 GiB at worst.
      resources {
        limits = {
          cpu    = "1"
          memory = "1Gi"
        }
        cpu_idle          = true
        startup_cpu_boost = true
      }

      dynamic "env" {
        for_each = local.ingest_env
        content {
          name  = env.key
          value = env.value
        }
      }

      dynamic "env" {
        for_each = local.ingest_secret_env
        content {
          name = env.key
          value_source {
            secret_key_ref {
              secret  = env.value.secret
              version = env.value.version
            }
          }
        }
      }

      # Traffic only once the queue answers: a revision that cannot publish never serves.
      startup_probe {
        http_get {
          path = "/readyz"
        }
        period_seconds    = 3
        timeout_seconds   = 3
        failure_threshold = 20
      }

      liveness_probe {
        http_get {
          path = "/healthz"
        }
        period_seconds  = 15
        timeout_seconds = 3
      }
    }
  }

  depends_on = [
    google_pubsub_topic_iam_member.ingest_publisher,
    google_pubsub_topic_iam_member.ingest_viewer,
    google_storage_bucket_iam_member.ingest_object_creator,
    google_storage_bucket_iam_member.ingest_object_viewer,
    google_secret_manager_secret_iam_member.ingest_source_secret,
  ]
}

resource "google_cloud_run_v2_service" "worker" {
  name     = var.worker_service_name
  location = var.region
  # Reachable from Pub/Sub push; not public: every request needs roles/run.invoker.
  ingress             = "INGRESS_TRAFFIC_ALL"
  custom_audiences    = [local.worker_url]
  deletion_protection = var.deletion_protection

  template {
    service_account                  = google_service_account.worker.email
    max_instance_request_concurrency = var.worker_concurrency
    timeout                          = "${var.ack_deadline_secs}s"

    scaling {
      min_instance_count = local.worker_min_instances
      max_instance_count = var.worker_max_instances
    }

    containers {
      image = local.image
      args  = ["worker"]

      ports {
        container_port = 8080
      }

      resources {
        limits = {
          cpu    = "1"
          memory = "512Mi"
        }
        # false = CPU always allocated, which a pull worker streaming between requests needs.
        cpu_idle          = !local.worker_pull
        startup_cpu_boost = true
      }

      dynamic "env" {
        for_each = local.worker_env
        content {
          name  = env.key
          value = env.value
        }
      }

      dynamic "env" {
        for_each = local.worker_secret_env
        content {
          name = env.key
          value_source {
            secret_key_ref {
              secret  = env.value.secret
              version = env.value.version
            }
          }
        }
      }

      startup_probe {
        http_get {
          path = "/readyz"
        }
        period_seconds    = 3
        timeout_seconds   = 3
        failure_threshold = 20
      }

      liveness_probe {
        http_get {
          path = "/healthz"
        }
        period_seconds  = 15
        timeout_seconds = 3
      }
    }
  }

  depends_on = [
    google_pubsub_subscription_iam_member.worker_subscriber,
    google_pubsub_subscription_iam_member.worker_viewer,
    google_pubsub_topic_iam_member.worker_dead_letter_publisher,
    google_storage_bucket_iam_member.worker_object_creator,
    google_storage_bucket_iam_member.worker_object_viewer,
    google_bigquery_dataset_iam_member.worker_data_editor,
    google_project_iam_member.worker_job_user,
    google_secret_manager_secret_iam_member.worker_slack_secret,
    google_bigquery_table.views,
  ]
}
