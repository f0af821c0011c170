//! Worker pools, workers and leases.

use serde::{Deserialize, Serialize};

use crate::Nanos;

/// The pool every stack without a worker pool runs on.
pub const DEFAULT_POOL: &str = "default";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerPool {
    pub id: String,
    pub name: String,
    pub labels: Vec<String>,
    /// Hex SHA-256 of the pool token.
    pub token_hash: String,
    pub created_at: Nanos,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Worker {
    pub id: String,
    pub pool_id: String,
    pub name: String,
    pub labels: Vec<String>,
    pub max_jobs: i32,
    pub last_heartbeat_at: Nanos,
    pub connected: bool,
}

/// What a lease asks the worker to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseKind {
    Plan,
    Apply,
}

/// A run held by a worker. A lease whose heartbeat is older than the lease timeout is expired:
/// its run fails ("worker lost") and the stack takes its next run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub id: String,
    pub run_id: String,
    pub stack_id: String,
    pub worker_id: String,
    pub kind: LeaseKind,
    pub created_at: Nanos,
    pub heartbeat_at: Nanos,
}

impl Lease {
    pub fn is_expired(&self, now: Nanos, timeout_nanos: i64) -> bool {
        now.saturating_sub(self.heartbeat_at) > timeout_nanos
    }
}
