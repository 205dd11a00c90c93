//! Synchronization: re-reads every record (or those of some kms connections and regions) from
//! AWS, paced to a configured number of keys per second, one job at a time. A periodic job
//! runs every `sync.interval_secs`; others are started with `POST
//! /api/v1/cckm/aws/synchronization-jobs`. Progress is kept in the store.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;

use crate::background::cluster::Membership;
use crate::cckm::manage::{KeyManager, Synced};
use crate::error::DomainError;
use crate::store::sync_jobs::{self, Progress, SyncJob, status};
use crate::store::{Store, aws_keys};

pub struct Synchronizer {
    pub manager: Arc<KeyManager>,
    pub store: Store,
    pub keys_per_second: u32,
    pub interval: Option<Duration>,
    pub membership: Membership,
    /// One job runs at a time; the others wait (`queued`).
    running: Mutex<()>,
}

impl Synchronizer {
    pub fn new(
        manager: Arc<KeyManager>,
        store: Store,
        keys_per_second: u32,
        interval: Option<Duration>,
        membership: Membership,
    ) -> Self {
        Self {
            manager,
            store,
            keys_per_second: keys_per_second.max(1),
            interval,
            membership,
            running: Mutex::new(()),
        }
    }

    /// Records a job and starts it in the background.
    pub async fn start(
        self: &Arc<Self>,
        kms: Vec<String>,
        regions: Vec<String>,
        origin: &'static str,
    ) -> Result<SyncJob, DomainError> {
        let id = uuid::Uuid::new_v4().to_string();
        let (i, k, r) = (id.clone(), kms.clone(), regions.clone());
        let node = self.membership.node_id.clone();
        let job = self
            .store
            .call(move |c| {
                sync_jobs::create(c, &i, &k, &r, origin, &node)?;
                sync_jobs::get(c, &i)
            })
            .await?
            .ok_or_else(|| DomainError::Internal("the new synchronization job vanished".into()))?;
        let me = self.clone();
        tokio::spawn(async move { me.run(&id, &kms, &regions).await });
        Ok(job)
    }

    async fn cancelled(&self, id: &str) -> bool {
        let i = id.to_owned();
        matches!(
            self.store.call(move |c| sync_jobs::get(c, &i)).await,
            Ok(Some(j)) if j.status == status::CANCELLED
        )
    }

    async fn run(&self, id: &str, kms: &[String], regions: &[String]) {
        let _one_at_a_time = self.running.lock().await;
        if self.cancelled(id).await {
            return;
        }
        let (k, r) = (kms.to_vec(), regions.to_vec());
        let ids = match self
            .store
            .call(move |c| aws_keys::ids_for_sync(c, &k, &r))
            .await
        {
            Ok(ids) => ids,
            Err(e) => {
                self.end(id, status::ERROR, Some(&e.to_string())).await;
                return;
            }
        };
        let mut p = Progress {
            total: ids.len() as u64,
            done: 0,
            changed: 0,
            gone: 0,
            failed: 0,
        };
        self.report(id, &p, status::IN_PROGRESS).await;
        let mut pace = tokio::time::interval(Duration::from_secs_f64(
            1.0 / f64::from(self.keys_per_second),
        ));
        pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_error = None;
        for rid in ids {
            pace.tick().await;
            if self.cancelled(id).await {
                self.report(id, &p, status::CANCELLED).await;
                return;
            }
            match self.manager.sync(&rid).await {
                Ok((Synced::Changed, _)) => p.changed += 1,
                Ok((Synced::Unchanged, _)) => {}
                Ok((Synced::Gone(why), _)) => {
                    tracing::warn!(record = %rid, reason = %why, "key is gone from AWS");
                    p.gone += 1;
                }
                // A record removed meanwhile is not a failure.
                Err(DomainError::NotFound(_)) => {}
                Err(e) => {
                    tracing::warn!(record = %rid, error = %e, "could not synchronize a key");
                    last_error = Some(e.public_message());
                    p.failed += 1;
                }
            }
            p.done += 1;
            self.report(id, &p, status::IN_PROGRESS).await;
        }
        let end = if p.failed > 0 {
            status::ERROR
        } else {
            status::COMPLETED
        };
        let why = last_error.map(|e| format!("{} keys could not be read; last: {e}", p.failed));
        self.end(id, end, why.as_deref()).await;
        tracing::info!(job = %id, total = p.total, changed = p.changed, gone = p.gone, failed = p.failed, "synchronization done");
    }

    async fn report(&self, id: &str, p: &Progress, state: &'static str) {
        let i = id.to_owned();
        let p = *p;
        if let Err(e) = self
            .store
            .call(move |c| sync_jobs::progress(c, &i, &p, state))
            .await
        {
            tracing::error!(error = %e, "could not record synchronization progress");
        }
    }

    async fn end(&self, id: &str, state: &'static str, error: Option<&str>) {
        let (i, e) = (id.to_owned(), error.map(str::to_owned));
        if let Err(e) = self
            .store
            .call(move |c| sync_jobs::finish(c, &i, state, e.as_deref()))
            .await
        {
            tracing::error!(error = %e, "could not record the end of a synchronization");
        }
    }

    /// Closes the jobs a stopped bridge left running: this node's previous process (`mine`)
    /// and nodes no longer heard from.
    async fn abandon_unfinished(&self, mine: bool) {
        let me = self.membership.node_id.clone();
        let since = self.membership.alive_since();
        match self
            .store
            .call(move |c| sync_jobs::abandon_unfinished(c, &me, mine, since))
            .await
        {
            Ok(n) if n > 0 => tracing::warn!(
                jobs = n,
                "synchronization jobs of a stopped bridge were left unfinished"
            ),
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "could not close unfinished synchronization jobs")
            }
        }
    }

    /// The periodic synchronization (nothing when it is off), run by one bridge of the
    /// cluster at a time (the holder of the `periodic-sync` lease). Jobs a previous process
    /// left running are closed first.
    pub async fn run_forever(self: Arc<Self>) {
        self.abandon_unfinished(true).await;
        let Some(every) = self.interval else {
            return;
        };
        loop {
            tokio::time::sleep(every).await;
            self.abandon_unfinished(false).await;
            // Held for one interval (at least one node timeout): one periodic job per
            // interval across the cluster, whichever bridge wakes first.
            if !self
                .membership
                .lease_for(
                    &self.store,
                    "periodic-sync",
                    every.max(self.membership.timeout),
                )
                .await
            {
                continue;
            }
            match self.start(Vec::new(), Vec::new(), "periodic").await {
                // Wait for it, so that periodic jobs never pile up.
                Ok(_) => drop(self.running.lock().await),
                Err(e) => {
                    tracing::error!(error = %e, "could not start the periodic synchronization")
                }
            }
        }
    }
}
