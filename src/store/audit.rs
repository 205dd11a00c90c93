//! The audit log: entries appended in order, each carrying the SHA-256 of the one before it
//! (a hash chain), and seals: the chain's head at some entry with a MAC over it computed in the
//! bridge token. Entries hold who did what and how it ended, never material, tokens or
//! passwords.

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{Db, Row, StoreError, now_rfc3339, params};

/// What happened, as the caller of [`append`] says it.
#[derive(Debug, Clone)]
pub struct Event {
    pub actor: String,
    pub action: String,
    pub outcome: String,
    pub request_id: String,
    pub detail: serde_json::Value,
}

#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub seq: i64,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub outcome: String,
    pub request_id: String,
    pub detail: serde_json::Value,
    #[serde(serialize_with = "hex_bytes")]
    pub prev_hash: Vec<u8>,
    #[serde(serialize_with = "hex_bytes")]
    pub hash: Vec<u8>,
}

fn hex_bytes<S: serde::Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(b))
}

/// The hash of the first entry's predecessor.
pub const GENESIS: [u8; 32] = [0u8; 32];

/// The hash of an entry: SHA-256 over its predecessor's hash and each field, length-prefixed
/// so that no two different entries hash alike.
/// `fields`: at, actor, action, outcome, request id, detail (as stored).
pub fn entry_hash(prev: &[u8], seq: i64, fields: [&str; 6]) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(b"hsm-bridge audit v1");
    h.update(prev);
    h.update(seq.to_be_bytes());
    for f in fields {
        h.update((f.len() as u64).to_be_bytes());
        h.update(f.as_bytes());
    }
    h.finalize().to_vec()
}

/// Appends an entry after the current head; its sequence number.
pub fn append(conn: &mut Db, e: &Event) -> Result<i64, StoreError> {
    let tx = conn.transaction()?;
    let seq = append_in(&tx, e)?;
    tx.commit()?;
    Ok(seq)
}

/// The same, within a transaction the caller commits: the entry is kept exactly when what it
/// tells of is.
pub fn append_in(tx: &Db, e: &Event) -> Result<i64, StoreError> {
    if !tx.in_transaction() {
        // Reading the head and appending after it must be one step.
        return Err(StoreError::Worker(
            "an audit entry is appended within a transaction".into(),
        ));
    }
    // One chain for every bridge on the store: appenders take turns (SQLite's write lock
    // does this by itself).
    if tx.dialect() == super::Dialect::Postgres {
        tx.batch("SELECT pg_advisory_xact_lock(7205759403792794)")?;
    }
    let last: Option<(i64, Vec<u8>)> = tx.query_opt_map(
        "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1",
        params![],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let (seq, prev) = match last {
        Some((s, h)) => (s + 1, h),
        None => (1, GENESIS.to_vec()),
    };
    let at = now_rfc3339();
    let detail = e.detail.to_string();
    let hash = entry_hash(
        &prev,
        seq,
        [&at, &e.actor, &e.action, &e.outcome, &e.request_id, &detail],
    );
    tx.exec("INSERT INTO audit_log (seq, at, actor, action, outcome, request_id, detail, prev_hash, hash) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            seq,
            at,
            e.actor,
            e.action,
            e.outcome,
            e.request_id,
            detail,
            prev,
            hash
        ],
    )?;
    Ok(seq)
}

fn from_row(r: &Row) -> Result<(Entry, String), StoreError> {
    let detail: String = r.get(6)?;
    Ok((
        Entry {
            seq: r.get(0)?,
            at: r.get(1)?,
            actor: r.get(2)?,
            action: r.get(3)?,
            outcome: r.get(4)?,
            request_id: r.get(5)?,
            detail: serde_json::from_str(&detail)
                .unwrap_or(serde_json::Value::String(detail.clone())),
            prev_hash: r.get(7)?,
            hash: r.get(8)?,
        },
        detail,
    ))
}

const COLUMNS: &str = "seq, at, actor, action, outcome, request_id, detail, prev_hash, hash";

/// Newest first.
pub fn list(conn: &Db, skip: u32, limit: u32) -> Result<(u64, Vec<Entry>), StoreError> {
    let total: u64 =
        conn.query_one_map("SELECT COUNT(*) FROM audit_log", params![], |r| r.get(0))?;
    let stmt = conn.prepare_sql(&format!(
        "SELECT {COLUMNS} FROM audit_log ORDER BY seq DESC LIMIT ?1 OFFSET ?2"
    ))?;
    let rows = stmt
        .query_map(params![limit, skip], from_row)?
        .map(|r| r.map(|(e, _)| e))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((total, rows))
}

/// The head of the chain: (seq, hash).
pub fn head(conn: &Db) -> Result<Option<(i64, Vec<u8>)>, StoreError> {
    conn.query_opt_map(
        "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1",
        params![],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
}

/// Whether the head has been sealed already.
pub fn sealed(conn: &Db, seq: i64) -> Result<bool, StoreError> {
    Ok(conn
        .query_opt_map(
            "SELECT 1 FROM audit_seals WHERE seq = ?1",
            [seq],
            |_| Ok(()),
        )?
        .is_some())
}

pub fn seal(conn: &Db, seq: i64, hash: &[u8], mac: &[u8], node: &str) -> Result<(), StoreError> {
    conn.exec(
        "INSERT INTO audit_seals (seq, hash, mac, at, node_id) VALUES (?1, ?2, ?3, ?4, ?5) \
         ON CONFLICT (seq) DO NOTHING",
        params![seq, hash, mac, now_rfc3339(), node],
    )?;
    Ok(())
}

/// The message a seal's MAC is computed over: the sealed entry, its hash, and (for seals
/// made since bridges share stores) the node whose token computed it, so that a seal cannot
/// be passed off as another node's.
pub fn seal_message(seq: i64, hash: &[u8], node: Option<&str>) -> Vec<u8> {
    let mut m = match node {
        None => b"hsm-bridge audit seal v1".to_vec(),
        Some(_) => b"hsm-bridge audit seal v2".to_vec(),
    };
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(hash);
    if let Some(n) = node {
        m.extend_from_slice(&(n.len() as u32).to_be_bytes());
        m.extend_from_slice(n.as_bytes());
    }
    m
}

/// Every entry, oldest first, with its stored detail text (what the hash covers).
pub fn all(conn: &Db) -> Result<Vec<(Entry, String)>, StoreError> {
    let stmt = conn.prepare_sql(&format!("SELECT {COLUMNS} FROM audit_log ORDER BY seq"))?;
    let rows = stmt
        .query_map(params![], from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// A sealed head: the entry, its hash, and the token's MAC over both.
pub struct Seal {
    pub seq: i64,
    pub hash: Vec<u8>,
    pub mac: Vec<u8>,
    /// The bridge whose token computed the MAC (none for seals older than clusters).
    pub node_id: Option<String>,
}

/// Every seal, oldest first.
pub fn seals(conn: &Db) -> Result<Vec<Seal>, StoreError> {
    let stmt = conn.prepare_sql("SELECT seq, hash, mac, node_id FROM audit_seals ORDER BY seq")?;
    let rows = stmt
        .query_map(params![], |r| {
            Ok(Seal {
                seq: r.get(0)?,
                hash: r.get(1)?,
                mac: r.get(2)?,
                node_id: r.get(3)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}
