# The Docker repository for the one hookline image both services run (see the Dockerfile).

resource "google_artifact_registry_repository" "images" {
  location      = var.region
  repository_id = var.artifact_registry_repository
  format        = "DOCKER"
  description   = "hookline container images (one image: ingest and worker)."

  depends_on = [google_project_service.enabled]
}

locals {
  image_repository = "${var.region}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.images.repository_id}"
  image            = var.image != "" ? var.image : "${local.image_repository}/hookline:${var.image_tag}"
}
