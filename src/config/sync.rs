//! `[sync]`: the periodic synchronization of records with AWS.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    /// Seconds between two periodic synchronizations of every record; 0 turns it off.
    #[serde(default = "default_interval")]
    pub interval_secs: u64,
    /// At most this many keys are re-read per second (each takes five read calls, far inside
    /// AWS's DescribeKey quota of 2,000 per second).
    #[serde(default = "default_rate")]
    pub keys_per_second: u32,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            interval_secs: default_interval(),
            keys_per_second: default_rate(),
        }
    }
}

fn default_interval() -> u64 {
    3600
}

fn default_rate() -> u32 {
    10
}

impl SyncConfig {
    pub fn check(&self) -> Result<(), (&'static str, &'static str)> {
        if !(1..=100).contains(&self.keys_per_second) {
            return Err(("sync.keys_per_second", "must be 1 to 100"));
        }
        Ok(())
    }
}
