//! `[jobs]`: bulk upload jobs (`POST /api/v1/cckm/aws/upload-jobs`).

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsConfig {
    /// Uploads of a job in flight at once. The request limiter paces their AWS calls, so more
    /// only helps while the calls of one upload wait on AWS rather than on a quota.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Runs of an item that fails for a reason that may pass (AWS, a token or the store out
    /// of reach) before it is reported failed.
    #[serde(default = "default_item_attempts")]
    pub item_attempts: u32,
    /// The most items one job may hold.
    #[serde(default = "default_max_items")]
    pub max_items: usize,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            concurrency: default_concurrency(),
            item_attempts: default_item_attempts(),
            max_items: default_max_items(),
        }
    }
}

fn default_concurrency() -> usize {
    8
}

fn default_item_attempts() -> u32 {
    5
}

fn default_max_items() -> usize {
    10_000
}

impl JobsConfig {
    pub fn check(&self) -> Result<(), (&'static str, &'static str)> {
        if !(1..=64).contains(&self.concurrency) {
            return Err(("jobs.concurrency", "must be 1 to 64"));
        }
        if !(1..=20).contains(&self.item_attempts) {
            return Err(("jobs.item_attempts", "must be 1 to 20"));
        }
        if !(1..=100_000).contains(&self.max_items) {
            return Err(("jobs.max_items", "must be 1 to 100000"));
        }
        Ok(())
    }
}
