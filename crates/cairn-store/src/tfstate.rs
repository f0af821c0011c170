//! Terraform/OpenTofu state kept by Cairn: append-only state versions and one lock per
//! (stack, deployment). The HTTP state backend in cairn-server is their only writer.

use cairn_core::Nanos;

/// One stored state snapshot. The current state of a deployment is its highest `serial`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StateVersion {
    pub stack_id: String,
    pub deployment: String,
    /// Terraform's `serial`: strictly increasing within one lineage.
    pub serial: i64,
    /// Terraform's `lineage`: every version of a deployment shares the first one's.
    pub lineage: String,
    /// The state document exactly as Terraform sent it.
    pub body: Vec<u8>,
    /// The state's `outputs` object with sensitive values redacted (JSON).
    pub outputs_json: String,
    pub created_at: Nanos,
    /// The run whose Terraform wrote this version (or that an import queued).
    pub created_by_run: String,
    /// Why the version exists when it is not a plain Terraform write (a restore, an import):
    /// what happened and who did it. Empty for Terraform's own writes.
    pub note: String,
}

/// A held state lock.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StateLock {
    pub stack_id: String,
    pub deployment: String,
    /// The lock ID Terraform generated (its LockInfo `ID`).
    pub id: String,
    /// The run whose Terraform holds the lock.
    pub holder_run_id: String,
    /// The worker that ran the holder's Terraform (its lease's worker); empty if none.
    pub holder_worker_id: String,
    /// Terraform's LockInfo document as it was sent.
    pub info_json: String,
    pub created_at: Nanos,
}

/// What an attempt to take a state lock found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockAttempt {
    /// The lock is now held as asked (also when it already was, with the same id and holder).
    Acquired(StateLock),
    /// Someone else holds it; nothing changed.
    Held(StateLock),
}

/// What a release of a state lock found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnlockOutcome {
    Released(StateLock),
    /// No lock was held.
    NotLocked,
    /// A lock with another id is held; nothing changed.
    HeldByOther(StateLock),
}
