//! Dispatch order: prioritized runs, then blocking runs (tracked, task), then proposed, then drift
//! detection; oldest first within a class. A blocking run may start only when it is the oldest
//! unfinished blocking run of its stack and deployment, so they run one at a time, in order.
//! Deployment runs are the exception: their plans run side by side and their applies queue for
//! the deployment's lock in approval order (the server checks the lock when it dispatches).

use std::collections::HashMap;

use crate::run::Run;

/// What a store knows about waiting work.
#[derive(Debug, Default, Clone)]
pub struct DispatchView {
    /// Runs in a dispatchable state (QUEUED, REPLAN_REQUESTED, CONFIRMED).
    pub runs: Vec<Run>,
    /// For each (stack, deployment): the id of its oldest non-terminal blocking run.
    pub blocking_heads: HashMap<(String, String), String>,
}

/// The runs that may be handed to a worker now, in the order they should be.
pub fn dispatch_order(view: DispatchView) -> Vec<Run> {
    let DispatchView {
        mut runs,
        blocking_heads,
    } = view;
    runs.retain(|r| {
        !r.run_type.is_blocking()
            || r.is_deployment_run()
            || blocking_heads.get(&(r.stack_id.clone(), r.deployment.clone())) == Some(&r.id)
    });
    runs.sort_by(|a, b| {
        (
            !a.prioritized,
            a.run_type.schedule_class(),
            a.is_deployment_run().then_some(a.approved_at),
            a.created_at,
            &a.id,
        )
            .cmp(&(
                !b.prioritized,
                b.run_type.schedule_class(),
                b.is_deployment_run().then_some(b.approved_at),
                b.created_at,
                &b.id,
            ))
    });
    runs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::{Commit, CreatorSession, RunType};

    fn run(id: &str, stack: &str, t: RunType, at: i64, prio: bool) -> Run {
        let mut r = Run::new(
            id.into(),
            stack.into(),
            t,
            Commit::default(),
            String::new(),
            CreatorSession::default(),
            at,
        );
        r.prioritized = prio;
        r
    }

    #[test]
    fn order_is_prioritized_blocking_proposed_drift_and_one_blocking_per_stack() {
        let runs = vec![
            run("d1", "a", RunType::DriftDetection, 1, false),
            run("p1", "a", RunType::Proposed, 2, false),
            run("t1", "a", RunType::Tracked, 3, false),
            run("t2", "a", RunType::Tracked, 4, false),
            run("p2", "b", RunType::Proposed, 5, true),
            run("k1", "b", RunType::Task, 6, false),
            run("p3", "a", RunType::Proposed, 7, false),
        ];
        let mut heads = HashMap::new();
        heads.insert(("a".to_string(), "default".to_string()), "t1".to_string());
        heads.insert(("b".to_string(), "default".to_string()), "k1".to_string());
        let ids: Vec<_> = dispatch_order(DispatchView {
            runs,
            blocking_heads: heads,
        })
        .into_iter()
        .map(|r| r.id)
        .collect();
        assert_eq!(ids, ["p2", "t1", "k1", "p1", "p3", "d1"]);
    }

    #[test]
    fn a_blocking_run_waits_while_an_older_one_is_unfinished() {
        let mut heads = HashMap::new();
        // t0 (not dispatchable: e.g. UNCONFIRMED) still heads the stack.
        heads.insert(("a".to_string(), "default".to_string()), "t0".to_string());
        let out = dispatch_order(DispatchView {
            runs: vec![run("t1", "a", RunType::Tracked, 3, true)],
            blocking_heads: heads,
        });
        assert!(out.is_empty());
    }
}
