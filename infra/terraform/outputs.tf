# What to do next with the deployment: register the webhook URLs with the providers, fill
# the secrets, push images to the repository.

output "webhook_urls" {
  description = "The URL to register with each provider, by source: <ingest URL>/hooks/<source>."
  value       = { for name in keys(var.sources) : name => "${google_cloud_run_v2_service.ingest.uri}/hooks/${name}" }
}

output "ingest_url" {
  description = "The ingest service's URL."
  value       = google_cloud_run_v2_service.ingest.uri
}

output "worker_url" {
  description = "The worker service's URL (not public). Push mode delivers to <deterministic URL>/pubsub/push."
  value       = google_cloud_run_v2_service.worker.uri
}

output "image_repository" {
  description = "Docker repository path to tag and push the image to: <this>/hookline:<tag>."
  value       = local.image_repository
}

output "image" {
  description = "The image the services run."
  value       = local.image
}

output "source_secrets" {
  description = "Secret Manager secret per source: add the signing secret with `gcloud secrets versions add`."
  value       = { for name, secret in google_secret_manager_secret.source : name => secret.secret_id }
}

output "slack_webhook_url_secret" {
  description = "Secret Manager secret holding the Slack incoming-webhook URL (null when slack_notifications = false)."
  value       = one(google_secret_manager_secret.slack[*].secret_id)
}

output "archive_bucket" {
  description = "The archive bucket."
  value       = google_storage_bucket.archive.name
}

output "dead_letter_subscription" {
  description = "Operators' subscription on the dead-letter topic (docs/deploy-gcp.md, runbook)."
  value       = google_pubsub_subscription.dead_letter_operators.name
}

output "push_service_account" {
  description = "The identity Pub/Sub pushes to the worker as (push mode only)."
  value       = one(google_service_account.push[*].email)
}
