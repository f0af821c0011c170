//! End-to-end harness: real server, agents, plugins and vendor binaries.
//!
//! - [`TestServer`]: a real control plane on `127.0.0.1:0`, in this process (SQLite in a
//!   temporary directory) or as a `cairn server` child process.
//! - [`AgentProcess`]: a real `cairn agent` child process (so it can be SIGKILLed) with the
//!   plugins of the workspace target directory on its plugin path and the vendor tools of
//!   `CAIRN_TOOLS_DIR` on its `PATH`.
//! - [`GitRepo`]: a bare repository and a clone, driven with the git CLI.
//! - [`wait_for_state`] and friends: follow a run through `WatchRun`.
//!
//! Binaries are not built here: `cargo xtask test` runs `cargo build --workspace --bins` first,
//! and every lookup fails with a message saying so when a binary is missing.

mod agent;
mod error;
mod git;
pub mod paths;
mod runs;
mod server;
mod terraform;

pub use agent::{AgentOptions, AgentProcess};
pub use error::{Error, Result};
pub use git::GitRepo;
pub use runs::{
    delta_tuple, history, log_lines, log_text, stack_spec, state_of, wait_for_state, wait_until,
    RunClient, StackClient,
};
pub use server::{Authed, ServerOptions, TestServer};
pub use terraform::{cairntest_config, FileResource};

pub use cairn_proto::v1 as pb;

/// Generous ceiling for anything a test waits for; tests never assert on how long it took.
pub const WAIT: std::time::Duration = std::time::Duration::from_secs(180);
