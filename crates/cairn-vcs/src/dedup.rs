//! Keys that keep one VCS change from creating duplicate work.
//!
//! A push and the pull-request event for the same commit often arrive together; Spacelift
//! deduplicates the runs they create per stack by commit SHA and run type — that key is
//! `cairn_core::Run::dedup_key`, kept unique by the store. Providers also redeliver the same
//! webhook (retries, manual redelivery), which the delivery key catches.

use crate::Provider;

/// The idempotency key of a delivery: `provider:delivery-id`.
pub fn delivery_key(provider: Provider, delivery_id: &str) -> String {
    format!("{}:{}", provider.as_str(), delivery_id.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
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
