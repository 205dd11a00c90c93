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
        let msg = audit::seal_message(seq, &hash, Some(&self.node_id));
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

/// Who is verifying, where bridges share the store: this node's name and every node the
/// store has known.
pub struct ClusterView {
    pub me: String,
    pub members: Vec<String>,
}

fn verify_chain(
    entries: &[(audit::Entry, String)],
    seals: &[audit::Seal],
    token_session: &cryptoki::session::Session,
    cluster: Option<&ClusterView>,
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
        let msg = audit::seal_message(*seq, hash, node_id.as_deref());
        let verified = match key {
            Some(k) => &ops::hmac_sha256(token_session, k, &msg)? == mac,
            None => false,
        };
        if !verified {
            // Another member's seal is checked on that member; any other seal that this
            // token did not make is broken.
            let foreign = match (cluster, node_id.as_deref()) {
                (Some(c), Some(n)) => n != c.me && c.members.iter().any(|m| m == n),
                _ => false,
            };
            if !foreign {
                let why = if key.is_none() {
                    "the bridge token holds no audit MAC key to check the seals with".to_owned()
                } else {
                    format!(
                        "the seal of entry {seq} is not the token's (the seal was forged or altered)"
                    )
                };
                return Ok(Verdict::Broken { seq: *seq, why });
            }
            others += 1;
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
    let (entries, seals, cluster) = read_trail(cfg)?;
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
            verify_chain(&entries, &seals, s, cluster.as_ref()).map_err(|e| match e {
                AuditError::Token(t) => t,
                AuditError::Store(st) => TokenError::Refused(st.to_string()),
            })
        })
        .map_err(|e| format!("token {}: {e}", tc.name))
}

/// The entries (with the detail text each hash covers), the seals, and (PostgreSQL) the
/// cluster as the store knows it.
type Trail = (
    Vec<(audit::Entry, String)>,
    Vec<audit::Seal>,
    Option<ClusterView>,
);

/// The whole trail, read without changing the store (a SQLite file is opened read-only).
fn read_trail(cfg: &crate::config::Config) -> Result<Trail, String> {
    let what = cfg.store.describe();
    let read = |db: &Db| -> Result<_, StoreError> { Ok((audit::all(db)?, audit::seals(db)?)) };
    match cfg.store.location()? {
        // One bridge: every seal is this token's.
        crate::store::Location::Sqlite(path) => {
            let db = Store::open_read_only(path).map_err(|e| format!("{what}: {e}"))?;
            let (entries, seals) = read(&db).map_err(|e| format!("{what}: {e}"))?;
            Ok((entries, seals, None))
        }
        location => {
            let me = crate::background::cluster::Membership::from_config(&cfg.cluster).node_id;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                let store = Store::open_at(location).await?;
                store
                    .call(move |db| {
                        let (entries, seals) = read(db)?;
                        let members = crate::store::cluster::members(db, i64::MIN)?
                            .into_iter()
                            .map(|n| n.node_id)
                            .collect();
                        Ok((entries, seals, Some(ClusterView { me, members })))
                    })
                    .await
            })
            .map_err(|e| format!("{what}: {e}"))
        }
    }
}
