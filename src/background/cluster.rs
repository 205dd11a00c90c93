//! This bridge among those sharing the store: its name, its heartbeat, and the named leases
//! that keep work meant to run once (the schedules, the periodic synchronization) on one
//! node at a time. With SQLite the cluster is this one node, and the same code holds.

use std::time::Duration;

use crate::config::ClusterConfig;
use crate::store::Store;
use crate::store::cluster::{self, Node};

#[derive(Debug, Clone)]
pub struct Membership {
    pub node_id: String,
    pub host: String,
    pub started_at: String,
    pub heartbeat: Duration,
    /// A node not heard from for this long is dead.
    pub timeout: Duration,
}

fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

impl Membership {
    pub fn from_config(cfg: &ClusterConfig) -> Self {
        let host = host_name();
        Self {
            node_id: cfg.node_name.clone().unwrap_or_else(|| host.clone()),
            host,
            started_at: crate::store::now_rfc3339(),
            heartbeat: Duration::from_secs(cfg.heartbeat_secs),
            timeout: Duration::from_secs(cfg.node_timeout_secs),
        }
    }

    /// Nodes heard from at or after this Unix time are alive.
    pub fn alive_since(&self) -> i64 {
        now_unix() - self.timeout.as_secs() as i64
    }

    fn node(&self) -> Node {
        Node {
            node_id: self.node_id.clone(),
            host: self.host.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            started_at: self.started_at.clone(),
            seen_unix: now_unix(),
        }
    }

    /// Joins the cluster: refuses (with the reason) when another live bridge already goes by
    /// this node's name — it would take that bridge's work for its own. A name heard from
    /// lately may be this node's previous process, dead: it is watched for two heartbeats,
    /// and taken over if it stays silent.
    pub async fn join(&self, store: &Store) -> Result<(), String> {
        let seen = |store: &Store| {
            let id = self.node_id.clone();
            let store = store.clone();
            async move {
                store
                    .call(move |c| cluster::node(c, &id))
                    .await
                    .map_err(|e| e.to_string())
            }
        };
        if let Some(before) = seen(store).await?
            && before.seen_unix >= self.alive_since()
        {
            tracing::info!(node = %self.node_id, "this node's name was heard from lately; waiting to see whether it is alive");
            tokio::time::sleep(self.heartbeat * 2 + Duration::from_secs(1)).await;
            if let Some(after) = seen(store).await?
                && after.seen_unix > before.seen_unix
            {
                return Err(format!(
                    "another bridge goes by the node name \"{}\" (on {}, started {}) and is alive: give each bridge sharing the store its own [cluster] node_name",
                    self.node_id, after.host, after.started_at
                ));
            }
        }
        self.beat(store).await.map_err(|e| e.to_string())
    }

    pub async fn beat(&self, store: &Store) -> Result<(), crate::store::StoreError> {
        let node = self.node();
        store.call(move |c| cluster::heartbeat(c, &node)).await
    }

    /// Heartbeats until the process ends.
    pub async fn beat_forever(self, store: Store) {
        let mut failing = false;
        loop {
            tokio::time::sleep(self.heartbeat).await;
            match self.beat(&store).await {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!("cluster heartbeat recorded again");
                }
                Ok(()) => {}
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "cluster heartbeat could not be recorded");
                }
                Err(_) => {}
            }
        }
    }

    /// Takes or renews the lease `name` for one node timeout: whether this node holds it.
    /// A store that cannot be reached holds nothing.
    pub async fn lease(&self, store: &Store, name: &'static str) -> bool {
        self.lease_for(store, name, self.timeout).await
    }

    /// The same for `hold`: taken only once the last holder's time ran out (or renewed by
    /// this node, which holds it).
    pub async fn lease_for(&self, store: &Store, name: &'static str, hold: Duration) -> bool {
        let node = self.node_id.clone();
        let now = now_unix();
        let until = now + hold.as_secs() as i64;
        match store
            .call(move |c| cluster::try_lease(c, name, &node, now, until))
            .await
        {
            Ok(held) => held,
            Err(e) => {
                tracing::warn!(lease = name, error = %e, "work lease could not be taken");
                false
            }
        }
    }

    /// Whether `owner` (recorded on a row) is another node that is alive: its work is left
    /// to it. Unknown (store unreachable) counts as alive: nothing is taken over on a guess.
    pub async fn owned_by_other_live_node(&self, store: &Store, owner: Option<&str>) -> bool {
        let Some(owner) = owner.filter(|o| *o != self.node_id) else {
            return false;
        };
        let (me, owner, since) = (self.node_id.clone(), owner.to_owned(), self.alive_since());
        store
            .call(move |c| cluster::is_other_alive(c, &me, Some(&owner), since))
            .await
            .unwrap_or(true)
    }
}
