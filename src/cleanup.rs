//! The cleaner: schedules deletion of AWS keys left half-made by failed uploads, including
//! those of a previous process that died mid-flow. Runs at start and then periodically, so a
//! key whose deletion could not be scheduled (AWS unreachable) is handled once AWS answers.

use std::sync::Arc;
use std::time::Duration;

use crate::cckm::record::aws_time;
use crate::cckm::request::UPLOAD_TAG;
use crate::cckm::upload::LiveAttempts;
use crate::kms::{self, KmsRegistry};
use crate::store::Store;
use crate::store::attempts::{self, Attempt, state};

pub struct Cleaner {
    pub kms: Arc<KmsRegistry>,
    pub store: Store,
    pub live: LiveAttempts,
}

impl Cleaner {
    /// One pass; returns how many attempts were settled.
    pub async fn run_once(&self) -> usize {
        let pending = match self
            .store
            .call(|c| {
                attempts::in_states(
                    c,
                    &[state::CLEANUP_PENDING, state::IN_PROGRESS, state::CREATING],
                )
            })
            .await
        {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cleaner could not read the store");
                return 0;
            }
        };
        let mut settled = 0;
        for a in pending {
            if self.live.contains(&a.id) {
                continue;
            }
            if self.settle(&a).await {
                settled += 1;
            }
        }
        settled
    }

    async fn settle(&self, a: &Attempt) -> bool {
        let Some(conn) = self.kms.find(&a.kms_id) else {
            tracing::error!(attempt = %a.id, kms = %a.kms_id, "attempt names a KMS that is no longer configured");
            return false;
        };
        let client = self.kms.client(conn, &a.region).await;
        let key_ids = match &a.aws_key_id {
            Some(k) => vec![k.clone()],
            // Left in `creating`: CreateKey's answer was lost. Find the key by its tag.
            None => match kms::find_keys_tagged(&client, UPLOAD_TAG, &a.id).await {
                Ok(found) if found.is_empty() => {
                    let id = a.id.clone();
                    let _ = self
                        .store
                        .call(move |c| {
                            attempts::finish(c, &id, state::FAILED, Some("no AWS key was created"))
                        })
                        .await;
                    return true;
                }
                Ok(found) => found,
                Err(e) => {
                    tracing::warn!(attempt = %a.id, error = %e, "cleaner cannot search AWS yet");
                    return false;
                }
            },
        };
        let mut last = Ok(None);
        for key in &key_ids {
            last = kms::schedule_deletion(&client, key)
                .await
                .map(|d| {
                    d.as_ref()
                        .and_then(|d| aws_time(Some(d)).as_str().map(str::to_owned))
                })
                .map_err(|e| e.to_string());
            if last.is_err() {
                break;
            }
        }
        let ok = last.is_ok();
        match &last {
            Ok(_) => {
                tracing::info!(attempt = %a.id, keys = ?key_ids, "half-made AWS key scheduled for deletion")
            }
            Err(e) => {
                tracing::warn!(attempt = %a.id, error = %e, "half-made AWS key not scheduled for deletion yet")
            }
        }
        let (id, first) = (a.id.clone(), key_ids.first().cloned());
        let res = self
            .store
            .call(move |c| {
                if let Some(k) = &first {
                    c.execute(
                        "UPDATE upload_attempts SET aws_key_id = COALESCE(aws_key_id, ?2) WHERE id = ?1",
                        rusqlite::params![id, k],
                    )?;
                }
                attempts::cleanup_result(
                    c,
                    &id,
                    last.as_ref().map(|d| d.as_deref()).map_err(|e| e.as_str()),
                )
            })
            .await;
        if let Err(e) = res {
            tracing::error!(error = %e, "cleaner could not record an outcome");
        }
        ok
    }

    pub async fn run_forever(self, every: Duration) {
        loop {
            self.run_once().await;
            tokio::time::sleep(every).await;
        }
    }
}
