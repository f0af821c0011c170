//! Cairn's domain: stacks, runs, the run state machine, delta. No I/O: no tonic, no sqlx, no
//! filesystem. Everything here is a value or a pure function so that the services, the store
//! backends and the agent agree on one definition of each idea.

pub mod access;
pub mod deployment;
pub mod error;
pub mod ids;
pub mod run;
pub mod schedule;
pub mod stack;
pub mod state;
pub mod validate;
pub mod worker;

pub use access::{ApiKey, Principal, Role};
pub use deployment::{
    ConfigSource, ConfigurationVersion, Deployment, DeploymentSnapshot, InputValue, UpstreamRef,
    DEFAULT_DEPLOYMENT,
};
pub use error::CoreError;
pub use run::*;
pub use schedule::{dispatch_order, DispatchView};
pub use stack::*;
pub use state::{after_planning, next_state, PlanOutcome, RunEvent, RunState};
pub use worker::{Lease, LeaseKind, Worker, WorkerPool, DEFAULT_POOL};

/// Unix time in nanoseconds, the unit the Spacelift policy inputs use.
pub type Nanos = i64;

/// Now as Unix nanoseconds.
pub fn now_nanos() -> Nanos {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX)
}
