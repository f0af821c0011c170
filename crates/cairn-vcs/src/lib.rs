//! Git in, status out: everything between a VCS webhook and a push-policy evaluation, without
//! HTTP serving or storage.
//!
//! - [`signature`]: GitHub `X-Hub-Signature-256` and GitLab `X-Gitlab-Token` verification.
//! - [`parse`] / [`Webhook`]: one delivery to one normalized [`VcsEvent`].
//! - [`files`]: affected files (from the payload, or `git diff` in a local clone) and
//!   [`affects`] (does a change touch a stack's project root or globs).
//! - [`policy`]: the push-policy `push` / `pull_request` documents, as `cairn-policy` types.
//! - [`dedup`]: the run deduplication key and the delivery idempotency key.
//!
//! Everything here is synchronous; git runs as a child process, so async callers should use
//! `spawn_blocking` for the [`git`] functions.

pub mod dedup;
mod error;
pub mod event;
pub mod files;
pub mod git;
mod github;
mod gitlab;
pub mod policy;
pub mod signature;

use serde::{Deserialize, Deserializer};

pub use dedup::delivery_key;
pub use error::{Result, VcsError};
pub use event::*;
pub use files::{affects, push_affected_files, ProjectMatcher};
pub use policy::{PrFacts, PushPolicyDocs, PushPolicyInput};
pub use signature::{
    github_signature, verify_github_signature, verify_gitlab_token, GITHUB_SIGNATURE_HEADER,
    GITLAB_TOKEN_HEADER,
};

/// The body size limit callers should enforce before reading a delivery (GitHub caps payloads
/// at 25 MB).
pub const MAX_BODY_DEFAULT: usize = 25 * 1024 * 1024;

pub const GITHUB_EVENT_HEADER: &str = "X-GitHub-Event";
pub const GITHUB_DELIVERY_HEADER: &str = "X-GitHub-Delivery";
pub const GITLAB_EVENT_HEADER: &str = "X-Gitlab-Event";
/// Stays the same across GitLab's retries of one delivery (GitLab 17.4+).
pub const GITLAB_IDEMPOTENCY_HEADER: &str = "Idempotency-Key";
pub const GITLAB_EVENT_UUID_HEADER: &str = "X-Gitlab-Event-UUID";

/// The prefixes of pull-request comments that reach push policies. Spacelift evaluates only
/// comments beginning with `/spacelift` (so that ordinary discussion never acts on
/// infrastructure); `/cairn` is accepted too. Policies see the whole body and decide.
pub const COMMENT_PREFIXES: &[&str] = &["/spacelift", "/cairn"];

/// Whether a comment body begins with one of [`COMMENT_PREFIXES`].
pub fn is_command_comment(body: &str) -> bool {
    COMMENT_PREFIXES.iter().any(|p| body.starts_with(p))
}

/// The event types understood for `provider` (header values).
pub fn supported_events(provider: Provider) -> &'static [&'static str] {
    match provider {
        Provider::GitHub => github::EVENTS,
        Provider::GitLab => gitlab::EVENTS,
    }
}

/// Parses one delivery: `event` is the event header's value (`push`, `Merge Request Hook`),
/// `body` the raw body. Never panics, whatever the bytes.
pub fn parse(provider: Provider, event: &str, body: &[u8]) -> Result<VcsEvent> {
    match provider {
        Provider::GitHub => github::parse(event.trim(), body),
        Provider::GitLab => gitlab::parse(event.trim(), body),
    }
}

