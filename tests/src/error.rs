use std::time::Duration;

/// Everything the harness can fail with. Messages say what to do when the cause is a missing
/// build or tool, since that is the usual reason a fresh checkout fails here.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Setup(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("gRPC call failed: {0}")]
    Status(#[from] tonic::Status),
    #[error("connecting: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("server: {0}")]
    Server(#[from] cairn_server::ServerError),
    #[error("`git {args}` failed: {stderr}")]
    Git { args: String, stderr: String },
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout { what: String, after: Duration },
    #[error("{0}")]
    Check(String),
}

impl Error {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
