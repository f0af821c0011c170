//! Compile once, evaluate many.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::sync::mpsc;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use regorus::utils::limits::ExecutionTimerConfig;
use regorus::{Engine, Value};
use serde::{Deserialize, Serialize};

use crate::decision::Decision;
use crate::error::{PolicyError, Result};
use crate::input::PolicyInput;
use crate::source;

/// The package every policy must declare, as in Spacelift.
pub const POLICY_PACKAGE: &str = "spacelift";

/// Default time budget of one evaluation.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// How often (in interpreter work units) regorus looks at the clock.
const TIMER_CHECK_INTERVAL: u32 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PolicyKind {
    Push,
    Trigger,
    Plan,
    Approval,
}

impl PolicyKind {
    pub const ALL: [PolicyKind; 4] = [Self::Push, Self::Trigger, Self::Plan, Self::Approval];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Push => "PUSH",
            Self::Trigger => "TRIGGER",
            Self::Plan => "PLAN",
            Self::Approval => "APPROVAL",
        }
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PolicyKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_uppercase().as_str() {
            "PUSH" | "GIT_PUSH" => Ok(Self::Push),
            "TRIGGER" => Ok(Self::Trigger),
            "PLAN" | "TERRAFORM_PLAN" => Ok(Self::Plan),
            "APPROVAL" => Ok(Self::Approval),
            other => Err(format!("unknown policy kind `{other}`")),
        }
    }
}

/// Knobs of compilation and evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyOptions {
    /// Wall-clock budget of one evaluation. Exceeding it yields [`PolicyError::Timeout`].
    pub timeout: Duration,
}

impl Default for PolicyOptions {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// Which Rego syntax the body was accepted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegoSyntax {
    V0,
    V1,
}

/// A policy body compiled once and evaluated concurrently without locking: each evaluation
/// clones the prepared engine (a handful of `Arc` bumps, measured by [`crate::bench`]).
#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    id: String,
    version: u64,
    kind: PolicyKind,
    syntax: RegoSyntax,
    rules: BTreeSet<String>,
    options: PolicyOptions,
    engine: Engine,
}

/// The result of one evaluation: the whole `data.spacelift` document.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub document: serde_json::Value,
    pub elapsed: Duration,
}

impl Evaluation {
    /// Whether the policy asked for this evaluation to be kept as a sample (`sample` rule).
    pub fn sample(&self) -> bool {
        self.document.get("sample") == Some(&serde_json::Value::Bool(true))
    }

    /// Interprets the document as the decision of a policy of `kind`.
    pub fn decision(&self, kind: PolicyKind) -> Result<Decision> {
        Decision::from_document(kind, &self.document)
    }
}

/// Builds an engine holding `body` as the module `file`, after the Spacelift-compatibility
/// rewrites and checks. Shared with the test runner.
pub(crate) fn new_engine() -> Result<Engine> {
    let mut engine = Engine::new();
    engine
        .add_extension(
            "sanitized".to_string(),
            1,
            Box::new(crate::sanitize::sanitized_extension),
        )
        .map_err(|e| PolicyError::Evaluation(e.to_string()))?;
    Ok(engine)
}

/// Forces regorus' analysis (unsafe variables, rule conflicts, scheduling) so that those errors
/// appear at compile time, and so that clones start from a prepared interpreter.
pub(crate) fn prepare(engine: &mut Engine) -> Result<()> {
    engine
        .eval_query("true".to_string(), false)
        .map(|_| ())
        .map_err(|e| PolicyError::from_regorus_compile(&e))
}

pub(crate) fn timer(timeout: Duration) -> ExecutionTimerConfig {
    ExecutionTimerConfig {
        limit: timeout,
        check_interval: NonZeroU32::new(TIMER_CHECK_INTERVAL).unwrap_or(NonZeroU32::MIN),
    }
}

