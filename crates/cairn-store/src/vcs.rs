//! VCS integrations, received webhook deliveries (stored before they are acknowledged, so that
//! a crash between the 2xx and the processing loses nothing) and the refs a plain-Git poller
//! last saw per repository.

use cairn_core::Nanos;

/// A connection to a VCS provider. Secrets are stored as the caller hands them over (the server
/// seals them with its master key first).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VcsIntegration {
    pub id: String,
    /// `GITHUB` | `GITLAB` | `GIT`.
    pub provider: String,
    pub api_base_url: String,
    pub webhook_secret: Vec<u8>,
    pub token: Vec<u8>,
    /// 0 = never poll.
    pub poll_interval_seconds: i32,
    pub created_at: Nanos,
}

/// One received delivery.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VcsEventRecord {
    pub id: String,
    pub integration_id: String,
    /// `github` | `gitlab`.
    pub provider: String,
    /// Unique per integration: a second delivery with the same id is a duplicate.
    pub delivery_id: String,
    /// The provider's event header value (`push`, `Merge Request Hook`).
    pub event_type: String,
    pub payload: Vec<u8>,
    pub received_at: Nanos,
    /// 0 while not processed.
    pub processed_at: Nanos,
    /// What processing did (run ids, or why nothing), for inspection.
    pub result: String,
}

/// A ref as `git ls-remote` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default, PartialOrd, Ord)]
pub struct GitRefRecord {
    /// Full ref name (`refs/heads/main`).
    pub name: String,
    pub sha: String,
}

/// The newest normalized pull-request event of one pull request (see
/// [`crate::Store::put_pull_request`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PullRequestRecord {
    pub integration_id: String,
    /// `owner/name` of the base repository.
    pub repository: String,
    pub number: i64,
    /// The event as the VCS layer serializes it; the store never looks inside.
    pub event_json: String,
    pub updated_at: Nanos,
}
