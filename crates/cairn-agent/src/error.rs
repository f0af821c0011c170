use std::path::PathBuf;

/// Everything that can go wrong in the agent.
///
/// Variants up to `Rejected` stop [`crate::run`]; the others end a single job (reported to the
/// control plane as `JobFailed` with the error's message) and the agent keeps running.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {0}")]
    Config(String),

    #[error("cannot read configuration file {path}: {source}")]
    ConfigFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot parse configuration file {path}: {source}")]
    ConfigParse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },

    #[error("cannot read pool token file {path}: {source}")]
    TokenFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot prepare work directory {path}: {source}")]
    WorkDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("the control plane rejected this agent: {0}")]
    Rejected(String),

    #[error("the control plane is unreachable: {0}")]
    Connect(String),

    #[error("the session with the control plane broke: {0}")]
    Session(String),

    #[error("repository `{repository}` cannot be fetched: {detail}")]
    RepositoryFetch { repository: String, detail: String },

    #[error("commit {commit} not found in repository `{repository}`")]
    CommitNotFound { repository: String, commit: String },

    #[error("checking out {what} failed: {detail}")]
    Checkout { what: String, detail: String },

    #[error("invalid lease: {0}")]
    InvalidLease(String),

    #[error("project root `{0}` is outside the repository")]
    ProjectRootOutside(String),

    #[error("project root `{project_root}` does not exist in the repository at {commit}")]
    ProjectRootMissing {
        project_root: String,
        commit: String,
    },

    #[error("project root `{0}` is not a directory")]
    ProjectRootNotDir(String),

    #[error("{0}")]
    Plugin(#[from] cairn_runner_sdk::Error),

    #[error("runner plugin `{plugin}` failed during {call}: {detail}")]
    PluginCall {
        plugin: String,
        call: &'static str,
        detail: String,
    },

    #[error("workspace {action} failed: {detail}")]
    Workspace {
        action: &'static str,
        detail: String,
    },

    #[error("workspace archive {artifact_id} is corrupt: sha256 is {actual}, the control plane announced {expected}")]
    WorkspaceDigest {
        artifact_id: String,
        expected: String,
        actual: String,
    },

    #[error("workspace archive {0} failed authentication: it was tampered with or encrypted with another key")]
    WorkspaceTampered(String),

    #[error("I/O error while {action}: {source}")]
    Io {
        action: String,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "no decision from the control plane within {0:?} after the plan; the plan was not applied"
    )]
    NoDecision(std::time::Duration),

    #[error("the agent shut down while the job was running")]
    ShuttingDown,

    #[error("the job was stopped")]
    Stopped,
}

impl Error {
    pub(crate) fn io(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let action = action.into();
        move |source| Self::Io { action, source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