impl CompiledPolicy {
    /// Compiles `body`. Errors carry a line and column: syntax and analysis errors as
    /// [`PolicyError::Compile`], network/runtime builtins as [`PolicyError::ForbiddenBuiltin`].
    pub fn compile(
        id: impl Into<String>,
        version: u64,
        kind: PolicyKind,
        body: &str,
        options: PolicyOptions,
    ) -> Result<Self> {
        let id = id.into();
        let file = format!("{id}.rego");
        let body = source::compat_rewrites(&file, body)?;
        let toks = source::tokenize(&file, &body)?;

        let mut engine = new_engine()?;
        source::add_module(&mut engine, &file, &body, &toks)?;
        let module = engine
            .get_modules()
            .last()
            .cloned()
            .ok_or_else(|| PolicyError::Evaluation("module was not loaded".to_string()))?;
        let info = source::module_info(&module);
        let syntax = if module.rego_v1 {
            RegoSyntax::V1
        } else {
            RegoSyntax::V0
        };
        let expected = format!("data.{POLICY_PACKAGE}");
        if info.package != expected {
            return Err(PolicyError::Compile {
                line: info.package_span.0,
                column: info.package_span.1,
                message: format!(
                    "policies must declare `package {POLICY_PACKAGE}`, found `package {}`",
                    info.package.trim_start_matches("data.")
                ),
            });
        }
        source::check_undefined_functions(&toks, &info.functions, &info.import_aliases)?;
        source::check_function_recursion(&toks, &module, &info.package)?;
        engine.set_execution_timer_config(timer(options.timeout));
        prepare(&mut engine)?;
        Ok(Self {
            id,
            version,
            kind,
            syntax,
            rules: info.rules,
            options,
            engine,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }
    pub fn version(&self) -> u64 {
        self.version
    }
    pub fn kind(&self) -> PolicyKind {
        self.kind
    }
    pub fn syntax(&self) -> RegoSyntax {
        self.syntax
    }
    pub fn options(&self) -> PolicyOptions {
        self.options
    }
    /// Top-level rule names declared by the policy (helpers included).
    pub fn rules(&self) -> &BTreeSet<String> {
        &self.rules
    }

    /// Evaluates the policy against a typed input document.
    pub fn evaluate(&self, input: &dyn PolicyInput) -> Result<Evaluation> {
        self.evaluate_value(input.to_rego()?)
    }

    /// Evaluates the policy against a raw JSON input (e.g. a stored policy sample).
    pub fn evaluate_json(&self, input: &serde_json::Value) -> Result<Evaluation> {
        let value = Value::from_json_str(&input.to_string())
            .map_err(|e| PolicyError::Input(e.to_string()))?;
        self.evaluate_value(value)
    }

    /// Evaluates and interprets the result as this policy's kind of decision.
    pub fn decide(&self, input: &dyn PolicyInput) -> Result<Decision> {
        self.evaluate(input)?.decision(self.kind)
    }

    /// Evaluates on an evaluator thread (see [`run_bounded`]).
    pub fn evaluate_value(&self, input: Value) -> Result<Evaluation> {
        let mut engine = self.engine.clone();
        let started = Instant::now();
        let document = run_bounded(self.options.timeout, move || {
            engine.set_input(input);
            run_query(&mut engine)
        })?;
        Ok(Evaluation {
            document,
            elapsed: started.elapsed(),
        })
    }
}

/// Runs `work` on an evaluator thread (see [`crate::evaluator`]) and waits at most a little past
/// `budget`. regorus' cooperative timer (configured on the engine) stops loops at the budget;
/// the caller additionally stops waiting shortly after it, so that a builtin stuck on a huge
/// value cannot hold the caller either (the runaway thread is left to finish on its own). Both
/// cases fail closed with [`PolicyError::Timeout`].
pub(crate) fn run_bounded<T: Send + 'static>(
    budget: Duration,
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> Result<T> {
    let (tx, rx) = mpsc::sync_channel(1);
    crate::evaluator::spawn(move || {
        let _ = tx.send(work());
    })
    .map_err(|e| PolicyError::Evaluation(format!("cannot start evaluator: {e}")))?;
    let hard_deadline = budget + budget / 4 + Duration::from_millis(5);
    let outcome = match rx.recv_timeout(hard_deadline) {
        Ok(outcome) => outcome,
        Err(mpsc::RecvTimeoutError::Timeout) => return Err(PolicyError::Timeout { budget }),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            return Err(PolicyError::Evaluation(
                "the evaluator stopped without a result".to_string(),
            ))
        }
    };
    outcome.map_err(|e| {
        if e.downcast_ref::<regorus::LimitError>().is_some()
            || e.to_string().contains("exceeded time limit")
        {
            PolicyError::Timeout { budget }
        } else {
            PolicyError::Evaluation(error_text(&e))
        }
    })
}

fn error_text(e: &anyhow::Error) -> String {
    let text = e.to_string();
    match crate::error::location_of(&text) {
        Some((line, col)) => format!("{line}:{col}: {}", crate::error::message_of(&text)),
        None => text.trim().to_string(),
    }
}

/// `data.spacelift` alone is not evaluated by regorus as a query; binding it to a variable is.
fn run_query(engine: &mut Engine) -> anyhow::Result<serde_json::Value> {
    let results = engine.eval_query(format!("__doc := data.{POLICY_PACKAGE}"), false)?;
    let Some(first) = results.result.first() else {
        return Ok(serde_json::Value::Object(Default::default()));
    };
    let doc = &first.bindings["__doc"];
    if *doc == Value::Undefined {
        return Ok(serde_json::Value::Object(Default::default()));
    }
    Ok(serde_json::to_value(doc)?)
}

/// Compiled policies keyed by (policy id, version). Lookups take a shared read lock only;
/// evaluation itself runs outside any lock on a clone of the compiled engine.
#[derive(Debug, Default)]
pub struct PolicyCache {
    options: PolicyOptions,
    entries: RwLock<HashMap<(String, u64), Arc<CompiledPolicy>>>,
}

impl PolicyCache {
    pub fn new(options: PolicyOptions) -> Self {
        Self {
            options,
            entries: RwLock::default(),
        }
    }

    /// Returns the compiled policy for (id, version), compiling `body` on first use. Older
    /// versions of the same id are dropped when a newer one is compiled.
    pub fn get_or_compile(
        &self,
        id: &str,
        version: u64,
        kind: PolicyKind,
        body: &str,
    ) -> Result<Arc<CompiledPolicy>> {
        let key = (id.to_string(), version);
        if let Some(hit) = self
            .entries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(hit.clone());
        }
        let compiled = Arc::new(CompiledPolicy::compile(
            id,
            version,
            kind,
            body,
            self.options,
        )?);
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        entries.retain(|(other, v), _| other != id || *v > version);
        Ok(entries.entry(key).or_insert(compiled).clone())
    }

    /// Forgets every version of a policy (on deletion).
    pub fn remove(&self, id: &str) {
        self.entries
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(other, _), _| other != id);
    }

    pub fn len(&self) -> usize {
        self.entries.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
