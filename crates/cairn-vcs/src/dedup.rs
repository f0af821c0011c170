//! Keys that keep one VCS change from creating duplicate work.
//!
//! A push and the pull-request event for the same commit often arrive together; Spacelift
//! deduplicates the runs they create per stack by commit SHA and run type. Providers also
//! redeliver the same webhook (retries, manual redelivery), which the delivery key catches.

use std::fmt;

use cairn_core::RunType;

use crate::Provider;

/// `(stack id, commit sha, run type)`: two events resolving to the same key create one run.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RunDedupKey {
    pub stack_id: String,
    /// Lower-cased so that the same commit written two ways is one key.
    pub commit_sha: String,
    pub run_type: RunType,
}

impl RunDedupKey {
    pub fn new(stack_id: &str, commit_sha: &str, run_type: RunType) -> Self {
        Self {
            stack_id: stack_id.to_string(),
            commit_sha: commit_sha.trim().to_ascii_lowercase(),
            run_type,
        }
    }
}

/// `stack/sha/TYPE`: the stack id is a slug and the SHA hex, so `/` cannot occur inside them.
impl fmt::Display for RunDedupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}",
            self.stack_id,
            self.commit_sha,
            self.run_type.as_str()
        )
    }
}

/// The idempotency key of a delivery: `provider:delivery-id`.
pub fn delivery_key(provider: Provider, delivery_id: &str) -> String {
    format!("{}:{}", provider.as_str(), delivery_id.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        let a = RunDedupKey::new("infra", "ABCDEF0123", RunType::Tracked);
        let b = RunDedupKey::new("infra", "abcdef0123", RunType::Tracked);
        let c = RunDedupKey::new("infra", "abcdef0123", RunType::Proposed);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.to_string(), "infra/abcdef0123/TRACKED");
        assert_eq!(
            delivery_key(Provider::GitHub, " 72d3162e "),
            "github:72d3162e"
        );
        assert_ne!(
            delivery_key(Provider::GitHub, "x"),
            delivery_key(Provider::GitLab, "x")
        );
    }
}
