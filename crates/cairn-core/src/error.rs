use crate::state::{RunEvent, RunState};

/// Errors of the domain. cairn-server maps them to gRPC codes in one place.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum CoreError {
    /// A request field is malformed; `field` names it as the API does.
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    /// The run's state machine does not allow `event` in `state`.
    #[error("run is {state}: cannot {event}")]
    IllegalTransition { state: RunState, event: RunEvent },
    /// Any other precondition (stack locked by someone else, active run on delete, ...).
    #[error("{0}")]
    FailedPrecondition(String),
}

impl CoreError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        CoreError::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }
}
