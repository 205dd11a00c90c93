//! The tamper-evident audit trail: every upload, key action, vault change and export, sign-in,
//! refused request and configuration load is appended to a hash chain in the store; the
//! chain's head is sealed now and then with an HMAC computed by a key that never leaves the
//! bridge token. `verify` walks the chain and the seals and names the first entry that was
//! altered or removed.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::pkcs11::{Token, TokenError, ops};
use crate::store::audit::{self, Event};
use crate::store::{Db, Store, StoreError};

#[derive(Clone)]
pub struct Auditor {
    store: Store,
    token: Arc<Token>,
    /// Recorded with each seal: whose token's MAC it is.
    node_id: Arc<str>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("token: {0}")]
    Token(#[from] TokenError),
}

impl Auditor {
    pub fn new(store: Store, token: Arc<Token>, node_id: String) -> Self {
        Self {
            store,
            token,
            node_id: node_id.into(),
        }
    }

    /// Appends an event. A failure to record is logged (and the request goes on: the store
    /// being unwritable is answered by the request itself).
    pub async fn record(&self, e: Event) {
        let action = e.action.clone();
        if let Err(err) = self.store.call(move |c| audit::append(c, &e)).await {
            tracing::error!(error = %err, action, "could not append to the audit log");
        }
    }

    pub async fn event(
        &self,
        actor: &str,
        action: &str,
        outcome: &str,
        request_id: &str,
        detail: Value,
    ) {
        self.record(Event {
            actor: actor.to_owned(),
            action: action.to_owned(),
            outcome: outcome.to_owned(),
            request_id: request_id.to_owned(),
            detail,
        })
        .await;
    }

    /// Seals the current head (if it is not sealed yet) with the token's MAC.
    pub async fn seal(&self) -> Result<Option<i64>, AuditError> {
        let Some((seq, hash)) = self.store.call(|c| audit::head(c)).await? else {
            return Ok(None);
        };
        if self.store.call(move |c| audit::sealed(c, seq)).await? {
            return Ok(None);
        }
        let msg = audit::seal_message(seq, &hash);
        let mac = self
            .token
            .run(move |s| {
                let key = ops::audit_mac_key(s, true)?
                    .ok_or_else(|| TokenError::Refused("no audit MAC key".into()))?;
                ops::hmac_sha256(s, key, &msg)
            })
            .await?;
        self.store
            .call({
                let node = self.node_id.clone();
                move |c| audit::seal(c, seq, &hash, &mac, &node)
            })
            .await?;
        Ok(Some(seq))
    }

    /// Seals the head every `every` (and once at the start).
    pub async fn seal_forever(self, every: Duration) {
        loop {
            if let Err(e) = self.seal().await {
                tracing::error!(error = %e, "could not seal the audit log");
            }
            tokio::time::sleep(every).await;
        }
    }
}

/// What `verify` found.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The chain is whole: entries, seals, and the sequence number of the last seal.
    Intact {
        entries: usize,
        seals: usize,
        last_sealed: Option<i64>,
        /// Seals of other bridges of the store: their MAC is made by those bridges' tokens
        /// and checked there; here only that they seal the entries the chain holds.
        others: usize,
    },
    /// The first entry found altered or missing, and why.
    Broken { seq: i64, why: String },
}

/// Walks the chain and checks every seal's MAC in the token.
pub fn verify(
    conn: &Db,
    token_session: &cryptoki::session::Session,
) -> Result<Verdict, AuditError> {
    let entries = audit::all(conn)?;
    let seals = audit::seals(conn)?;
    verify_chain(&entries, &seals, token_session, None)
}

