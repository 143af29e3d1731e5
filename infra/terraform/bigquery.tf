# The warehouse: the events table from the one schema file (infra/bigquery/events.schema.json,
# also compiled into hookline) partitioned by day on `ts`, and the views from
# infra/sql/bigquery/. Each .sql file holds one statement,
#   CREATE OR REPLACE VIEW `${project}.${dataset}.NAME` AS <query>
# which `hookline provision` runs as is. Here the <query> after that statement's AS (a regex,
# since AS ends its line) is the view definition, with ${project} and ${dataset} replaced as
# plain text the way provision does, so both read the same file.

locals {
  view_files = {
    events_common          = "${path.module}/../sql/bigquery/events_common.sql"
    github_issue_lifecycle = "${path.module}/../sql/bigquery/github_issue_lifecycle.sql"
  }

  views = {
    for name, sql_file in local.view_files : name => trimsuffix(trimspace(regex(
      "(?s)CREATE OR REPLACE VIEW\\s+\\S+\\s+AS\\s+(.*)",
      replace(replace(file(sql_file), "$${project}", var.project_id), "$${dataset}", var.bigquery_dataset),
    )[0]), ";")
  }
}

resource "google_bigquery_dataset" "hookline" {
  dataset_id  = var.bigquery_dataset
  location    = var.bigquery_location
  description = "hookline: one row per webhook delivery, and analytics views."

  depends_on = [google_project_service.enabled]
}

resource "google_bigquery_table" "events" {
  dataset_id  = google_bigquery_dataset.hookline.dataset_id
  table_id    = var.bigquery_table
  description = "One row per webhook delivery (hookline)."
  schema      = file("${path.module}/../bigquery/events.schema.json")

  time_partitioning {
    type  = "DAY"
    field = "ts"
  }

  deletion_protection = var.deletion_protection
}

resource "google_bigquery_table" "views" {
  for_each = local.views

  dataset_id = google_bigquery_dataset.hookline.dataset_id
  table_id   = each.key
  # A view holds no data; recreating it is always safe.
  deletion_protection = false

  view {
    query          = each.value
    use_legacy_sql = false
  }

  depends_on = [google_bigquery_table.events]
}