/// The fuzzing entry point (and the format of `fuzz/corpus/webhook_parse/*`): a first line
/// naming the provider (`gitlab`, anything else meaning GitHub), a second line with the event
/// header's value, then the raw body. On success the event also goes through the pure
/// functions a server calls next (affected files from the payload, push-policy documents), so
/// that fuzzing covers them too. Never panics.
pub fn parse_framed(data: &[u8]) -> Result<VcsEvent> {
    let mut parts = data.splitn(3, |b| *b == b'\n');
    let provider_line = parts.next().unwrap_or_default();
    let event_line = parts.next().unwrap_or_default();
    let body = parts.next().unwrap_or_default();
    let provider = if provider_line.trim_ascii() == b"gitlab" {
        Provider::GitLab
    } else {
        Provider::GitHub
    };
    let event = parse(provider, &String::from_utf8_lossy(event_line), body)?;
    match &event {
        VcsEvent::Push(p) => {
            let files = p.payload_files().unwrap_or_default();
            let _ = PushPolicyDocs::for_push(p, files);
        }
        VcsEvent::PullRequest(p) => {
            let _ = PushPolicyDocs::for_pull_request(p, &PrFacts::default());
        }
        VcsEvent::PullRequestComment(c) => {
            if let Some(pr) = &c.pull_request {
                let _ = PushPolicyDocs::for_comment(c, pr, &PrFacts::default());
            }
        }
        VcsEvent::Ping(_) | VcsEvent::Ignored(_) => {}
    }
    Ok(event)
}

/// Rejects bodies over `limit` bytes (for callers that buffer before checking).
pub fn check_body_size(body: &[u8], limit: usize) -> Result<()> {
    if body.len() > limit {
        return Err(VcsError::BodyTooLarge {
            size: body.len(),
            limit,
        });
    }
    Ok(())
}

/// What the headers of a delivery say: who sent it, which event, which delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    pub provider: Provider,
    pub event: String,
    /// `X-GitHub-Delivery`, or GitLab's `Idempotency-Key` / `X-Gitlab-Event-UUID`.
    pub delivery_id: Option<String>,
    /// The signature or token header's value, if present.
    pub signature: Option<String>,
}

impl Webhook {
    /// Reads the provider-specific headers (names are case-insensitive).
    pub fn from_headers(headers: &http::HeaderMap) -> Result<Self> {
        let get = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        };
        if let Some(event) = get(GITHUB_EVENT_HEADER) {
            return Ok(Webhook {
                provider: Provider::GitHub,
                event,
                delivery_id: get(GITHUB_DELIVERY_HEADER),
                signature: get(GITHUB_SIGNATURE_HEADER),
            });
        }
        if let Some(event) = get(GITLAB_EVENT_HEADER) {
            return Ok(Webhook {
                provider: Provider::GitLab,
                event,
                delivery_id: get(GITLAB_IDEMPOTENCY_HEADER)
                    .or_else(|| get(GITLAB_EVENT_UUID_HEADER)),
                signature: get(GITLAB_TOKEN_HEADER),
            });
        }
        Err(VcsError::MissingEventHeader)
    }

    /// Authenticates the raw `body` with the shared `secret`.
    pub fn verify(&self, secret: &[u8], body: &[u8]) -> Result<()> {
        match self.provider {
            Provider::GitHub => verify_github_signature(secret, self.signature.as_deref(), body),
            Provider::GitLab => verify_gitlab_token(secret, self.signature.as_deref()),
        }
    }

    /// Parses the body (call [`Webhook::verify`] first).
    pub fn parse(&self, body: &[u8]) -> Result<VcsEvent> {
        parse(self.provider, &self.event, body)
    }

    /// The idempotency key of this delivery, when the provider sent a delivery id.
    pub fn delivery_key(&self) -> Option<String> {
        self.delivery_id
            .as_deref()
            .map(|id| delivery_key(self.provider, id))
    }
}

/// Deserializes `null` as the type's default: GitHub and GitLab send `null` for many fields
/// that are usually strings or arrays.
pub(crate) fn nn<'de, D, T>(d: D) -> std::result::Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::is_command_comment;

    #[test]
    fn only_prefixed_comments_are_commands() {
        assert!(is_command_comment("/spacelift deploy my-stack-id"));
        assert!(is_command_comment("/cairn unlock infra"));
        assert!(!is_command_comment("please /spacelift deploy"));
        assert!(!is_command_comment("LGTM"));
        assert!(!is_command_comment(""));
    }
}
