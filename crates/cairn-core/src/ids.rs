//! Identifiers. Run ids are UUIDv7 so that they sort by creation time.

/// A new run id: time-ordered, so "newest first" is an index scan.
pub fn new_run_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// A new opaque id with a readable prefix (`wrk-…`, `lease-…`, `key-…`).
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7().simple())
}
