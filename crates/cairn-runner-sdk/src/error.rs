use std::path::PathBuf;

/// Everything that can go wrong while serving, launching or talking to a runner plugin.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),

    #[error("runner plugin `{binary}` not found in plugin path [{}]", .dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", "))]
    PluginNotFound { binary: String, dirs: Vec<PathBuf> },

    #[error("cannot start `{program}`: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },

    #[error("runner plugin `{plugin}` printed no handshake line within {timeout:?}")]
    HandshakeTimeout {
        plugin: String,
        timeout: std::time::Duration,
    },

    #[error("malformed handshake line {line:?}: {reason}")]
    MalformedHandshake { line: String, reason: String },

    #[error("runner plugin speaks {what} protocol version {got}, expected {expected}")]
    ProtocolVersion {
        what: &'static str,
        expected: u32,
        got: u32,
    },

    #[error("runner plugin `{plugin}` exited before its handshake ({status}); stderr tail:\n{stderr_tail}")]
    PluginExited {
        plugin: String,
        status: String,
        stderr_tail: String,
    },

    #[error("gRPC transport error: {0}")]
    Transport(#[from] tonic::transport::Error),

    #[error("runner plugin health check failed: {0}")]
    Health(#[from] tonic::Status),

    #[error("runner plugin reports health status {0}, expected SERVING")]
    NotServing(i32),

    #[error("the stream was cancelled by the client")]
    Cancelled,
}
