//! The cleaner: schedules deletion of AWS keys left half-made by failed uploads, including
//! those of a previous process that died mid-flow, and removes the aliases such attempts
//! created. Runs at start and then periodically, so a key whose deletion could not be
//! scheduled (AWS unreachable) is handled once AWS answers. Each attempt is claimed with a
//! conditional update before any AWS call, so an upload that finished meanwhile is never
//! touched; retries of the same attempt back off.

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::background::cluster::Membership;
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
    pub membership: Membership,
    pub interval: Duration,
    pub detailed_errors: bool,
}

enum Outcome {
    /// No AWS key was ever created for the attempt.
    NothingCreated,
    /// Every key found was scheduled for deletion (date of the last one).
    Scheduled(Vec<String>, Option<String>),
    /// AWS could not be asked or refused: try again later.
    Retry(Option<String>, String),
}

impl Cleaner {
    /// One pass; returns how many attempts were settled.
    /// Completed uploads whose CreateKey answer was lost: any key other than the upload's that
    /// carries the attempt's tag is scheduled for deletion.
    pub async fn sweep_duplicates(&self) -> usize {
        let done = match self.store.call(|c| attempts::uncertain_completed(c)).await {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "cleaner could not read the store");
                return 0;
            }
        };
        let mut swept = 0;
        for a in done {
            let Some(conn) = self.kms.find(&a.kms_id) else {
                continue;
            };
            let client = self.kms.client(conn, &a.region).await;
            let found = match kms::find_keys_tagged(&client, UPLOAD_TAG, &a.id).await {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(attempt = %a.id, error = %e, "could not look for duplicate keys yet");
                    continue;
                }
            };
            let mut all_done = true;
            for k in found.iter().filter(|k| Some(*k) != a.aws_key_id.as_ref()) {
                match kms::schedule_deletion(&client, k).await {
                    Ok(_) => {
                        tracing::warn!(attempt = %a.id, key_id = %k, "a second key of a completed upload was scheduled for deletion");
                        swept += 1;
                    }
                    Err(e) => {
                        tracing::warn!(attempt = %a.id, key_id = %k, error = %e, "could not schedule a duplicate key yet");
                        all_done = false;
                    }
                }
            }
            if all_done {
                let id = a.id.clone();
                if let Err(e) = self
                    .store
                    .call(move |c| attempts::clear_uncertain(c, &id))
                    .await
                {
                    tracing::error!(error = %e, "cleaner could not record an outcome");
                }
            }
        }
        swept
    }

    pub async fn run_once(&self) -> usize {
        let pending = match self
            .store
            .call(|c| {
                attempts::in_states(
                    c,
                    &[
                        state::CLEANUP_PENDING,
                        state::IN_PROGRESS,
                        state::CREATING,
                        state::CLEANING,
                    ],
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
            if self.live.contains(&a.id) || !self.due(&a) {
                continue;
            }
            // An attempt another live bridge runs (or cleans) is its own; that bridge's
            // death hands it over.
            if self
                .membership
                .owned_by_other_live_node(&self.store, a.node_id.as_deref())
                .await
            {
                continue;
            }
            let claimed = {
                let a = a.clone();
                let me = self.membership.node_id.clone();
                self.store.call(move |c| attempts::claim(c, &a, &me)).await
            };
            match claimed {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "cleaner could not claim an attempt");
                    continue;
                }
            }
            if self.settle(&a).await {
                settled += 1;
            }
        }
        settled
    }

    /// Attempts the cleaner already failed on wait `interval * 2^tries` (at most 64 intervals).
    fn due(&self, a: &Attempt) -> bool {
        if a.state != state::CLEANUP_PENDING || a.cleanup_tries == 0 {
            return true;
        }
        let Ok(last) = OffsetDateTime::parse(&a.updated_at, &Rfc3339) else {
            return true;
        };
        let wait = self.interval * 2u32.saturating_pow(a.cleanup_tries.min(6));
        OffsetDateTime::now_utc() - last >= wait
    }

    async fn settle(&self, a: &Attempt) -> bool {
        let Some(conn) = self.kms.find(&a.kms_id) else {
            tracing::error!(attempt = %a.id, kms = %a.kms_id, "attempt names a KMS that is no longer configured");
            let id = a.id.clone();
            let _ = self
                .store
                .call(move |c| {
                    attempts::cleanup_result(c, &id, Err("its KMS is no longer configured"))
                })
                .await;
            return false;
        };
        let client = self.kms.client(conn, &a.region).await;
        let outcome = match &a.aws_key_id {
            Some(k) => self.schedule(&client, std::slice::from_ref(k), a).await,
            // CreateKey's answer was lost (or the daemon died during it): look for the key by
            // the tag every upload puts on its key.
            None => match kms::find_keys_tagged(&client, UPLOAD_TAG, &a.id).await {
                Ok(found) if found.is_empty() => Outcome::NothingCreated,
                Ok(found) => self.schedule(&client, &found, a).await,
                Err(e) => Outcome::Retry(None, e.to_string()),
            },
        };
        let id = a.id.clone();
        let ok = !matches!(outcome, Outcome::Retry(..));
        match &outcome {
            Outcome::NothingCreated => {
                tracing::info!(attempt = %a.id, "failed attempt created no AWS key")
            }
            Outcome::Scheduled(keys, _) => {
                tracing::info!(attempt = %a.id, keys = ?keys, "half-made AWS key scheduled for deletion")
            }
            Outcome::Retry(_, e) if self.detailed_errors => {
                tracing::warn!(attempt = %a.id, error = %e, "half-made AWS key not scheduled for deletion yet")
            }
            Outcome::Retry(..) => {
                tracing::warn!(attempt = %a.id, "half-made AWS key not scheduled for deletion yet")
            }
        }
        let res = self
            .store
            .call(move |c| match outcome {
                Outcome::NothingCreated => {
                    attempts::finish(c, &id, state::FAILED, Some("no AWS key was created"))
                }
                Outcome::Scheduled(keys, date) => {
                    if let Some(k) = keys.first() {
                        attempts::set_key(c, &id, k)?;
                    }
                    attempts::cleanup_result(c, &id, Ok(date.as_deref()))
                }
                Outcome::Retry(key, e) => {
                    if let Some(k) = key {
                        attempts::set_key(c, &id, &k)?;
                    }
                    attempts::cleanup_result(c, &id, Err(&e))
                }
            })
            .await;
        if let Err(e) = res {
            tracing::error!(error = %e, "cleaner could not record an outcome");
        }
        ok
    }

    async fn schedule(
        &self,
        client: &aws_sdk_kms::Client,
        keys: &[String],
        a: &Attempt,
    ) -> Outcome {
        let mut date = None;
        for key in keys {
            // Deletion first, the alias second: a refused DeleteAlias leaves no key enabled.
            match kms::schedule_deletion(client, key).await {
                Ok(d) => {
                    date = d
                        .as_ref()
                        .and_then(|d| aws_time(Some(d)).as_str().map(str::to_owned))
                }
                Err(e) => return Outcome::Retry(Some(key.clone()), e.to_string()),
            }
            if let Some(alias) = &a.alias
                && let Err(e) = kms::delete_alias_of(client, alias, key).await
            {
                return Outcome::Retry(Some(key.clone()), e.to_string());
            }
        }
        Outcome::Scheduled(keys.to_vec(), date)
    }

    pub async fn run_forever(self) {
        loop {
            self.run_once().await;
            self.sweep_duplicates().await;
            tokio::time::sleep(self.interval).await;
        }
    }
}
