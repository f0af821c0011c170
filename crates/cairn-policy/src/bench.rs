//! Measurements for the bench binary: a trigger policy over many stacks.

use std::time::{Duration, Instant};

use crate::compiled::{CompiledPolicy, PolicyKind, PolicyOptions};
use crate::decision::TriggerDecision;
use crate::error::{PolicyError, Result};
use crate::input::{PolicyInput, RunInfo, StackInfo, StacksDocument, TriggerInput};

/// The "depends-on labels" trigger policy of Spacelift's trigger-policy page.
pub const DEPENDS_ON_POLICY: &str = r#"package spacelift

trigger[stack.id] {
  stack := input.stacks[_]
  input.run.state == "FINISHED"
  input.run.type == "TRACKED"
  stack.labels[_] == concat("", ["depends-on:", input.stack.id])
}
"#;

#[derive(Debug, Clone, PartialEq)]
pub struct TriggerBench {
    pub stacks: usize,
    pub iterations: usize,
    /// Stacks the policy triggered (checked against the generated dependents).
    pub triggered: usize,
    pub compile: Duration,
    /// Converting the stacks to a shared Rego value, once.
    pub build_stacks: Duration,
    /// Building one input document around the shared stacks.
    pub build_input: Duration,
    /// Cloning the prepared engine (paid by every evaluation).
    pub engine_clone: Duration,
    pub min: Duration,
    pub median: Duration,
    pub p95: Duration,
    pub max: Duration,
    pub mean: Duration,
}

impl TriggerBench {
    /// Human-readable figures, one per line.
    pub fn render(&self) -> String {
        format!(
            "trigger policy over {} stacks, {} evaluations, {} triggered\n\
             compile {:?}, build stacks once {:?}, build input {:?}, engine clone {:?}\n\
             per evaluation: min {:?} median {:?} p95 {:?} max {:?} mean {:?}\n",
            self.stacks,
            self.iterations,
            self.triggered,
            self.compile,
            self.build_stacks,
            self.build_input,
            self.engine_clone,
            self.min,
            self.median,
            self.p95,
            self.max,
            self.mean
        )
    }
}

/// `count` stacks; every tenth depends on `stack-0`, the rest carry unrelated labels.
pub fn synthetic_stacks(count: usize) -> Vec<StackInfo> {
    (0..count)
        .map(|i| StackInfo {
            id: format!("stack-{i}"),
            name: format!("Stack {i}"),
            branch: "main".to_string(),
            repository: "infra".to_string(),
            project_root: Some(format!("stacks/{i}")),
            state: "FINISHED".to_string(),
            labels: if i > 0 && i % 10 == 0 {
                vec!["depends-on:stack-0".to_string(), format!("team:{}", i % 7)]
            } else {
                vec![
                    format!("team:{}", i % 7),
                    format!("depends-on:stack-{}", i + 1),
                ]
            },
            ..StackInfo::default()
        })
        .collect()
}

/// Evaluates [`DEPENDS_ON_POLICY`] `iterations` times over `stacks` synthetic stacks.
pub fn trigger_policy_over_stacks(stacks: usize, iterations: usize) -> Result<TriggerBench> {
    let iterations = iterations.max(1);
    let started = Instant::now();
    let policy = CompiledPolicy::compile(
        "bench-depends-on",
        1,
        PolicyKind::Trigger,
        DEPENDS_ON_POLICY,
        PolicyOptions {
            timeout: Duration::from_secs(30),
        },
    )?;
    let compile = started.elapsed();

    let all = synthetic_stacks(stacks);
    let started = Instant::now();
    let shared = StacksDocument::new(&all)?;
    let build_stacks = started.elapsed();
    let expected = all
        .iter()
        .filter(|s| s.labels.iter().any(|l| l == "depends-on:stack-0"))
        .count();

    let input = TriggerInput {
        run: RunInfo {
            id: "run-1".to_string(),
            state: "FINISHED".to_string(),
            r#type: "TRACKED".to_string(),
            ..RunInfo::default()
        },
        stack: all.first().cloned().unwrap_or_default(),
        stacks: shared,
        workflow: Vec::new(),
    };
    let started = Instant::now();
    let value = input.to_rego()?;
    let build_input = started.elapsed();

    let clones = 100u32;
    let started = Instant::now();
    for _ in 0..clones {
        std::hint::black_box(policy.clone());
    }
    let engine_clone = started.elapsed() / clones;

    let mut samples = Vec::with_capacity(iterations);
    let mut triggered = 0;
    for _ in 0..iterations {
        let started = Instant::now();
        let evaluation = policy.evaluate_value(value.clone())?;
        samples.push(started.elapsed());
        triggered = TriggerDecision::from_document(&evaluation.document)?
            .trigger
            .len();
    }
    if triggered != expected {
        return Err(PolicyError::Evaluation(format!(
            "benchmark policy triggered {triggered} stacks, expected {expected}"
        )));
    }
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    let total: Duration = samples.iter().sum();
    Ok(TriggerBench {
        stacks,
        iterations,
        triggered,
        compile,
        build_stacks,
        build_input,
        engine_clone,
        min: samples[0],
        median: at(0.5),
        p95: at(0.95),
        max: samples[samples.len() - 1],
        mean: total / iterations as u32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn benchmark_checks_its_own_result() {
        let report = trigger_policy_over_stacks(200, 3).expect("bench");
        // Every tenth stack (10, 20, ..., 190) depends on stack-0.
        assert_eq!(report.triggered, 19);
        assert_eq!(report.iterations, 3);
        assert!(report.min <= report.median && report.median <= report.max);
        assert!(report.render().contains("200 stacks"));
    }
}
