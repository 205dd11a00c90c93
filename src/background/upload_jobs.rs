//! Runs bulk upload jobs: the oldest open job first, up to `jobs.concurrency` of its items at
//! once, every AWS call paced by the request limiter. Each item is claimed under a new upload
//! attempt id before its upload starts, so after a crash an item whose attempt completed is
//! found done (by the record that attempt made) and any other runs again under a new attempt:
//! a source key is uploaded to a kms and Region at most once per job, and the half-made key of
//! an interrupted attempt is the cleaner's, as for any upload.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::cckm::request::UploadKeyBody;
use crate::cckm::upload::Uploader;
use crate::config::JobsConfig;
use crate::store::upload_jobs::{self, Item, Outcome, item_state};
use crate::store::{Store, StoreError, attempts, aws_keys};

pub struct JobRunner {
    pub uploader: Arc<Uploader>,
    pub store: Store,
    pub cfg: JobsConfig,
    /// Each item's upload is an audited upload, as through `upload-key`.
    pub auditor: crate::audit::Auditor,
    /// Woken when a job is submitted.
    pub wake: Arc<Notify>,
    pub membership: crate::background::cluster::Membership,
}

/// Longest wait before a retried item runs again.
const MAX_BACKOFF_SECS: i64 = 60;

fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl JobRunner {
    pub async fn run_forever(self: Arc<Self>) {
        loop {
            match self.resume(true).await {
                Ok(n) if n > 0 => tracing::info!(
                    items = n,
                    "upload job items of a previous run looked at again"
                ),
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %e, "could not resume upload jobs; trying again");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    continue;
                }
            }
            break;
        }
        loop {
            // Items of a bridge that died are taken over once it is no longer heard from.
            match self.resume(false).await {
                Ok(n) if n > 0 => {
                    tracing::warn!(items = n, "upload job items of a stopped bridge taken over")
                }
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "could not look for orphaned job items"),
            }
            let jobs = match self.store.call(|c| upload_jobs::runnable(c)).await {
                Ok(j) => j,
                Err(e) => {
                    tracing::error!(error = %e, "could not list upload jobs");
                    Vec::new()
                }
            };
            let mut wait = Duration::from_secs(30);
            for job in jobs {
                if let Some(next) = self.run_job(&job).await {
                    wait = wait.min(next);
                }
            }
            self.publish_counts().await;
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Items a previous process left running: done if their attempt completed (audited now,
    /// as the process that made the key could not), failed if they ran `item_attempts` times
    /// already (an item that brings the process down must not do so for ever), else pending
    /// again — to run once the cleaner has settled the attempt they left (see `claim`).
    /// Answers how many it looked at.
    async fn resume(&self, mine: bool) -> Result<usize, StoreError> {
        let most = self.cfg.item_attempts;
        let me = self.membership.node_id.clone();
        let since = self.membership.alive_since();
        let (n, found) = self
            .store
            .call(move |c| {
                let running = upload_jobs::running(c, &me, mine, since)?;
                let mut found = Vec::new();
                for it in &running {
                    let Some(attempt) = it.upload_id.as_deref() else {
                        continue;
                    };
                    let made = attempts::get(c, attempt)?
                        .filter(|a| a.state == attempts::state::COMPLETED)
                        .map(|a| {
                            // The record may have been forgotten since: the attempt still
                            // names the key it made.
                            aws_keys::by_upload_id(c, attempt).map(|r| {
                                r.unwrap_or_else(|| {
                                    (
                                        String::new(),
                                        a.aws_key_id.clone().unwrap_or_default(),
                                        a.aws_key_arn.clone().unwrap_or_default(),
                                    )
                                })
                            })
                        })
                        .transpose()?;
                    match made {
                        Some((record_id, key_id, arn)) => {
                            tracing::info!(job = %it.job_id, item = it.seq, %key_id, "upload job item was uploaded before the restart");
                            // Audited by the one bridge that settles it.
                            if upload_jobs::finish_item(
                                c,
                                &it.job_id,
                                it.seq,
                                attempt,
                                &Outcome::Completed {
                                    record_id,
                                    key_id: key_id.clone(),
                                    arn,
                                },
                            )? {
                                found.push((it.clone(), attempt.to_owned(), key_id));
                            }
                        }
                        None if it.tries >= most => {
                            tracing::error!(job = %it.job_id, item = it.seq, tries = it.tries, "upload job item was cut short by the bridge stopping too often; it is failed");
                            upload_jobs::finish_item(
                                c,
                                &it.job_id,
                                it.seq,
                                attempt,
                                &Outcome::Failed(format!(
                                    "the bridge stopped while this item ran, {} times",
                                    it.tries
                                )),
                            )?;
                        }
                        None => upload_jobs::requeue(c, &it.job_id, it.seq, attempt)?,
                    }
                }
                Ok((running.len(), found))
            })
            .await?;
        for (it, attempt, key_id) in found {
            audit_item(&self.auditor, &it, &attempt, Ok(&key_id), true).await;
        }
        Ok(n)
    }

    /// Works a job until no item can start now; answers when to look again if some wait
    /// for a retry.
    async fn run_job(&self, job: &str) -> Option<Duration> {
        let mut running = JoinSet::new();
        loop {
            while running.len() < self.cfg.concurrency {
                let j = job.to_owned();
                let node = self.membership.node_id.clone();
                let claimed = self
                    .store
                    .call_relaxed(move |c| upload_jobs::claim(c, &j, now_unix(), &node))
                    .await;
                match claimed {
                    Ok(Some(item)) => {
                        let me = Worker {
                            uploader: self.uploader.clone(),
                            store: self.store.clone(),
                            auditor: self.auditor.clone(),
                            item_attempts: self.cfg.item_attempts,
                        };
                        running.spawn(async move { me.run(item).await });
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::error!(job, error = %e, "could not claim an upload job item");
                        break;
                    }
                }
            }
            if running.join_next().await.is_none() {
                break;
            }
            self.publish_counts().await;
        }
        let j = job.to_owned();
        let next = self
            .store
            .call(move |c| {
                if upload_jobs::finish_if_done(c, &j)? {
                    return Ok(None);
                }
                // Items wait for a retry, or one's outcome could not be recorded.
                Ok(Some(
                    upload_jobs::next_due(c, &j)?.unwrap_or(now_unix() + 30),
                ))
            })
            .await;
        match next {
            Ok(None) => {
                tracing::info!(job, "upload job ended");
                None
            }
            Ok(Some(at)) => Some(Duration::from_secs((at - now_unix()).clamp(1, 60) as u64)),
            Err(e) => {
                tracing::error!(job, error = %e, "could not update the upload job");
                Some(Duration::from_secs(5))
            }
        }
    }

    async fn publish_counts(&self) {
        if let Ok(counts) = self.store.call(|c| upload_jobs::open_counts(c)).await {
            let m = crate::metrics::get();
            for s in [
                item_state::PENDING,
                item_state::RUNNING,
                item_state::COMPLETED,
                item_state::FAILED,
                item_state::CANCELLED,
            ] {
                let n = counts
                    .iter()
                    .find(|(state, _)| state == s)
                    .map_or(0, |(_, n)| *n);
                m.job_items_open
                    .get_or_create(&crate::metrics::StateLabels {
                        state: s.to_owned(),
                    })
                    .set(n as i64);
            }
        }
    }
}

