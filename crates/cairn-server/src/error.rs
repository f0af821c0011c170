//! The crate's one error type and its one mapping to gRPC status codes.

use cairn_core::CoreError;
use cairn_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{kind} {id:?} not found")]
    NotFound { kind: &'static str, id: String },
    #[error("{kind} {id:?} already exists")]
    AlreadyExists { kind: &'static str, id: String },
    /// A request field is malformed; `field` names it as the API spells it.
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    /// The state machine or another precondition refuses the request.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A concurrent writer won (optimistic concurrency).
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("storage: {0}")]
    Storage(String),
    #[error("crypto: {0}")]
    Crypto(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

pub type Result<T, E = ServerError> = std::result::Result<T, E>;

impl ServerError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ServerError::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub fn precondition(msg: impl Into<String>) -> Self {
        ServerError::FailedPrecondition(msg.into())
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ServerError::Io {
            context: context.into(),
            source,
        }
    }
}

impl From<CoreError> for ServerError {
    fn from(e: CoreError) -> Self {
        match e {
            CoreError::InvalidArgument { field, reason } => {
                ServerError::InvalidArgument { field, reason }
            }
            e @ CoreError::IllegalTransition { .. } => {
                ServerError::FailedPrecondition(e.to_string())
            }
            CoreError::FailedPrecondition(m) => ServerError::FailedPrecondition(m),
        }
    }
}

impl From<StoreError> for ServerError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { kind, id } => ServerError::NotFound { kind, id },
            StoreError::AlreadyExists { kind, id } => ServerError::AlreadyExists { kind, id },
            e @ StoreError::Conflict { .. } => ServerError::Conflict(e.to_string()),
            StoreError::Core(c) => c.into(),
            StoreError::Backend(m) => ServerError::Storage(m),
        }
    }
}

/// The one place where errors become gRPC statuses. Internal details (storage, I/O, crypto)
/// are logged here and replaced by a generic message, so clients never see paths or SQL.
impl From<ServerError> for tonic::Status {
    fn from(e: ServerError) -> Self {
        use tonic::Status;
        match &e {
            ServerError::NotFound { .. } => Status::not_found(e.to_string()),
            ServerError::AlreadyExists { .. } => Status::already_exists(e.to_string()),
            ServerError::InvalidArgument { .. } => Status::invalid_argument(e.to_string()),
            ServerError::FailedPrecondition(_) => Status::failed_precondition(e.to_string()),
            ServerError::Conflict(_) => Status::aborted(e.to_string()),
            ServerError::Unauthenticated(_) => Status::unauthenticated(e.to_string()),
            ServerError::PermissionDenied(_) => Status::permission_denied(e.to_string()),
            ServerError::Unavailable(_) => Status::unavailable(e.to_string()),
            ServerError::Config(_)
            | ServerError::Io { .. }
            | ServerError::Storage(_)
            | ServerError::Crypto(_)
            | ServerError::Internal(_) => {
                tracing::error!(error = %e, "internal error");
                Status::internal("internal error; see the server log")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn each_kind_maps_to_its_code() {
        let cases: Vec<(ServerError, Code)> = vec![
            (StoreError::not_found("stack", "x").into(), Code::NotFound),
            (
                CoreError::invalid("stack.branch", "must not be empty").into(),
                Code::InvalidArgument,
            ),
            (
                CoreError::IllegalTransition {
                    state: cairn_core::RunState::Queued,
                    event: cairn_core::RunEvent::Confirm,
                }
                .into(),
                Code::FailedPrecondition,
            ),
            (
                StoreError::Conflict {
                    kind: "run",
                    id: "r".into(),
                    expected: 1,
                }
                .into(),
                Code::Aborted,
            ),
            (
                ServerError::Unauthenticated("x".into()),
                Code::Unauthenticated,
            ),
            (
                ServerError::PermissionDenied("x".into()),
                Code::PermissionDenied,
            ),
            (
                StoreError::Backend("disk I/O".into()).into(),
                Code::Internal,
            ),
        ];
        for (e, code) in cases {
            let s: tonic::Status = e.into();
            assert_eq!(s.code(), code, "{s:?}");
        }
        let s: tonic::Status =
            ServerError::from(CoreError::invalid("stack.branch", "empty")).into();
        assert!(s.message().contains("stack.branch"));
        let s: tonic::Status = ServerError::Storage("/secret/path".into()).into();
        assert!(!s.message().contains("/secret/path"));
    }
}
