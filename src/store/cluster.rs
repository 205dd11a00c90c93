//! Several bridges on one store: node heartbeats, named work leases, and values every node
//! must agree on. A node is alive while its heartbeat is fresh; what a dead node owned (upload
//! attempts, job items, leases) passes to the others.

use serde::Serialize;

use super::{Db, Row, StoreError, params};

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Node {
    pub node_id: String,
    pub host: String,
    pub version: String,
    pub started_at: String,
    pub seen_unix: i64,
}

/// Records that `node` is alive at `now`.
pub fn heartbeat(conn: &Db, node: &Node) -> Result<(), StoreError> {
    conn.exec(
        "INSERT INTO cluster_nodes (node_id, host, version, started_at, seen_unix) \
         VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (node_id) DO UPDATE SET host = excluded.host, \
         version = excluded.version, started_at = excluded.started_at, seen_unix = excluded.seen_unix",
        params![
            node.node_id,
            node.host,
            node.version,
            node.started_at,
            node.seen_unix
        ],
    )?;
    Ok(())
}

const NODE_COLUMNS: &str = "node_id, host, version, started_at, seen_unix";

fn node_row(r: &Row) -> Result<Node, StoreError> {
    Ok(Node {
        node_id: r.get(0)?,
        host: r.get(1)?,
        version: r.get(2)?,
        started_at: r.get(3)?,
        seen_unix: r.get(4)?,
    })
}

/// The nodes heard from since `since`, by name.
pub fn members(conn: &Db, since: i64) -> Result<Vec<Node>, StoreError> {
    conn.query_map(
        &format!("SELECT {NODE_COLUMNS} FROM cluster_nodes WHERE seen_unix >= ?1 ORDER BY node_id"),
        params![since],
        node_row,
    )
}

/// The node named `node_id`, as last heard from.
pub fn node(conn: &Db, node_id: &str) -> Result<Option<Node>, StoreError> {
    conn.query_opt_map(
        &format!("SELECT {NODE_COLUMNS} FROM cluster_nodes WHERE node_id = ?1"),
        params![node_id],
        node_row,
    )
}

/// Whether `owner` (recorded on a row) should be left to finish its own work: it is
/// another node, and it was heard from since `since`.
pub fn is_other_alive(
    conn: &Db,
    me: &str,
    owner: Option<&str>,
    since: i64,
) -> Result<bool, StoreError> {
    let Some(other) = owner.filter(|n| *n != me) else {
        return Ok(false);
    };
    Ok(node(conn, other)?.is_some_and(|n| n.seen_unix >= since))
}

/// Takes or renews the lease `name` for `node` until `until`; `false` if another node holds
/// it and its lease has not run out at `now`.
pub fn try_lease(
    conn: &Db,
    name: &str,
    node: &str,
    now: i64,
    until: i64,
) -> Result<bool, StoreError> {
    Ok(conn.exec(
        "INSERT INTO work_leases (name, node_id, until_unix) VALUES (?1, ?2, ?3) \
         ON CONFLICT (name) DO UPDATE SET node_id = excluded.node_id, until_unix = excluded.until_unix \
         WHERE work_leases.node_id = excluded.node_id OR work_leases.until_unix < ?4",
        params![name, node, until, now],
    )? == 1)
}

/// Gives the lease up (at shutdown), if `node` holds it.
pub fn release_lease(conn: &Db, name: &str, node: &str) -> Result<(), StoreError> {
    conn.exec(
        "DELETE FROM work_leases WHERE name = ?1 AND node_id = ?2",
        params![name, node],
    )?;
    Ok(())
}

pub fn meta(conn: &Db, name: &str) -> Result<Option<String>, StoreError> {
    conn.query_opt_map(
        "SELECT value FROM store_meta WHERE name = ?1",
        params![name],
        |r| r.get(0),
    )
}

/// Stores `value` under `name` unless a value is there already; the value that holds.
pub fn meta_set_once(conn: &Db, name: &str, value: &str) -> Result<String, StoreError> {
    conn.exec(
        "INSERT INTO store_meta (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING",
        params![name, value],
    )?;
    meta(conn, name)?.ok_or_else(|| StoreError::Corrupt(format!("store_meta {name} vanished")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::each_backend;

    fn node(id: &str, seen: i64) -> Node {
        Node {
            node_id: id.into(),
            host: "h".into(),
            version: "1".into(),
            started_at: "t".into(),
            seen_unix: seen,
        }
    }

    #[test]
    fn members_are_the_nodes_heard_from_lately() {
        each_backend(|c| {
            heartbeat(c, &node("a", 100)).expect("a");
            heartbeat(c, &node("b", 50)).expect("b");
            heartbeat(c, &node("b", 120)).expect("b again");
            let m = members(c, 90).expect("members");
            assert_eq!(m, vec![node("a", 100), node("b", 120)]);
            assert_eq!(members(c, 110).expect("m").len(), 1);
            assert!(is_other_alive(c, "a", Some("b"), 110).expect("b"));
            assert!(
                !is_other_alive(c, "a", Some("a"), 0).expect("me"),
                "my own work is mine"
            );
            assert!(!is_other_alive(c, "b", Some("a"), 110).expect("a is stale"));
            assert!(!is_other_alive(c, "b", Some("z"), 0).expect("never seen"));
            assert!(!is_other_alive(c, "b", None, 0).expect("no owner"));
        });
    }

    #[test]
    fn a_lease_is_held_by_one_node_until_it_runs_out() {
        each_backend(|c| {
            assert!(try_lease(c, "sync", "a", 0, 30).expect("a takes it"));
            assert!(!try_lease(c, "sync", "b", 10, 40).expect("b waits"));
            assert!(try_lease(c, "sync", "a", 20, 50).expect("a renews"));
            assert!(!try_lease(c, "sync", "b", 40, 70).expect("still a's"));
            assert!(try_lease(c, "sync", "b", 51, 80).expect("ran out: b takes over"));
            assert!(!try_lease(c, "sync", "a", 52, 82).expect("a lost it"));
            release_lease(c, "sync", "a").expect("not a's to release");
            assert!(!try_lease(c, "sync", "a", 53, 83).expect("still b's"));
            release_lease(c, "sync", "b").expect("release");
            assert!(try_lease(c, "sync", "a", 54, 84).expect("free again"));
        });
    }

    #[test]
    fn a_shared_value_is_set_once() {
        each_backend(|c| {
            assert_eq!(meta(c, "kek").expect("none"), None);
            assert_eq!(meta_set_once(c, "kek", "v1").expect("set"), "v1");
            assert_eq!(meta_set_once(c, "kek", "v2").expect("kept"), "v1");
        });
    }
}
