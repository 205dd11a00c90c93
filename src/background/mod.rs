//! Work the bridge does by itself, beside the requests it serves: the cleaner of half-made
//! keys, the periodic synchronization of records with AWS, the synchronization jobs asked
//! for through the API, what keys schedule (rotations, lease renewals), and bulk upload jobs.

pub mod cleanup;
pub mod cluster;
pub mod schedules;
pub mod sync;
pub mod upload_jobs;

use std::sync::Arc;
use std::time::Duration;

use crate::vault::Vault;

/// Purges deleted vault keys once their retention has passed, checking every `every`.
pub async fn purge_deleted_vault_keys(vault: Arc<Vault>, retention: Duration, every: Duration) {
    loop {
        if let Err(e) = vault.purge_deleted(retention).await {
            tracing::error!(error = %e, "could not purge deleted vault keys");
        }
        tokio::time::sleep(every).await;
    }
}
