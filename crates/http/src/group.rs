//! Cluster-wide reads: the instance asked sums the group's KPIs from its
//! own snapshot and every other owner's share, fetched from its
//! `/internal/v1/partial`, as Kafka Streams' interactive queries would have
//! an application do by hand. `/metrics` stays per instance (the recording
//! rules sum it).

use std::collections::{BTreeMap, BTreeSet};
use std::net::ToSocketAddrs;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use pulse_engine::{Partial, ShardId, Snapshot};

use crate::api::ApiError;
use crate::AppState;

/// Where a shard's state is served, as this instance sees the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardOwner {
    Here,
    /// Another instance, serving HTTP at this `host:port`.
    At(String),
    /// No instance owns it right now (a rebalance is under way).
    Unknown,
}

/// The consumer group's membership.
pub trait Group: Send + Sync {
    /// Every shard's owner, by shard number.
    fn owners(&self) -> Vec<ShardOwner>;
}

/// How long one owner may take to send its share.
const PEER_TIMEOUT: Duration = Duration::from_secs(2);

fn unavailable(why: String) -> ApiError {
    ApiError(StatusCode::SERVICE_UNAVAILABLE, why)
}

/// This instance's share: its snapshot's totals and the shards it owns.
pub(crate) async fn partial(State(state): State<Arc<AppState>>) -> Json<Partial> {
    let mine = match &state.group {
        Some(group) => group
            .owners()
            .iter()
            .enumerate()
            .filter(|(_, o)| **o == ShardOwner::Here)
            .map(|(s, _)| s as ShardId)
            .collect(),
        None => Vec::new(),
    };
    Json(state.snapshot.get().partial(mine))
}

/// The whole group's KPIs: this instance's snapshot plus every other
/// owner's share. 503, with the reason, while a partition has no owner, an
/// owner does not answer, or the shares do not cover every partition once
/// (ownership moving between instances).
pub(crate) async fn group_snapshot(state: &AppState) -> Result<Arc<Snapshot>, ApiError> {
    let local = state.snapshot.get();
    let Some(group) = &state.group else { return Ok(local) };
    let owners = group.owners();
    let mut by_owner: BTreeMap<&str, Vec<ShardId>> = BTreeMap::new();
    let mut covered: BTreeSet<ShardId> = BTreeSet::new();
    for (shard, owner) in owners.iter().enumerate() {
        let shard = shard as ShardId;
        match owner {
            ShardOwner::Here => {
                covered.insert(shard);
            }
            ShardOwner::At(address) => by_owner.entry(address).or_default().push(shard),
            ShardOwner::Unknown => {
                return Err(unavailable(format!(
                    "partition {shard} has no owner right now (a rebalance is under way); retry shortly"
                )))
            }
        }
    }
    if by_owner.is_empty() {
        return Ok(local);
    }
    let mut merged = (*local).clone();
    for address in by_owner.keys() {
        let share = fetch_partial(address).await.map_err(|e| {
            unavailable(format!("the instance at {address} did not send its share of the KPIs ({e}); retry shortly"))
        })?;
        for &shard in &share.shards {
            if !covered.insert(shard) {
                return Err(unavailable(format!(
                    "partition {shard} is counted by two instances while it moves between them; retry shortly"
                )));
            }
        }
        merged.merge(&share);
    }
    let missing: Vec<ShardId> = (0..owners.len() as ShardId).filter(|s| !covered.contains(s)).collect();
    if !missing.is_empty() {
        return Err(unavailable(format!(
            "no instance answered for partitions {missing:?} (they are moving between instances); retry shortly"
        )));
    }
    Ok(Arc::new(merged))
}

/// `GET /internal/v1/partial` of another instance: plain HTTP/1.0 on the
/// group's internal network (no client library), on a blocking thread with
/// socket timeouts.
async fn fetch_partial(address: &str) -> Result<Partial, String> {
    let address = address.to_owned();
    let response = tokio::task::spawn_blocking(move || get_partial(&address))
        .await
        .map_err(|e| format!("the request task failed: {e}"))??;
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").ok_or("a response without a body")?;
    let (head, body) = (&response[..split], &response[split + 4..]);
    let status = String::from_utf8_lossy(head).split(' ').nth(1).unwrap_or_default().to_owned();
    if status != "200" {
        return Err(format!("HTTP {status}"));
    }
    serde_json::from_slice(body).map_err(|e| format!("an unreadable share: {e}"))
}

fn get_partial(address: &str) -> Result<Vec<u8>, String> {
    use std::io::{Read, Write};
    let socket = address
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .next()
        .ok_or_else(|| format!("`{address}` names no address"))?;
    let mut stream = std::net::TcpStream::connect_timeout(&socket, PEER_TIMEOUT).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(PEER_TIMEOUT)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(PEER_TIMEOUT)).map_err(|e| e.to_string())?;
    write!(stream, "GET /internal/v1/partial HTTP/1.0\r\nHost: {address}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).map_err(|e| e.to_string())?;
    Ok(response)
}
