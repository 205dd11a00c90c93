//! Failed password grants slow down, then lock, the user and the source address they came from:
//! each failure makes the next attempt wait longer, and `threshold` failures in a row lock it
//! for `lockout` (even a right password is refused then). A success clears the user's count.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Who a sign-in is counted against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject {
    User(String),
    Address(std::net::IpAddr),
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    locked_until: Option<Instant>,
}

pub struct LoginGuard {
    threshold: u32,
    lockout: Duration,
    state: Mutex<HashMap<Subject, Failures>>,
}

/// The longest a failed attempt slows the next one down.
const MAX_DELAY: Duration = Duration::from_secs(2);
/// Entries kept before old ones are dropped.
const MAX_ENTRIES: usize = 10_000;

impl LoginGuard {
    pub fn new(threshold: u32, lockout: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            lockout,
            state: Mutex::new(HashMap::new()),
        }
    }

    /// How long the subjects are still locked, if any is; else how long to wait before checking
    /// the password (the slow-down).
    pub fn check(&self, subjects: &[Subject]) -> Result<Duration, Duration> {
        let now = Instant::now();
        let Ok(mut st) = self.state.lock() else {
            return Ok(Duration::ZERO);
        };
        let mut delay = Duration::ZERO;
        for s in subjects {
            let Some(f) = st.get_mut(s) else { continue };
            if let Some(until) = f.locked_until {
                if until > now {
                    return Err(until - now);
                }
                // The lock has run out: start again.
                *f = Failures {
                    count: 0,
                    last: now,
                    locked_until: None,
                };
            }
            if now.duration_since(f.last) > self.lockout {
                f.count = 0;
            }
            delay = delay.max((Duration::from_millis(250) * f.count).min(MAX_DELAY));
        }
        Ok(delay)
    }

    /// Counts a failure; the subjects this locked.
    pub fn failed(&self, subjects: &[Subject]) -> Vec<Subject> {
        let now = Instant::now();
        let Ok(mut st) = self.state.lock() else {
            return Vec::new();
        };
        if st.len() > MAX_ENTRIES {
            let lockout = self.lockout;
            st.retain(|_, f| {
                now.duration_since(f.last) < lockout || f.locked_until.is_some_and(|u| u > now)
            });
        }
        let mut locked = Vec::new();
        for s in subjects {
            let f = st.entry(s.clone()).or_insert(Failures {
                count: 0,
                last: now,
                locked_until: None,
            });
            f.count += 1;
            f.last = now;
            if f.count >= self.threshold && f.locked_until.is_none() {
                f.locked_until = Some(now + self.lockout);
                locked.push(s.clone());
            }
        }
        locked
    }

    /// A right password: the user's failures are forgotten (the address keeps its count, so
    /// that one good account does not shield guessing at others).
    pub fn succeeded(&self, user: &Subject) {
        if let Ok(mut st) = self.state.lock() {
            st.remove(user);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_slow_down_then_lock_until_the_lockout_ends() {
        let g = LoginGuard::new(3, Duration::from_millis(300));
        let who = [Subject::User("mallory".into())];
        assert_eq!(g.check(&who), Ok(Duration::ZERO));
        assert!(g.failed(&who).is_empty());
        assert_eq!(g.check(&who), Ok(Duration::from_millis(250)));
        assert!(g.failed(&who).is_empty());
        assert_eq!(g.failed(&who), who.to_vec());
        assert!(g.check(&who).is_err(), "locked");
        std::thread::sleep(Duration::from_millis(350));
        assert_eq!(g.check(&who), Ok(Duration::ZERO), "the lock ran out");
    }

    #[test]
    fn success_clears_the_user_not_the_address() {
        let g = LoginGuard::new(2, Duration::from_secs(60));
        let user = Subject::User("alice".into());
        let addr = Subject::Address("127.0.0.1".parse().expect("ip"));
        g.failed(&[user.clone(), addr.clone()]);
        g.succeeded(&user);
        assert_eq!(g.check(std::slice::from_ref(&user)), Ok(Duration::ZERO));
        assert_eq!(g.failed(std::slice::from_ref(&addr)), vec![addr.clone()]);
        assert!(g.check(&[Subject::User("bob".into()), addr]).is_err());
    }
}
