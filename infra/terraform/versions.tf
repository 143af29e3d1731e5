# Terraform and provider versions, the provider, the project lookup and the APIs hookline uses.
#
# `terraform validate` needs the provider plugin, so it runs where `terraform init` can
# download it; the repository's own checks are `terraform fmt -check -recursive` and the
# drift test `cargo test --test deploy` (tests/deploy/main.rs).

terraform {
  required_version = ">= 1.5"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 6.0, < 8.0"
    }
  }
}

provider "google" {
  project = var.project_id
  region  = var.region
}

# The project number names the Pub/Sub service agent and the Cloud Run deterministic URLs.
data "google_project" "this" {
  project_id = var.project_id
}

resource "google_project_service" "enabled" {
  for_each = toset([
    "artifactregistry.googleapis.com",
    "bigquery.googleapis.com",
    "iam.googleapis.com",
    "pubsub.googleapis.com",
    "run.googleapis.com",
    "secretmanager.googleapis.com",
    "storage.googleapis.com",
  ])

  project = var.project_id
  service = each.value
  # Other workloads in the project may use these APIs too: never turn them off on destroy.
  disable_on_destroy = false
}
