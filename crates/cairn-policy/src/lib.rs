//! Rego policies with regorus: compile once, evaluate many.
//!
//! Policies written for Spacelift run unchanged: `package spacelift`, Rego v0 (with or without
//! `import future.keywords`) or Rego v1, the `sanitized(x)` helper, and the same input documents
//! and decision rules. Network, runtime and clock builtins are refused when a policy is compiled.
//!
//! - [`CompiledPolicy`] compiles a body once; [`CompiledPolicy::evaluate`] is cheap, concurrent
//!   and bounded by a time budget ([`PolicyOptions::timeout`]).
//! - [`input`] holds the input documents; [`decision`] the decisions, how several policies of
//!   one kind combine, [`resolve_push`] and the default push behaviour.
//! - [`run_tests`] is `opa test` for a directory of policies.

pub mod bench;
mod compiled;
pub mod decision;
mod error;
mod evaluator;
pub mod input;
mod sanitize;
mod source;
mod testing;

pub use compiled::{
    CompiledPolicy, Evaluation, PolicyCache, PolicyKind, PolicyOptions, RegoSyntax,
    DEFAULT_TIMEOUT, POLICY_PACKAGE,
};
pub use decision::{
    default_push_decision, is_affected, resolve_push, ApprovalDecision, ApprovalOutcome, Decision,
    IgnoreReason, PlanDecision, PushAction, PushContext, PushDecision, PushOutcome,
    TriggerDecision,
};
pub use error::{PolicyError, Result};
pub use input::{PolicyInput, StacksDocument};
pub use sanitize::{sanitize, sanitize_strings};
pub use source::FORBIDDEN_BUILTINS;
pub use testing::{run_tests, run_tests_with, TestOutcome, TestReport, TestResult};
