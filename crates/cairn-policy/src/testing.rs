//! `opa test` for policies: every `*.rego` of a directory (tests included) is loaded and every
//! `test_*` rule is evaluated.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use regorus::Value;
use serde::Serialize;

use crate::compiled::{self, PolicyOptions};
use crate::error::{PolicyError, Result};
use crate::source::{self, ModuleInfo};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TestOutcome {
    Pass,
    /// The rule evaluated to false or was undefined.
    Fail,
    /// Evaluation raised an error (including running past the time budget).
    Error {
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TestResult {
    /// Package path, e.g. `data.spacelift`.
    pub package: String,
    pub name: String,
    pub file: PathBuf,
    pub outcome: TestOutcome,
    pub duration: Duration,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TestReport {
    pub results: Vec<TestResult>,
}

impl TestReport {
    pub fn passed(&self) -> usize {
        self.results
            .iter()
            .filter(|r| r.outcome == TestOutcome::Pass)
            .count()
    }

    pub fn failed(&self) -> usize {
        self.results.len() - self.passed()
    }

    /// True when there is at least one test and every test passed.
    pub fn success(&self) -> bool {
        !self.results.is_empty() && self.failed() == 0
    }

    pub fn outcome_of(&self, name: &str) -> Option<&TestOutcome> {
        self.results
            .iter()
            .find(|r| r.name == name)
            .map(|r| &r.outcome)
    }

    /// `opa test`-style summary: one line per failing test and `PASS: n/m` or `FAIL: n/m`.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for r in &self.results {
            match &r.outcome {
                TestOutcome::Pass => {}
                TestOutcome::Fail => out.push_str(&format!(
                    "{}.{}: FAIL ({})\n",
                    r.package,
                    r.name,
                    r.file.display()
                )),
                TestOutcome::Error { message } => out.push_str(&format!(
                    "{}.{}: ERROR ({}): {message}\n",
                    r.package,
                    r.name,
                    r.file.display()
                )),
            }
        }
        let verdict = if self.success() { "PASS" } else { "FAIL" };
        out.push_str(&format!(
            "{verdict}: {}/{}\n",
            self.passed(),
            self.results.len()
        ));
        out
    }
}

fn collect_rego_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let io = |source| PolicyError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(io)?
        .collect::<std::io::Result<_>>()
        .map_err(io)?;
    entries.sort_by_key(|e| e.path());
    for entry in entries {
        let path = entry.path();
        if path.is_dir() {
            collect_rego_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rego") {
            out.push(path);
        }
    }
    Ok(())
}

fn in_file(file: &Path, err: PolicyError) -> PolicyError {
    match err {
        PolicyError::Compile {
            line,
            column,
            message,
        } => PolicyError::Compile {
            line,
            column,
            message: format!("{}: {message}", file.display()),
        },
        other => other,
    }
}

/// Loads every `*.rego` under `dir` (recursively; `*_test.rego` files included) and runs every
/// `test_*` rule, each with the default time budget.
pub fn run_tests(dir: &Path) -> Result<TestReport> {
    run_tests_with(dir, PolicyOptions::default())
}

pub fn run_tests_with(dir: &Path, options: PolicyOptions) -> Result<TestReport> {
    let mut files = Vec::new();
    collect_rego_files(dir, &mut files)?;

    // First pass: what each file declares, so that short `with` targets can be resolved against
    // the rules of the whole package (tests usually live in another file than the rules).
    struct Loaded {
        path: PathBuf,
        label: String,
        body: String,
        info: ModuleInfo,
    }
    let mut loaded = Vec::new();
    for path in files {
        let body = std::fs::read_to_string(&path).map_err(|source| PolicyError::Io {
            path: path.clone(),
            source,
        })?;
        let label = path.display().to_string();
        let body = source::compat_rewrites(&label, &body).map_err(|e| in_file(&path, e))?;
        let toks = source::tokenize(&label, &body).map_err(|e| in_file(&path, e))?;
        let mut alone = compiled::new_engine()?;
        source::add_module(&mut alone, &label, &body, &toks).map_err(|e| in_file(&path, e))?;
        let info = alone
            .get_modules()
            .last()
            .map(|m| source::module_info(m))
            .unwrap_or_default();
        loaded.push(Loaded {
            path,
            label,
            body,
            info,
        });
    }
    let mut rules_by_package: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut functions_by_package: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for l in &loaded {
        rules_by_package
            .entry(l.info.package.clone())
            .or_default()
            .extend(l.info.rules.iter().cloned());
        functions_by_package
            .entry(l.info.package.clone())
            .or_default()
            .extend(l.info.functions.iter().cloned());
    }

    let mut engine = compiled::new_engine()?;
    let mut tests: Vec<(String, String, PathBuf)> = Vec::new();
    for l in &loaded {
        let package = &l.info.package;
        let toks = source::tokenize(&l.label, &l.body)?;
        let empty = BTreeSet::new();
        let body = source::rewrite_short_with_targets(
            &l.body,
            &toks,
            package,
            rules_by_package.get(package).unwrap_or(&empty),
        );
        let toks = source::tokenize(&l.label, &body).map_err(|e| in_file(&l.path, e))?;
        source::check_undefined_functions(
            &toks,
            functions_by_package.get(package).unwrap_or(&empty),
            &l.info.import_aliases,
        )
        .map_err(|e| in_file(&l.path, e))?;
        source::add_module(&mut engine, &l.label, &body, &toks).map_err(|e| in_file(&l.path, e))?;
        if let Some(module) = engine.get_modules().last().cloned() {
            source::check_function_recursion(&toks, &module, package)
                .map_err(|e| in_file(&l.path, e))?;
        }
        for rule in l.info.rules.iter().filter(|r| r.starts_with("test_")) {
            if !tests.iter().any(|(p, n, _)| p == package && n == rule) {
                tests.push((package.clone(), rule.clone(), l.path.clone()));
            }
        }
    }
    engine.set_execution_timer_config(compiled::timer(options.timeout));
    compiled::prepare(&mut engine)?;

    let mut report = TestReport::default();
    for (package, name, file) in tests {
        let mut test_engine = engine.clone();
        let rule = format!("{package}.{name}");
        let started = Instant::now();
        let outcome =
            match compiled::run_bounded(options.timeout, move || test_engine.eval_rule(rule)) {
                Ok(Value::Bool(true)) => TestOutcome::Pass,
                Ok(_) => TestOutcome::Fail,
                Err(e) => TestOutcome::Error {
                    message: e.to_string(),
                },
            };
        report.results.push(TestResult {
            package,
            name,
            file,
            outcome,
            duration: started.elapsed(),
        });
    }
    Ok(report)
}
