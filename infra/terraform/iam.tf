# One service account per service, each holding only what its code path needs, granted on
# the resource rather than the project wherever the API allows it.
#
#   ingest: publish to the topic (and read it for /readyz); write and read claim checks in
#           the bucket; read its sources' signing secrets.
#   worker: consume the subscription (and read it for /readyz); publish permanent failures
#           to the dead-letter topic; write and read the archive; insert rows in the dataset
#           and run query jobs; read the Slack URL secret.
#   push:   (push mode only) the identity Pub/Sub signs push requests as; may invoke the
#           worker, nothing else.

resource "google_service_account" "ingest" {
  account_id   = "hookline-ingest"
  display_name = "hookline ingest (Cloud Run)"

  depends_on = [google_project_service.enabled]
}

resource "google_service_account" "worker" {
  account_id   = "hookline-worker"
  display_name = "hookline worker (Cloud Run)"

  depends_on = [google_project_service.enabled]
}

resource "google_service_account" "push" {
  count = var.worker_mode == "push" ? 1 : 0

  account_id   = "hookline-pubsub-push"
  display_name = "hookline Pub/Sub push to the worker"

  depends_on = [google_project_service.enabled]
}

locals {
  ingest_member = "serviceAccount:${google_service_account.ingest.email}"
  worker_member = "serviceAccount:${google_service_account.worker.email}"
}

# ------------------------------------------------------------------------------- ingest --

resource "google_pubsub_topic_iam_member" "ingest_publisher" {
  topic  = google_pubsub_topic.events.name
  role   = "roles/pubsub.publisher"
  member = local.ingest_member
}

# /readyz asks Pub/Sub for the topic.
resource "google_pubsub_topic_iam_member" "ingest_viewer" {
  topic  = google_pubsub_topic.events.name
  role   = "roles/pubsub.viewer"
  member = local.ingest_member
}

# Claim checks: bodies too large for a Pub/Sub message are written to the bucket first.
resource "google_storage_bucket_iam_member" "ingest_object_creator" {
  bucket = google_storage_bucket.archive.name
  role   = "roles/storage.objectCreator"
  member = local.ingest_member
}

resource "google_storage_bucket_iam_member" "ingest_object_viewer" {
  bucket = google_storage_bucket.archive.name
  role   = "roles/storage.objectViewer"
  member = local.ingest_member
}

resource "google_secret_manager_secret_iam_member" "ingest_source_secret" {
  for_each = google_secret_manager_secret.source

  secret_id = each.value.id
  role      = "roles/secretmanager.secretAccessor"
  member    = local.ingest_member
}

# ------------------------------------------------------------------------------- worker --

resource "google_pubsub_subscription_iam_member" "worker_subscriber" {
  subscription = google_pubsub_subscription.worker.name
  role         = "roles/pubsub.subscriber"
  member       = local.worker_member
}

# /readyz asks Pub/Sub for the subscription.
resource "google_pubsub_subscription_iam_member" "worker_viewer" {
  subscription = google_pubsub_subscription.worker.name
  role         = "roles/pubsub.viewer"
  member       = local.worker_member
}

# Permanent failures (a 4xx from Slack, a refused row) are dead-lettered by the worker itself.
resource "google_pubsub_topic_iam_member" "worker_dead_letter_publisher" {
  topic  = google_pubsub_topic.dead_letter.name
  role   = "roles/pubsub.publisher"
  member = local.worker_member
}

# The worker checks at start that the dead-letter topic exists (topics.get), which the
# publisher role does not allow.
resource "google_pubsub_topic_iam_member" "worker_dead_letter_viewer" {
  topic  = google_pubsub_topic.dead_letter.name
  role   = "roles/pubsub.viewer"
  member = local.worker_member
}

# The archive is create-only (an existing object means "already done"), and claim checks
# are read back: creator + viewer, no delete.
resource "google_storage_bucket_iam_member" "worker_object_creator" {
  bucket = google_storage_bucket.archive.name
  role   = "roles/storage.objectCreator"
  member = local.worker_member
}

resource "google_storage_bucket_iam_member" "worker_object_viewer" {
  bucket = google_storage_bucket.archive.name
  role   = "roles/storage.objectViewer"
  member = local.worker_member
}

resource "google_bigquery_dataset_iam_member" "worker_data_editor" {
  dataset_id = google_bigquery_dataset.hookline.dataset_id
  role       = "roles/bigquery.dataEditor"
  member     = local.worker_member
}

# Query jobs are billed to a project, so this one role cannot be narrower.
resource "google_project_iam_member" "worker_job_user" {
  project = var.project_id
  role    = "roles/bigquery.jobUser"
  member  = local.worker_member
}

resource "google_secret_manager_secret_iam_member" "worker_slack_secret" {
  count = var.slack_notifications ? 1 : 0

  secret_id = google_secret_manager_secret.slack[0].id
  role      = "roles/secretmanager.secretAccessor"
  member    = local.worker_member
}

# --------------------------------------------------------------------------------- push --

resource "google_cloud_run_v2_service_iam_member" "push_invoker" {
  count = var.worker_mode == "push" ? 1 : 0

  project  = var.project_id
  location = var.region
  name     = google_cloud_run_v2_service.worker.name
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.push[0].email}"
}

# The Pub/Sub service agent mints the OIDC tokens for the push service account. Projects
# created since April 2021 grant this implicitly; older ones need it, and it is harmless.
resource "google_service_account_iam_member" "push_token_creator" {
  count = var.worker_mode == "push" ? 1 : 0

  service_account_id = google_service_account.push[0].name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.pubsub_service_agent
}

# ------------------------------------------------------------------------------ public --

# Providers must reach POST /hooks/{source} without Google credentials: every request is
# authenticated by its signature instead. (Organizations enforcing domain-restricted
# sharing refuse allUsers; see docs/deploy-gcp.md.)
resource "google_cloud_run_v2_service_iam_member" "ingest_public" {
  project  = var.project_id
  location = var.region
  name     = google_cloud_run_v2_service.ingest.name
  role     = "roles/run.invoker"
  member   = "allUsers"
}