fn verify_chain(
    entries: &[(audit::Entry, String)],
    seals: &[audit::Seal],
    token_session: &cryptoki::session::Session,
    me: Option<&str>,
) -> Result<Verdict, AuditError> {
    let mut prev = audit::GENESIS.to_vec();
    let mut expected_seq = 1;
    let mut hashes = std::collections::BTreeMap::new();
    for (e, detail) in entries {
        if e.seq != expected_seq {
            return Ok(Verdict::Broken {
                seq: expected_seq,
                why: format!(
                    "entry {expected_seq} is missing (the chain goes from {} to {})",
                    expected_seq - 1,
                    e.seq
                ),
            });
        }
        if e.prev_hash != prev {
            return Ok(Verdict::Broken {
                seq: e.seq,
                why: format!(
                    "entry {} does not follow entry {} (an entry before it was altered or removed)",
                    e.seq,
                    e.seq - 1
                ),
            });
        }
        let h = audit::entry_hash(
            &prev,
            e.seq,
            [
                &e.at,
                &e.actor,
                &e.action,
                &e.outcome,
                &e.request_id,
                detail,
            ],
        );
        if h != e.hash {
            return Ok(Verdict::Broken {
                seq: e.seq,
                why: format!(
                    "entry {} was altered (its content does not match its hash)",
                    e.seq
                ),
            });
        }
        hashes.insert(e.seq, h.clone());
        prev = h;
        expected_seq += 1;
    }
    let key = ops::audit_mac_key(token_session, false)?;
    let mut last_sealed = None;
    let mut others = 0;
    for audit::Seal {
        seq,
        hash,
        mac,
        node_id,
    } in seals
    {
        let mine = match (node_id.as_deref(), me) {
            (Some(n), Some(me)) => n == me,
            _ => true,
        };
        if !mine {
            others += 1;
        }
        let Some(key) = key.filter(|_| mine) else {
            if !mine {
                match hashes.get(seq) {
                    Some(h) if h == hash => {}
                    _ => {
                        return Ok(Verdict::Broken {
                            seq: *seq,
                            why: format!(
                                "entry {seq} differs from the one another bridge sealed, or is missing"
                            ),
                        });
                    }
                }
                last_sealed = Some(*seq);
                continue;
            }
            return Ok(Verdict::Broken {
                seq: *seq,
                why: "the bridge token holds no audit MAC key to check the seals with".into(),
            });
        };
        let want = ops::hmac_sha256(token_session, key, &audit::seal_message(*seq, hash))?;
        if &want != mac {
            return Ok(Verdict::Broken {
                seq: *seq,
                why: format!(
                    "the seal of entry {seq} is not the token's (the seal was forged or altered)"
                ),
            });
        }
        match hashes.get(seq) {
            Some(h) if h == hash => {}
            Some(_) => {
                return Ok(Verdict::Broken {
                    seq: *seq,
                    why: format!("entry {seq} differs from the one that was sealed"),
                });
            }
            None => {
                return Ok(Verdict::Broken {
                    seq: expected_seq,
                    why: format!(
                        "entries {expected_seq} to {seq} are missing (entry {seq} was sealed)"
                    ),
                });
            }
        }
        last_sealed = Some(*seq);
    }
    Ok(Verdict::Intact {
        entries: entries.len(),
        seals: seals.len(),
        last_sealed,
        others,
    })
}

/// `hsm-bridge audit verify`: opens the store and the bridge token of `cfg` (read-only: the MAC
/// key is never created here) and verifies the whole trail.
pub fn verify_configured(cfg: &crate::config::Config) -> Result<Verdict, String> {
    let (entries, seals) = read_trail(cfg)?;
    let me = crate::background::cluster::Membership::from_config(&cfg.cluster).node_id;
    let tc = cfg.vault_token();
    let index = cfg
        .tokens
        .iter()
        .position(|t| t.name == tc.name)
        .unwrap_or_default();
    let modules = crate::pkcs11::token::Modules::default();
    let token = Token::open(&modules, tc, index).map_err(|e| format!("token {}: {e}", tc.name))?;
    token
        .run_blocking(|s| {
            verify_chain(&entries, &seals, s, Some(&me)).map_err(|e| match e {
                AuditError::Token(t) => t,
                AuditError::Store(st) => TokenError::Refused(st.to_string()),
            })
        })
        .map_err(|e| format!("token {}: {e}", tc.name))
}

/// The entries (with the detail text each hash covers) and the seals.
type Trail = (Vec<(audit::Entry, String)>, Vec<audit::Seal>);

/// The whole trail, read without changing the store (a SQLite file is opened read-only).
fn read_trail(cfg: &crate::config::Config) -> Result<Trail, String> {
    let what = cfg.store.describe();
    let read = |db: &Db| -> Result<_, StoreError> { Ok((audit::all(db)?, audit::seals(db)?)) };
    match cfg.store.location()? {
        crate::store::Location::Sqlite(path) => {
            let db = Store::open_read_only(path).map_err(|e| format!("{what}: {e}"))?;
            read(&db).map_err(|e| format!("{what}: {e}"))
        }
        location => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                let store = Store::open_at(location).await?;
                store.call(move |db| read(db)).await
            })
            .map_err(|e| format!("{what}: {e}"))
        }
    }
}
