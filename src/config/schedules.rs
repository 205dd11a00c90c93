//! `[schedules]`: work the bridge does when a key's time comes: scheduled rotations and the
//! renewal of material leases.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulesConfig {
    /// How often due rotations and renewals are looked for.
    #[serde(default = "default_check")]
    pub check_interval_secs: u64,
    /// At most this many keys are rotated or renewed per minute (each takes about ten AWS
    /// calls, GetParametersForImport among them, whose quota is far lower than the others').
    #[serde(default = "default_rate")]
    pub keys_per_minute: u32,
    /// Test configurations only: rotation periods and leases may be given in seconds
    /// (`rotation_period_secs`, `lease_secs`), so that a test sees them come due.
    #[serde(default)]
    pub allow_seconds: bool,
}

impl Default for SchedulesConfig {
    fn default() -> Self {
        Self {
            check_interval_secs: default_check(),
            keys_per_minute: default_rate(),
            allow_seconds: false,
        }
    }
}

fn default_check() -> u64 {
    60
}

fn default_rate() -> u32 {
    30
}

impl SchedulesConfig {
    pub fn check(&self) -> Result<(), (&'static str, &'static str)> {
        if !(1..=3600).contains(&self.check_interval_secs) {
            return Err(("schedules.check_interval_secs", "must be 1 to 3600"));
        }
        if !(1..=600).contains(&self.keys_per_minute) {
            return Err(("schedules.keys_per_minute", "must be 1 to 600"));
        }
        Ok(())
    }
}
