# The archive: every raw body, byte for byte, under {source}/{YYYY-MM-DD}/..., written once by
# the worker. Ingest writes here too: bodies too large for a Pub/Sub message are stored first
# and published as a pointer (a claim check), which is why queue=pubsub needs archive=gcs.

locals {
  archive_bucket   = var.archive_bucket != "" ? var.archive_bucket : "${var.project_id}-hookline-archive"
  archive_location = coalesce(var.archive_location, var.region)
}

resource "google_storage_bucket" "archive" {
  name     = local.archive_bucket
  location = local.archive_location

  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  # Webhook bodies are evidence: never delete them with the stack.
  force_destroy = false

  lifecycle_rule {
    condition {
      age                   = var.archive_nearline_after_days
      matches_storage_class = ["STANDARD"]
    }
    action {
      type          = "SetStorageClass"
      storage_class = "NEARLINE"
    }
  }

  dynamic "lifecycle_rule" {
    for_each = var.archive_delete_after_days == null ? [] : [var.archive_delete_after_days]
    content {
      condition {
        age = lifecycle_rule.value
      }
      action {
        type = "Delete"
      }
    }
  }

  depends_on = [google_project_service.enabled]
}
