//! The control plane: gRPC services, auth, scheduler, artifact store.
//!
//! Entry points for the `cairn` binary:
//! ```no_run
//! # async fn f() -> Result<(), cairn_server::ServerError> {
//! use cairn_server::{Config, ConfigLayer, Server};
//! let config = Config::load(None, ConfigLayer::default())?;
//! let server = Server::builder(config).build().await?;
//! let listener = server.bind().await?;
//! server.serve(listener, async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```

pub mod agents;
pub mod artifacts;
pub mod auth;
pub mod config;
pub mod convert;
pub mod crypto;
pub mod deployments;
pub mod error;
pub mod hub;
pub mod notify;
pub mod policies;
pub mod server;
pub mod services;
pub mod state;
pub mod state_admin;
pub mod state_backend;
pub mod uploads;
pub mod upstream;
pub mod vcs;

pub use config::{Config, ConfigLayer};
pub use error::ServerError;
pub use server::{open_store, Server, ServerBuilder};
