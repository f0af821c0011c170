//! Runner plugin handshake and serve/connect helpers.
//!
//! A runner plugin is a child process of the agent that speaks the Runner contract
//! (`cairn.runner.v1.RunnerService`) over a private unix socket, announced by one handshake line
//! on stdout. This crate holds both halves of that contract and what every Rust plugin needs:
//!
//! - plugin side: [`serve`] runs any [`RunnerService`] implementation;
//! - host side: [`find_plugin`] and [`launch`] start a plugin and hand back a connected
//!   [`PluginHandle`];
//! - [`EventSink`] and [`VendorCommand`] stream a vendor CLI's output as redacted log lines and
//!   stop it when the gRPC stream is dropped.

mod error;
mod events;
mod handshake;
mod host;
mod redact;
mod serve;
mod vendor;

pub use cairn_proto::runner::v1::runner_service_server::RunnerService;
pub use error::Error;
pub use events::{event_stream, spawn_stream, EventSink, EventStream, RunnerEvent};
pub use handshake::{Handshake, APP_PROTOCOL_VERSION, CORE_PROTOCOL_VERSION};
pub use host::{
    find_plugin, launch, plugin_binary_name, LaunchOptions, PluginHandle, StderrCallback,
};
pub use redact::Redactor;
pub use serve::{init_logging, serve, shutdown_telemetry, OTLP_ENDPOINT_ENV};
pub use vendor::{VendorCommand, VendorOutcome, DEFAULT_GRACE};

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
