//! `hookline provision`: create every resource the configured engines need, idempotently
//! ("already exists" is fine). Embedded engines: the queue file, the warehouse file with
//! its table and views, the archive folder. Google Cloud: the topic, the dead-letter
//! topic, the worker subscription (dead-letter and retry policies), the operators'
//! subscription on the dead-letter topic, the bucket, the dataset, the table, the views.

use anyhow::Context as _;
use hookline_shared::config::{ArchiveBackend, QueueBackend, Settings, WarehouseBackend};
use hookline_shared::provision::Provisioned;
use hookline_shared::queue::embedded::EmbeddedQueue;
use hookline_shared::queue::pubsub::{self, Connection};
use hookline_worker::sinks::archive_gcs::GcsArchive;
use hookline_worker::sinks::warehouse_bigquery::BigQueryWarehouse;
use hookline_worker::sinks::warehouse_sqlite::SqliteWarehouse;

/// Created or already there, for the embedded engines' files and folders.
fn local(existed: bool, what: String) -> Provisioned {
    if existed {
        Provisioned::Exists(what)
    } else {
        Provisioned::Created(what)
    }
}

/// Provisions everything the settings select, printing one line per resource.
pub async fn run(settings: &Settings) -> anyhow::Result<()> {
    let mut done = Vec::new();
    match settings.queue.backend {
        QueueBackend::Embedded => {
            let q = &settings.queue.embedded;
            let existed = q.path.exists();
            EmbeddedQueue::open(q, std::time::Duration::from_millis(50))
                .context("creating the embedded queue")?;
            done.push(local(existed, format!("queue {}", q.path.display())));
        }
        QueueBackend::BenchDiscard => {
            anyhow::bail!("queue.backend = \"bench_discard\" has nothing to provision")
        }
        QueueBackend::Pubsub => {
            let connection = Connection::from_settings(settings)?;
            done.extend(
                pubsub::provision(&connection, &settings.queue.pubsub)
                    .await
                    .context("provisioning Pub/Sub")?,
            );
        }
    }
    match settings.archive.backend {
        ArchiveBackend::Local => {
            let root = &settings.archive.local.root;
            let existed = root.exists();
            std::fs::create_dir_all(root)
                .with_context(|| format!("creating {}", root.display()))?;
            done.push(local(existed, format!("archive folder {}", root.display())));
        }
        ArchiveBackend::Gcs => {
            let gcs = GcsArchive::connect(&settings.archive.gcs).await?;
            done.push(
                gcs.provision(
                    &settings.gcp.project,
                    settings.archive.gcs.location.as_deref(),
                )
                .await
                .context("creating the bucket")?,
            );
        }
    }
    match settings.warehouse.backend {
        WarehouseBackend::Sqlite => {
            let path = &settings.warehouse.sqlite.path;
            let existed = path.exists();
            SqliteWarehouse::open(path).context("creating the warehouse")?;
            done.push(local(
                existed,
                format!("warehouse {} (table events and views)", path.display()),
            ));
        }
        WarehouseBackend::Bigquery => {
            let bq =
                BigQueryWarehouse::connect(&settings.gcp.project, &settings.warehouse.bigquery)
                    .await?;
            done.extend(
                bq.provision(&settings.warehouse.bigquery.location)
                    .await
                    .context("provisioning BigQuery")?,
            );
        }
    }
    for line in done {
        println!("{line}");
    }
    Ok(())
}
