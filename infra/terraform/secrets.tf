# Secret Manager: one secret per source (its signing secret) and one for the Slack
# incoming-webhook URL. Terraform creates the secrets, never their values: values are added
# with `gcloud secrets versions add` so they stay out of the Terraform state
# (docs/deploy-gcp.md). The services read them as environment variables (run.tf), which is
# how hookline expects secrets (`secrets_env`, `slack.webhook_url_env`).

resource "google_secret_manager_secret" "source" {
  for_each = var.sources

  secret_id = "hookline-${replace(each.key, "_", "-")}-webhook-secret"
  labels = {
    app    = "hookline"
    source = replace(each.key, "_", "-")
  }

  replication {
    auto {}
  }

  depends_on = [google_project_service.enabled]
}

resource "google_secret_manager_secret" "slack" {
  count = var.slack_notifications ? 1 : 0

  secret_id = "hookline-slack-webhook-url"
  labels = {
    app = "hookline"
  }

  replication {
    auto {}
  }

  depends_on = [google_project_service.enabled]
}
