use std::fmt;

use crate::Provider;

/// Every failure of this crate. The server maps them to HTTP statuses: signature errors to
/// 401, unknown events and malformed payloads to 400, git failures to 500.
#[derive(Debug, thiserror::Error)]
pub enum VcsError {
    /// The request carries no signature (or token) header although a secret is configured.
    #[error("missing signature: header {header} is absent")]
    MissingSignature { header: &'static str },
    /// A signature header is present but malformed or does not match the body.
    #[error("bad signature in header {header}: {reason}")]
    BadSignature {
        header: &'static str,
        reason: String,
    },
    /// An empty secret would accept any empty token: refuse to verify with it.
    #[error("webhook secret is empty: configure one before accepting deliveries")]
    EmptySecret,
    /// Neither `X-GitHub-Event` nor `X-Gitlab-Event` is present.
    #[error("missing event header: expected X-GitHub-Event or X-Gitlab-Event")]
    MissingEventHeader,
    /// An event type this crate does not handle.
    #[error("unknown {provider} event type {event:?}")]
    UnknownEvent { provider: Provider, event: String },
    /// The body is not JSON, or not the JSON this event type has.
    #[error("malformed {provider} {event:?} payload: {message}")]
    MalformedPayload {
        provider: Provider,
        event: String,
        message: String,
    },
    /// The body is larger than the limit the caller enforces.
    #[error("payload of {size} bytes exceeds the limit of {limit} bytes")]
    BodyTooLarge { size: usize, limit: usize },
    /// A revision argument that git could mistake for an option, or that is not a revision.
    #[error("invalid git revision {0:?}")]
    InvalidRevision(String),
    /// A git command could not start or failed.
    #[error("git {command}: {message}")]
    Git { command: String, message: String },
    /// The payload does not list every affected file and no repository was given to compute them.
    #[error("affected files of push {after} are not in the payload and no repository was given")]
    FilesUnavailable { after: String },
    /// A project glob does not compile.
    #[error("invalid project glob {glob:?}: {message}")]
    InvalidGlob { glob: String, message: String },
}

impl VcsError {
    /// True for errors caused by the request (bad signature, unknown event, malformed or too
    /// large body), false for errors on this side (git).
    pub fn is_client_error(&self) -> bool {
        !matches!(
            self,
            VcsError::Git { .. }
                | VcsError::FilesUnavailable { .. }
                | VcsError::InvalidGlob { .. }
                | VcsError::EmptySecret
        )
    }
}

pub type Result<T, E = VcsError> = std::result::Result<T, E>;

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
