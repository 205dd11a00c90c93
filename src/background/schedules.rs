//! Keys whose time has come: scheduled rotations and material lease renewals. Checked every `schedules.check_interval_secs`, worked one key at a time, paced
//! to `schedules.keys_per_minute`.

use std::sync::Arc;
use std::time::Duration;

use crate::background::cluster::Membership;
use crate::cckm::manage::KeyManager;
use crate::config::SchedulesConfig;
use crate::store::Store;

/// The bridge that holds this lease works the schedules; it renews it before each key, and
/// stops its pass if it lost it (its store was out of reach longer than a node timeout).
const LEASE: &str = "schedules";

pub struct Scheduler {
    pub keys: Arc<KeyManager>,
    pub cfg: SchedulesConfig,
    pub store: Store,
    pub membership: Membership,
}

impl Scheduler {
    pub async fn run_forever(self) {
        let every = Duration::from_secs(self.cfg.check_interval_secs.max(1));
        let pace = Duration::from_secs_f64(60.0 / f64::from(self.cfg.keys_per_minute.max(1)));
        loop {
            tokio::time::sleep(every).await;
            if !self.membership.lease(&self.store, LEASE).await {
                continue;
            }
            match self.keys.due_rotations().await {
                Ok(ids) => {
                    for id in ids {
                        if !self.membership.lease(&self.store, LEASE).await {
                            break;
                        }
                        self.keys.run_scheduled_rotation(&id, every.as_secs()).await;
                        tokio::time::sleep(pace).await;
                    }
                }
                Err(e) => tracing::error!(error = %e, "could not look for due rotations"),
            }
            match self.keys.due_renewals().await {
                Ok(ids) => {
                    for id in ids {
                        if !self.membership.lease(&self.store, LEASE).await {
                            break;
                        }
                        self.keys.renew_lease(&id, every.as_secs()).await;
                        tokio::time::sleep(pace).await;
                    }
                }
                Err(e) => tracing::error!(error = %e, "could not look for due lease renewals"),
            }
        }
    }
}