struct Worker {
    uploader: Arc<Uploader>,
    store: Store,
    auditor: crate::audit::Auditor,
    item_attempts: u32,
}

impl Worker {
    async fn run(self, item: Item) {
        let span = tracing::info_span!("upload_job_item", job = %item.job_id, item = item.seq);
        self.run_item(item).instrument(span).await
    }

    async fn run_item(self, item: Item) {
        let Some(attempt) = item.upload_id.clone() else {
            return;
        };
        let parsed: Result<UploadKeyBody, _> = serde_json::from_str(&item.body);
        let (actor, request_id) = names(&item);
        let started = std::time::Instant::now();
        let result = match parsed {
            Ok(body) => {
                let (tier, spec) = body.metric_labels();
                let r = self
                    .uploader
                    .upload_as(body, &request_id, &actor, attempt.clone())
                    .await;
                crate::metrics::get().upload_done(tier, spec, r.is_ok(), started.elapsed());
                r
            }
            Err(e) => Err(crate::error::DomainError::Internal(format!(
                "the stored item is unreadable: {e}"
            ))),
        };
        let (done_label, outcome) = match result {
            Ok(record) => {
                let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
                (
                    "completed",
                    Outcome::Completed {
                        record_id: s(&record["id"]),
                        key_id: s(&record["aws_param"]["KeyID"]),
                        arn: s(&record["aws_param"]["Arn"]),
                    },
                )
            }
            Err(e) if e.is_transient() && item.tries < self.item_attempts => {
                let backoff = (1i64 << item.tries.min(6)).min(MAX_BACKOFF_SECS);
                tracing::warn!(job = %item.job_id, item = item.seq, tries = item.tries, error = %e.public_message(), "upload job item failed; it runs again");
                (
                    "retried",
                    Outcome::Retry {
                        error: e.public_message(),
                        not_before: now_unix() + backoff,
                    },
                )
            }
            Err(e) => {
                tracing::warn!(job = %item.job_id, item = item.seq, error = %e.public_message(), "upload job item failed");
                ("failed", Outcome::Failed(e.public_message()))
            }
        };
        let audited = match &outcome {
            Outcome::Completed { key_id, .. } => Ok(key_id.as_str()),
            Outcome::Failed(e) | Outcome::Retry { error: e, .. } => Err(e.as_str()),
        };
        audit_item(&self.auditor, &item, &attempt, audited, false).await;
        crate::metrics::get()
            .job_items_done
            .get_or_create(&crate::metrics::StateLabels {
                state: done_label.to_owned(),
            })
            .inc();
        // Not made durable on its own: a completed upload is found again by its attempt. A
        // store that refuses for now is asked again: an item left running would hold its job
        // open until the next start.
        let mut r = Ok(());
        for pause in [0u64, 1, 5, 30] {
            tokio::time::sleep(Duration::from_secs(pause)).await;
            let (job, attempt, o) = (item.job_id.clone(), attempt.clone(), outcome.clone());
            let seq = item.seq;
            r = self
                .store
                .call_relaxed(move |c| {
                    upload_jobs::finish_item(c, &job, seq, &attempt, &o).map(|_| ())
                })
                .await;
            if r.is_ok() {
                break;
            }
        }
        if let Err(e) = r {
            tracing::error!(job = %item.job_id, item = item.seq, error = %e, "could not record the item's outcome");
        }
    }
}

/// The actor and request id an item's upload is recorded under.
fn names(item: &Item) -> (String, String) {
    (
        format!("upload-job:{}", item.job_id),
        format!("{}#{}", item.job_id, item.seq),
    )
}

/// An item's upload in the audit log, as an upload through upload-key is: the key it made, or
/// why it failed.
async fn audit_item(
    auditor: &crate::audit::Auditor,
    item: &Item,
    attempt: &str,
    made: Result<&str, &str>,
    found_after_restart: bool,
) {
    let (actor, request_id) = names(item);
    let (key_id, error) = match made {
        Ok(k) => (Some(k), None),
        Err(e) => (None, Some(e)),
    };
    auditor
        .event(
            &actor,
            "upload-key",
            if made.is_ok() { "success" } else { "failure" },
            &request_id,
            serde_json::json!({
                "upload_job": item.job_id,
                "item": item.seq,
                "upload_id": attempt,
                "source_key_tier": item.source_key_tier,
                "source_key_identifier": item.source_key_identifier,
                "kms_id": item.kms_id,
                "region": item.region,
                "key_id": key_id,
                "error": error,
                "found_after_restart": found_after_restart,
            }),
        )
        .await;
}
