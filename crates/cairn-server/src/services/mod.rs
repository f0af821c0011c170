//! The gRPC services. Each one validates, translates proto ↔ core and calls the store or the
//! shared state; errors become statuses only through `From<ServerError> for Status`.

pub mod agent;
pub mod deployment;
pub mod policy;
pub mod run;
pub mod stack;
pub mod state;
pub mod system;
pub mod vcs;
pub mod worker_pool;

use cairn_store::Page;

use crate::error::{Result, ServerError};

/// A proto page request as a store page.
pub(crate) fn page(p: Option<cairn_proto::v1::PageRequest>) -> Result<Page> {
    let p = p.unwrap_or_default();
    if p.page_size < 0 || p.page_size as u32 > Page::MAX_SIZE {
        return Err(ServerError::invalid(
            "page.page_size",
            format!("must be between 0 and {}", Page::MAX_SIZE),
        ));
    }
    if p.page_token.len() > 1024 {
        return Err(ServerError::invalid("page.page_token", "too long"));
    }
    Ok(Page {
        size: p.page_size as u32,
        token: (!p.page_token.is_empty()).then_some(p.page_token),
    })
}

/// Git commit hashes: 7 to 64 hex digits (SHA-1 or SHA-256, possibly abbreviated).
pub(crate) fn commit_sha(field: &str, v: &str) -> Result<()> {
    if !(7..=64).contains(&v.len()) || !v.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(ServerError::invalid(
            field,
            format!("{v:?} is not a commit hash (7 to 64 hex digits)"),
        ));
    }
    Ok(())
}
