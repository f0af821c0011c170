//! Outgoing notifications: webhooks, their delivery log, and the pull-request comment Cairn keeps
//! updated per stack (migration 0005).

use cairn_core::Nanos;

/// An endpoint notified of run state changes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WebhookRecord {
    pub id: String,
    pub url: String,
    /// Sealed by the server with its master key.
    pub secret: Vec<u8>,
    /// Empty: every stack.
    pub stack_id: String,
    /// `JSON` | `SLACK`.
    pub format: String,
    pub created_at: Nanos,
}

/// One notification to a webhook, rewritten after every attempt.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeliveryRecord {
    pub id: String,
    pub webhook_id: String,
    pub run_id: String,
    pub run_state: String,
    /// `PENDING` | `SUCCEEDED` | `FAILED`.
    pub status: String,
    /// 0 when no response arrived.
    pub status_code: i32,
    pub attempts: i32,
    pub error: String,
    pub created_at: Nanos,
    pub updated_at: Nanos,
}
