//! The CLI's one error type. Every variant renders as one line that says what went wrong and what
//! to do about it, and maps to a documented exit code so that scripts can branch on the cause.

use std::path::PathBuf;

/// Exit codes, documented in `cairn --help` (see [`EXIT_CODES_HELP`]).
pub mod exit {
    pub const OTHER: i32 = 1;
    /// clap uses 2 for usage errors; we keep that meaning.
    pub const USAGE: i32 = 2;
    pub const UNREACHABLE: i32 = 3;
    pub const AUTH: i32 = 4;
    pub const NOT_FOUND: i32 = 5;
    pub const PRECONDITION: i32 = 6;
    pub const INVALID: i32 = 7;
    pub const VERSION_MISMATCH: i32 = 8;
    pub const RUN_NOT_FINISHED: i32 = 9;
}

pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  other error
  2  usage error (unknown verb, missing argument)
  3  server unreachable
  4  authentication or permission refused (wrong or missing API key)
  5  not found (stack, run, policy, pool)
  6  precondition failed (stack locked by someone else, run in the wrong state, conflict)
  7  invalid input (bad id, unreadable file), checked before any request
  8  server API version differs from this CLI's
  9  the followed run ended in a state other than FINISHED";

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("cannot reach the Cairn server at {url} ({reason}); is it running? Start one with `cairn dev`, or point the CLI elsewhere with --server, CAIRN_SERVER or `cairn login`")]
    Unreachable { url: String, reason: String },

    #[error("the server at {url} refused the API key ({detail}); run `cairn login --server {url}` with a valid key, or set CAIRN_API_KEY")]
    Unauthenticated { url: String, detail: String },

    #[error("permission denied: {0}; ask an admin for a key with a broader role")]
    PermissionDenied(String),

    #[error("no API key for {url}: run `cairn login --server {url}`, set CAIRN_API_KEY, or start `cairn dev` in this directory")]
    NoApiKey { url: String },

    #[error("not found: {0}")]
    NotFound(String),

    #[error("{0}")]
    Precondition(String),

    /// Messages say what is invalid themselves ("invalid stack: …", "--limit 0: …").
    #[error("{0}")]
    Invalid(String),

    #[error("the server speaks API version {server}, this cairn CLI speaks {client}; install the cairn binary matching server {server_version}")]
    VersionMismatch {
        server: i32,
        client: i32,
        server_version: String,
    },

    #[error("{failed} of {total} policy tests did not pass")]
    TestsFailed { failed: usize, total: usize },

    #[error("run {run_id} ended {state}")]
    RunNotFinished { run_id: String, state: String },

    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("profile file {path}: {reason}")]
    Profile { path: PathBuf, reason: String },

    #[error("server error ({code}): {message}")]
    Server { code: String, message: String },

    #[error("{0}")]
    Io(#[from] std::io::Error),

    #[error("{0}")]
    Other(String),
}

impl CliError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Unreachable { .. } => exit::UNREACHABLE,
            CliError::Unauthenticated { .. }
            | CliError::PermissionDenied(_)
            | CliError::NoApiKey { .. } => exit::AUTH,
            CliError::NotFound(_) => exit::NOT_FOUND,
            CliError::Precondition(_) => exit::PRECONDITION,
            CliError::Invalid(_) | CliError::File { .. } => exit::INVALID,
            CliError::VersionMismatch { .. } => exit::VERSION_MISMATCH,
            CliError::RunNotFinished { .. } => exit::RUN_NOT_FINISHED,
            CliError::Profile { .. }
            | CliError::Server { .. }
            | CliError::Io(_)
            | CliError::TestsFailed { .. }
            | CliError::Other(_) => exit::OTHER,
        }
    }

    /// Turns a gRPC status into the error a person can act on. `url` is the server we talked to,
    /// so that auth errors can say which login to redo.
    pub fn from_status(status: tonic::Status, url: &str) -> CliError {
        use tonic::Code;
        let message = one_line(status.message());
        match status.code() {
            Code::Unavailable => CliError::Unreachable {
                url: url.to_string(),
                reason: if message.is_empty() {
                    "unavailable".into()
                } else {
                    message
                },
            },
            Code::Unauthenticated => CliError::Unauthenticated {
                url: url.to_string(),
                detail: if message.is_empty() {
                    "unauthenticated".into()
                } else {
                    message
                },
            },
            Code::PermissionDenied => CliError::PermissionDenied(message),
            Code::NotFound => CliError::NotFound(message),
            Code::FailedPrecondition | Code::Aborted | Code::AlreadyExists => {
                CliError::Precondition(message)
            }
            Code::InvalidArgument | Code::OutOfRange => CliError::Invalid(message),
            code => CliError::Server {
                code: format!("{code:?}"),
                message,
            },
        }
    }
}

impl From<cairn_core::CoreError> for CliError {
    fn from(e: cairn_core::CoreError) -> Self {
        CliError::Invalid(e.to_string())
    }
}

/// Server messages may carry newlines (e.g. policy compile errors); the CLI promises one line.
fn one_line(s: &str) -> String {
    s.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_documented_codes() {
        let url = "http://127.0.0.1:7400";
        let cases = [
            (tonic::Status::unavailable("x"), exit::UNREACHABLE),
            (tonic::Status::unauthenticated("bad key"), exit::AUTH),
            (tonic::Status::permission_denied("reader"), exit::AUTH),
            (tonic::Status::not_found("stack nope"), exit::NOT_FOUND),
            (
                tonic::Status::failed_precondition("locked"),
                exit::PRECONDITION,
            ),
            (tonic::Status::invalid_argument("bad"), exit::INVALID),
            (tonic::Status::internal("boom"), exit::OTHER),
        ];
        for (status, code) in cases {
            let e = CliError::from_status(status, url);
            assert_eq!(e.exit_code(), code, "{e}");
        }
    }

    #[test]
    fn messages_are_one_line() {
        let e = CliError::from_status(
            tonic::Status::invalid_argument("policy does not compile\n  line 3, col 1\n"),
            "http://x",
        );
        let text = e.to_string();
        assert!(!text.contains('\n'), "{text}");
        assert!(text.contains("line 3, col 1"), "{text}");
    }

    #[test]
    fn auth_error_says_how_to_fix_it() {
        let e = CliError::from_status(tonic::Status::unauthenticated("unknown key"), "http://h:1");
        assert!(e.to_string().contains("cairn login --server http://h:1"));
    }
}
