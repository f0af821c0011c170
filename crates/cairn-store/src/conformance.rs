//! The conformance suite every [`Store`] backend must pass.
//!
//! Each case is a `pub async fn` taking a fresh, empty store and panicking on the first
//! violation. A backend's `tests/conformance.rs` runs all of them with
//! [`conformance_tests!`](crate::conformance_tests):
//!
//! ```ignore
//! use std::sync::Arc;
//! cairn_store::conformance_tests!(|| async {
//!     Arc::new(MyStore::open_in_memory().await.unwrap()) as Arc<dyn cairn_store::Store>
//! });
//! ```

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use cairn_core::{
    next_state, ApiKey, Change, ChangeAction, ChangePhase, Commit, CoreError, CreatorSession,
    Delta, DispatchView, Entity, EnvVar, Lease, LeaseKind, LogLine, LogStream, Phase, Review, Role,
    Run, RunEvent, RunPatch, RunState, RunType, Stack, Step, StepKind, StepState, Worker,
    WorkerPool,
};

use crate::{transition, Page, PolicyRecord, PolicySample, ReviewRecord, Store, StoreError};

mod tfstate;
pub use tfstate::*;
mod deployments;
pub use deployments::*;
mod vcs;
pub use vcs::*;
mod notify;
pub use notify::*;
mod dedup;
pub use dedup::*;
mod fanout;
pub use fanout::*;

/// Expands to one `#[tokio::test]` per conformance case. The first argument is an expression
/// that can be called with no arguments and returns a future of `Arc<dyn Store>`; it is called
/// once per test so that every case starts from an empty store. The optional
/// `skip_if = <fn() -> bool>` is asked first; when it returns true the test returns without
/// running (for backends that need an external server and were explicitly told to skip).
#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr $(,)?) => {
        $crate::conformance_tests!($factory, skip_if = || false);
    };
    ($factory:expr, skip_if = $skip:expr $(,)?) => {
        $crate::conformance_tests!(@cases $factory; $skip;
            stack_crud,
            stack_list_filters_by_labels_and_pages,
            stack_delete_is_refused_while_a_run_is_unfinished_and_cascades,
            env_vars,
            runs_create_get_and_list_newest_first,
            run_documents_round_trip,
            update_run_is_compare_and_swap,
            unfinished_and_workflow_runs,
            transition_walks_a_legal_path_with_history,
            illegal_transition_changes_nothing,
            dispatch_view_orders_runs,
            logs,
            pools_workers_and_leases,
            state_versions_append_only_and_refuse_stale_writes,
            deployments_crud_and_lock,
            configuration_versions_are_numbered_per_stack,
            state_locks_acquire_release_and_force_release,
            concurrent_state_writers_have_one_winner,
            api_keys,
            concurrent_conflicting_transitions_have_one_winner,
            policies_crud_attachments_and_versions,
            policy_samples_are_bounded_and_newest_first,
            reviews_and_approval_outcomes,
            vcs_integrations_events_and_refs,
            webhooks_deliveries_and_pr_comments,
            run_dedup_keys_are_unique,
            pull_request_snapshots,
            concurrent_dedup_inserts_have_one_winner,
            update_stacks_is_all_or_nothing,
            unfinished_runs_of_many_stacks,
        );
    };
    (@cases $factory:expr; $skip:expr; $($case:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                if ($skip)() {
                    return;
                }
                let store: ::std::sync::Arc<dyn $crate::Store> = ($factory)().await;
                $crate::conformance::$case(store).await;
            }
        )*
    };
}

/// A valid stack with the given id and labels.
pub fn stack(id: &str, labels: &[&str]) -> Stack {
    Stack {
        id: id.into(),
        name: format!("Stack {id}"),
        description: "conformance".into(),
        repository: "file:///repos/infra.git".into(),
        branch: "main".into(),
        project_root: format!("stacks/{id}"),
        vendor: "terraform".into(),
        labels: labels.iter().map(|l| l.to_string()).collect(),
        state: "NONE".into(),
        created_at: 1_000,
        updated_at: 1_000,
        version: 0,
        ..Default::default()
    }
}

/// A new QUEUED run of `stack_id` created at `created_at`.
pub fn run(id: &str, stack_id: &str, run_type: RunType, created_at: i64) -> Run {
    Run::new(
        id.into(),
        stack_id.into(),
        run_type,
        Commit {
            author: "alice".into(),
            branch: "main".into(),
            created_at,
            hash: "0123456789abcdef".into(),
            message: "change".into(),
        },
        "user:alice".into(),
        CreatorSession {
            login: "alice".into(),
            name: "Alice".into(),
            ..Default::default()
        },
        created_at,
    )
}

fn var(name: &str, value: &str, secret: bool) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: value.into(),
        secret,
    }
}

fn line(seq: i64, message: &str) -> LogLine {
    LogLine {
        seq,
        timestamp: 10_000 + seq,
        phase: Some(Phase::Planning),
        stream: LogStream::Stdout,
        message: message.into(),
    }
}

async fn step(store: &dyn Store, id: &str, event: RunEvent) -> Run {
    transition(store, id, event, "", RunPatch::default())
        .await
        .unwrap_or_else(|e| panic!("{id}: {event}: {e}"))
}

/// Walks a fresh run to UNCONFIRMED.
async fn to_unconfirmed(store: &dyn Store, id: &str) -> Run {
    for ev in [
        RunEvent::Dispatch,
        RunEvent::Initialize,
        RunEvent::Plan,
        RunEvent::RequireConfirmation,
    ] {
        step(store, id, ev).await;
    }
    let r = store.get_run(id).await.unwrap();
    assert_eq!(r.state, RunState::Unconfirmed);
    r
}

fn ids(runs: &[Run]) -> Vec<&str> {
    runs.iter().map(|r| r.id.as_str()).collect()
}

/// Every history entry follows from the previous one by some event of the table.
fn assert_history_is_legal(run: &Run) {
    assert_eq!(
        run.states_history.first().map(|h| h.state),
        Some(RunState::Queued)
    );
    for pair in run.states_history.windows(2) {
        let (from, to) = (pair[0].state, pair[1].state);
        assert!(
            RunEvent::ALL
                .iter()
                .any(|ev| next_state(from, *ev) == Some(to)),
            "{}: history has {from} -> {to}, which no event allows",
            run.id
        );
        assert!(
            pair[0].timestamp <= pair[1].timestamp,
            "history goes back in time"
        );
    }
    assert_eq!(run.states_history.last().map(|h| h.state), Some(run.state));
}

pub async fn stack_crud(store: Arc<dyn Store>) {
    let s = store
        .create_stack(stack("net-prod", &["team:net"]), vec![var("A", "1", false)])
        .await
        .unwrap();
    assert_eq!(s.version, 1, "versions start at 1");
    let got = store.get_stack("net-prod").await.unwrap();
    assert_eq!(got, s);

    match store.create_stack(stack("net-prod", &[]), vec![]).await {
        Err(StoreError::AlreadyExists { kind, id }) => {
            assert_eq!((kind, id.as_str()), ("stack", "net-prod"))
        }
        other => panic!("duplicate create: {other:?}"),
    }
    // The failed create left the original (and its variables) alone.
    assert_eq!(store.get_stack("net-prod").await.unwrap(), s);
    assert_eq!(
        store.list_env_vars("net-prod").await.unwrap(),
        vec![var("A", "1", false)]
    );
    assert!(matches!(
        store.get_stack("nope").await,
        Err(StoreError::NotFound { kind: "stack", .. })
    ));

    let mut edit = got.clone();
    edit.description = "edited".into();
    edit.labels.push("tier:1".into());
    edit.locked_by = "alice".into();
    let updated = store.update_stack(edit.clone()).await.unwrap();
    assert_eq!(updated.version, 2);
    assert_eq!(updated.description, "edited");
    let stored = store.get_stack("net-prod").await.unwrap();
    assert_eq!(stored, updated);
    assert_eq!(stored.labels, ["team:net", "tier:1"]);
    assert_eq!(stored.locked_by, "alice");

    // A writer holding version 1 lost the race: conflict, nothing written.
    let mut stale = got.clone();
    stale.description = "stale".into();
    match store.update_stack(stale).await {
        Err(StoreError::Conflict { expected, .. }) => assert_eq!(expected, 1),
        other => panic!("stale update: {other:?}"),
    }
    assert_eq!(store.get_stack("net-prod").await.unwrap(), updated);

    let mut missing = stack("ghost", &[]);
    missing.version = 1;
    assert!(matches!(
        store.update_stack(missing).await,
        Err(StoreError::NotFound { kind: "stack", .. })
    ));

    store
        .create_stack(stack("app-dev", &[]), vec![])
        .await
        .unwrap();
    let mut all: Vec<String> = store
        .all_stacks()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    all.sort();
    assert_eq!(all, ["app-dev", "net-prod"]);
}

pub async fn stack_list_filters_by_labels_and_pages(store: Arc<dyn Store>) {
    let specs: [(&str, &[&str]); 7] = [
        ("s-g", &["team:a", "env:prod"]),
        ("s-b", &["team:a"]),
        ("s-e", &["team:b", "env:prod"]),
        ("s-a", &["team:a", "env:dev"]),
        ("s-d", &[]),
        ("s-c", &["team:a", "env:prod"]),
        ("s-f", &["team:a:x"]),
    ];
    for (id, labels) in specs {
        store.create_stack(stack(id, labels), vec![]).await.unwrap();
    }

    let everything = store.list_stacks(&[], &Page::first(0)).await.unwrap();
    assert_eq!(
        everything
            .items
            .iter()
            .map(|s| s.id.as_str())
            .collect::<Vec<_>>(),
        ["s-a", "s-b", "s-c", "s-d", "s-e", "s-f", "s-g"],
        "ordered by id"
    );
    assert!(everything.next.is_none());

    let team_a = vec!["team:a".to_string()];
    let listed = collect_stack_pages(&*store, &team_a, 2).await;
    // "team:a:x" is a different label, not a prefix match.
    assert_eq!(listed, ["s-a", "s-b", "s-c", "s-g"]);

    let both = vec!["env:prod".to_string(), "team:a".to_string()];
    assert_eq!(collect_stack_pages(&*store, &both, 1).await, ["s-c", "s-g"]);
    assert_eq!(collect_stack_pages(&*store, &[], 3).await.len(), 7);
    assert!(collect_stack_pages(&*store, &["none".to_string()], 3)
        .await
        .is_empty());

    // A page exactly as large as what is left has no next token.
    let first = store.list_stacks(&team_a, &Page::first(4)).await.unwrap();
    assert_eq!(first.items.len(), 4);
    assert!(first.next.is_none());
}

async fn collect_stack_pages(store: &dyn Store, labels: &[String], size: u32) -> Vec<String> {
    let mut out = Vec::new();
    let mut page = Page::first(size);
    for _ in 0..100 {
        let got = store.list_stacks(labels, &page).await.unwrap();
        assert!(got.items.len() <= size as usize, "page larger than asked");
        assert!(
            got.next.is_none() || got.items.len() == size as usize,
            "a short page must be the last"
        );
        for s in &got.items {
            assert!(s.has_labels(labels));
        }
        out.extend(got.items.into_iter().map(|s| s.id));
        match got.next {
            Some(token) => page.token = Some(token),
            None => {
                let unique: HashSet<_> = out.iter().collect();
                assert_eq!(unique.len(), out.len(), "pages overlap");
                return out;
            }
        }
    }
    panic!("pagination does not end");
}

pub async fn stack_delete_is_refused_while_a_run_is_unfinished_and_cascades(store: Arc<dyn Store>) {
    store
        .create_stack(stack("doomed", &[]), vec![var("TOKEN", "t", true)])
        .await
        .unwrap();
    store
        .create_stack(stack("bystander", &[]), vec![var("KEEP", "k", false)])
        .await
        .unwrap();
    store
        .create_run(run("r-old", "doomed", RunType::Tracked, 10))
        .await
        .unwrap();
    store
        .create_run(run("r-live", "doomed", RunType::Proposed, 20))
        .await
        .unwrap();
    store
        .create_run(run("r-other", "bystander", RunType::Tracked, 30))
        .await
        .unwrap();
    store
        .append_logs("r-old", &[line(1, "old"), line(2, "older")])
        .await
        .unwrap();
    store
        .append_logs("r-other", &[line(1, "kept")])
        .await
        .unwrap();
    step(&*store, "r-old", RunEvent::Cancel).await;

    match store.delete_stack("doomed").await {
        Err(StoreError::Core(CoreError::FailedPrecondition(_))) => {}
        other => panic!("delete with an unfinished run: {other:?}"),
    }
    // Refused means untouched.
    store.get_stack("doomed").await.unwrap();
    assert_eq!(store.list_env_vars("doomed").await.unwrap().len(), 1);
    assert_eq!(
        store
            .list_runs("doomed", &Page::first(0))
            .await
            .unwrap()
            .items
            .len(),
        2
    );
    assert_eq!(store.last_log_seq("r-old").await.unwrap(), 2);

    step(&*store, "r-live", RunEvent::Cancel).await;
    store.delete_stack("doomed").await.unwrap();
    assert!(matches!(
        store.get_stack("doomed").await,
        Err(StoreError::NotFound { .. })
    ));
    for id in ["r-old", "r-live"] {
        assert!(matches!(
            store.get_run(id).await,
            Err(StoreError::NotFound { kind: "run", .. })
        ));
    }
    assert!(matches!(
        store.delete_stack("doomed").await,
        Err(StoreError::NotFound { kind: "stack", .. })
    ));

    // Re-creating the stack and its run ids finds nothing left behind.
    store
        .create_stack(stack("doomed", &[]), vec![])
        .await
        .unwrap();
    assert!(store.list_env_vars("doomed").await.unwrap().is_empty());
    assert!(store
        .list_runs("doomed", &Page::first(0))
        .await
        .unwrap()
        .items
        .is_empty());
    store
        .create_run(run("r-old", "doomed", RunType::Tracked, 40))
        .await
        .unwrap();
    assert_eq!(store.last_log_seq("r-old").await.unwrap(), 0);
    assert!(store.read_logs("r-old", 0, 100).await.unwrap().is_empty());

    // The other stack was not touched.
    assert_eq!(
        store.list_env_vars("bystander").await.unwrap(),
        vec![var("KEEP", "k", false)]
    );
    store.get_run("r-other").await.unwrap();
    assert_eq!(store.read_logs("r-other", 0, 10).await.unwrap().len(), 1);
}

pub async fn env_vars(store: Arc<dyn Store>) {
    store
        .create_stack(
            stack("s1", &[]),
            vec![var("B", "b0", false), var("A", "a0", true)],
        )
        .await
        .unwrap();
    store.create_stack(stack("s2", &[]), vec![]).await.unwrap();
    assert_eq!(
        store.list_env_vars("s1").await.unwrap(),
        vec![var("A", "a0", true), var("B", "b0", false)],
        "ordered by name, secrets in clear"
    );

    store
        .set_env_var("s1", var("C", "c0", false))
        .await
        .unwrap();
    store.set_env_var("s1", var("B", "b1", true)).await.unwrap();
    store
        .set_env_var("s2", var("A", "other", false))
        .await
        .unwrap();
    assert_eq!(
        store.list_env_vars("s1").await.unwrap(),
        vec![
            var("A", "a0", true),
            var("B", "b1", true),
            var("C", "c0", false)
        ]
    );

    store.delete_env_var("s1", "A").await.unwrap();
    assert!(matches!(
        store.delete_env_var("s1", "A").await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(
        store.list_env_vars("s1").await.unwrap(),
        vec![var("B", "b1", true), var("C", "c0", false)]
    );
    assert_eq!(
        store.list_env_vars("s2").await.unwrap(),
        vec![var("A", "other", false)]
    );

    assert!(matches!(
        store.set_env_var("ghost", var("A", "1", false)).await,
        Err(StoreError::NotFound { kind: "stack", .. })
    ));
    assert!(matches!(
        store.list_env_vars("ghost").await,
        Err(StoreError::NotFound { kind: "stack", .. })
    ));
}

pub async fn runs_create_get_and_list_newest_first(store: Arc<dyn Store>) {
    store.create_stack(stack("s1", &[]), vec![]).await.unwrap();
    store.create_stack(stack("s2", &[]), vec![]).await.unwrap();
    // r3a and r3b share a timestamp: the id breaks the tie.
    for (id, at) in [
        ("r1", 100),
        ("r2", 200),
        ("r3a", 300),
        ("r3b", 300),
        ("r4", 400),
    ] {
        let created = store
            .create_run(run(id, "s1", RunType::Tracked, at))
            .await
            .unwrap();
        assert_eq!(created, run(id, "s1", RunType::Tracked, at));
    }
    store
        .create_run(run("x1", "s2", RunType::Proposed, 250))
        .await
        .unwrap();

    assert_eq!(
        store.get_run("r2").await.unwrap(),
        run("r2", "s1", RunType::Tracked, 200)
    );
    assert!(matches!(
        store
            .create_run(run("r2", "s1", RunType::Tracked, 999))
            .await,
        Err(StoreError::AlreadyExists { kind: "run", .. })
    ));
    assert_eq!(store.get_run("r2").await.unwrap().created_at, 200);
    assert!(matches!(
        store.get_run("nope").await,
        Err(StoreError::NotFound { kind: "run", .. })
    ));
    assert!(matches!(
        store
            .create_run(run("r9", "ghost", RunType::Tracked, 1))
            .await,
        Err(StoreError::NotFound { kind: "stack", .. })
    ));

    let mut seen = Vec::new();
    let mut page = Page::first(2);
    loop {
        let got = store.list_runs("s1", &page).await.unwrap();
        assert!(got.items.len() <= 2);
        seen.extend(got.items.into_iter().map(|r| r.id));
        match got.next {
            Some(t) => page.token = Some(t),
            None => break,
        }
        assert!(seen.len() <= 5, "pagination does not end");
    }
    assert_eq!(seen, ["r4", "r3b", "r3a", "r2", "r1"]);
    let all = store.list_runs("s1", &Page::first(0)).await.unwrap();
    assert_eq!(ids(&all.items), ["r4", "r3b", "r3a", "r2", "r1"]);
    assert!(all.next.is_none());
    assert_eq!(
        ids(&store.list_runs("s2", &Page::first(10)).await.unwrap().items),
        ["x1"]
    );
    assert!(matches!(
        store
            .list_runs(
                "s1",
                &Page {
                    size: 2,
                    token: Some("not a token".into())
                }
            )
            .await,
        Err(StoreError::Core(CoreError::InvalidArgument { .. }))
    ));
}

pub async fn run_documents_round_trip(store: Arc<dyn Store>) {
    store.create_stack(stack("s1", &[]), vec![]).await.unwrap();
    let mut r = run("full", "s1", RunType::Task, 5);
    r.prioritized = true;
    r.deployment = "eu-west".into();
    r.workflow_id = "wf-1".into();
    r.flags = vec!["a".into(), "b".into()];
    r.targets = vec!["aws_s3_bucket.x".into()];
    r.changes = vec![Change {
        action: ChangeAction::Added,
        entity: Entity {
            address: "aws_s3_bucket.x".into(),
            name: "x".into(),
            r#type: "aws_s3_bucket".into(),
            entity_vendor: "terraform".into(),
            entity_type: "resource".into(),
            data: serde_json::json!({"bucket": "b", "tags": {"k": "v"}, "n": 3}),
        },
        phase: ChangePhase::Plan,
    }];
    r.delta = Delta::from_changes(&r.changes);
    r.steps = vec![Step {
        index: 0,
        kind: StepKind::Plan,
        state: StepState::Success,
        started_at: 6,
        ended_at: 7,
        delta: r.delta,
    }];
    r.reviews = vec![Review {
        login: "bob".into(),
        approve: true,
        note: "ok \"quoted\" ünïcode".into(),
        timestamp: 8,
    }];
    r.policy_denies = vec!["no".into()];
    r.policy_warnings = vec!["careful".into()];
    r.error = "line1\nline2".into();
    r.plan_json = "{\"format_version\":\"1.0\"}".into();
    r.artifact_id = "art-1".into();
    store.create_run(r.clone()).await.unwrap();
    assert_eq!(store.get_run("full").await.unwrap(), r);
    assert_eq!(store.workflow_runs("wf-1").await.unwrap(), vec![r]);
}

pub async fn update_run_is_compare_and_swap(store: Arc<dyn Store>) {
    store.create_stack(stack("s1", &[]), vec![]).await.unwrap();
    store
        .create_run(run("r1", "s1", RunType::Tracked, 1))
        .await
        .unwrap();

    let mut a = store.get_run("r1").await.unwrap();
    let b = a.clone();
    a.apply_patch(
        RunPatch {
            error: Some("first".into()),
            ..Default::default()
        },
        2,
    );
    let stored = store.update_run(&a, 1).await.unwrap();
    assert_eq!(stored, a);
    assert_eq!(stored.version, 2);

    let mut late = b.clone();
    late.apply_patch(
        RunPatch {
            error: Some("second".into()),
            ..Default::default()
        },
        3,
    );
    match store.update_run(&late, 1).await {
        Err(StoreError::Conflict { kind, expected, .. }) => {
            assert_eq!((kind, expected), ("run", 1))
        }
        other => panic!("stale update_run: {other:?}"),
    }
    assert_eq!(store.get_run("r1").await.unwrap(), a);

    let mut ghost = run("ghost", "s1", RunType::Tracked, 1);
    ghost.version = 2;
    assert!(matches!(
        store.update_run(&ghost, 1).await,
        Err(StoreError::NotFound { kind: "run", .. })
    ));
}

pub async fn unfinished_and_workflow_runs(store: Arc<dyn Store>) {
    store.create_stack(stack("s1", &[]), vec![]).await.unwrap();
    store.create_stack(stack("s2", &[]), vec![]).await.unwrap();
    let mut wf = Vec::new();
    for (id, st, at) in [
        ("a", "s1", 1),
        ("b", "s1", 2),
        ("c", "s1", 3),
        ("d", "s2", 4),
    ] {
        let mut r = run(id, st, RunType::Tracked, at);
        if id != "c" {
            r.workflow_id = "wf".into();
            wf.push(id);
        }
        store.create_run(r).await.unwrap();
    }
    step(&*store, "a", RunEvent::Cancel).await;
    step(&*store, "b", RunEvent::Dispatch).await;

    let mut open = ids(&store.unfinished_runs("s1").await.unwrap())
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
    open.sort();
    assert_eq!(open, ["b", "c"]);
    assert_eq!(ids(&store.unfinished_runs("s2").await.unwrap()), ["d"]);
    assert!(store.unfinished_runs("ghost").await.unwrap().is_empty());

    let mut in_wf = store
        .workflow_runs("wf")
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect::<Vec<_>>();
    in_wf.sort();
    assert_eq!(in_wf, wf);
    // A run is the head of its own workflow unless told otherwise.
    assert_eq!(ids(&store.workflow_runs("c").await.unwrap()), ["c"]);
    assert!(store.workflow_runs("none").await.unwrap().is_empty());
}

pub async fn transition_walks_a_legal_path_with_history(store: Arc<dyn Store>) {
    store.create_stack(stack("s1", &[]), vec![]).await.unwrap();
    let created = store
        .create_run(run("r1", "s1", RunType::Tracked, 1))
        .await
        .unwrap();
    let path = [
        (RunEvent::Dispatch, RunState::Preparing),
        (RunEvent::Initialize, RunState::Initializing),
        (RunEvent::Plan, RunState::Planning),
        (RunEvent::RequireConfirmation, RunState::Unconfirmed),
        (RunEvent::Confirm, RunState::Confirmed),
        (RunEvent::PickUpApply, RunState::PreparingApply),
        (RunEvent::Apply, RunState::Applying),
        (RunEvent::FinishApply, RunState::Finished),
    ];
    let delta = Delta {
        added_resources: 2,
        ..Default::default()
    };
    let mut version = created.version;
    for (i, (event, state)) in path.into_iter().enumerate() {
        let patch = if event == RunEvent::RequireConfirmation {
            RunPatch {
                delta: Some(delta),
                no_op: Some(false),
                ..Default::default()
            }
        } else {
            RunPatch::default()
        };
        let note = format!("step {i}");
        let out = transition(&*store, "r1", event, &note, patch)
            .await
            .unwrap();
        assert_eq!(out.state, state);
        assert_eq!(out.version, version + 1);
        version = out.version;
        let stored = store.get_run("r1").await.unwrap();
        assert_eq!(stored, out, "what transition returns is what is stored");
        let last = stored.states_history.last().unwrap();
        assert_eq!((last.state, last.note.as_str()), (state, note.as_str()));
        assert!(
            last.timestamp > 1,
            "history entries carry the time of the change"
        );
        assert_eq!(stored.updated_at, last.timestamp);
    }
    let done = store.get_run("r1").await.unwrap();
    assert_eq!(done.states_history.len(), 9);
    assert_eq!(
        done.states_history
            .iter()
            .map(|h| h.state)
            .collect::<Vec<_>>(),
        std::iter::once(RunState::Queued)
            .chain(path.iter().map(|(_, s)| *s))
            .collect::<Vec<_>>()
    );
    assert_eq!(done.delta, delta, "patches persist with their transition");
    assert_history_is_legal(&done);
    assert!(store.unfinished_runs("s1").await.unwrap().is_empty());
}

pub async fn illegal_transition_changes_nothing(store: Arc<dyn Store>) {
    store.create_stack(stack("s1", &[]), vec![]).await.unwrap();
    store
        .create_run(run("r1", "s1", RunType::Tracked, 1))
        .await
        .unwrap();
    let before = store.get_run("r1").await.unwrap();
    for event in [RunEvent::Confirm, RunEvent::Apply, RunEvent::FinishApply] {
        match transition(
            &*store,
            "r1",
            event,
            "nope",
            RunPatch {
                error: Some("must not be stored".into()),
                ..Default::default()
            },
        )
        .await
        {
            Err(StoreError::Core(CoreError::IllegalTransition { state, event: e })) => {
                assert_eq!((state, e), (RunState::Queued, event))
            }
            other => panic!("{event} from QUEUED: {other:?}"),
        }
    }
    assert_eq!(store.get_run("r1").await.unwrap(), before);

    step(&*store, "r1", RunEvent::Cancel).await;
    let canceled = store.get_run("r1").await.unwrap();
    for event in RunEvent::ALL {
        assert!(matches!(
            transition(&*store, "r1", event, "", RunPatch::default()).await,
            Err(StoreError::Core(CoreError::IllegalTransition { .. }))
        ));
    }
    assert_eq!(store.get_run("r1").await.unwrap(), canceled);
    assert!(matches!(
        transition(&*store, "ghost", RunEvent::Cancel, "", RunPatch::default()).await,
        Err(StoreError::NotFound { kind: "run", .. })
    ));
}

async fn dispatchable(store: &dyn Store) -> Vec<String> {
    let view = store.dispatch_view().await.unwrap();
    cairn_core::dispatch_order(view)
        .into_iter()
        .map(|r| r.id)
        .collect()
}

pub async fn dispatch_view_orders_runs(store: Arc<dyn Store>) {
    store.create_stack(stack("a", &[]), vec![]).await.unwrap();
    store.create_stack(stack("b", &[]), vec![]).await.unwrap();
    let mut specs = vec![
        ("d1", "a", RunType::DriftDetection, 1, false, "default"),
        ("p1", "a", RunType::Proposed, 2, false, "default"),
        ("t1", "a", RunType::Tracked, 3, false, "default"),
        ("t2", "a", RunType::Tracked, 4, true, "default"),
        ("p2", "b", RunType::Proposed, 5, true, "default"),
        ("k1", "b", RunType::Task, 6, false, "default"),
        ("p3", "a", RunType::Proposed, 7, false, "default"),
        ("e1", "a", RunType::Tracked, 8, false, "eu"),
        ("e2", "a", RunType::Task, 9, false, "eu"),
    ];
    // Insertion order must not matter: the store orders by creation time.
    specs.reverse();
    for (id, st, ty, at, prio, dep) in specs {
        let mut r = run(id, st, ty, at);
        r.prioritized = prio;
        r.deployment = dep.into();
        store.create_run(r).await.unwrap();
    }

    let view = store.dispatch_view().await.unwrap();
    let heads: HashMap<(String, String), String> = [
        (("a", "default"), "t1"),
        (("a", "eu"), "e1"),
        (("b", "default"), "k1"),
    ]
    .into_iter()
    .map(|((s, d), id)| ((s.to_string(), d.to_string()), id.to_string()))
    .collect();
    assert_eq!(view.blocking_heads, heads);
    assert_eq!(view.runs.len(), 9);
    // t2 is prioritized but waits behind t1; proposed runs go in parallel; drift goes last.
    assert_eq!(
        dispatchable(&*store).await,
        ["p2", "t1", "k1", "e1", "p1", "p3", "d1"]
    );

    // Leased runs leave the view but still head their queue.
    step(&*store, "t1", RunEvent::Dispatch).await;
    step(&*store, "p1", RunEvent::Dispatch).await;
    assert_eq!(dispatchable(&*store).await, ["p2", "k1", "e1", "p3", "d1"]);

    // t1 waits for confirmation: t2 still may not start.
    to_unconfirmed_from_preparing(&*store, "t1").await;
    assert!(!dispatchable(&*store).await.contains(&"t2".to_string()));
    // Once t1 is over, the prioritized t2 goes first of all.
    step(&*store, "t1", RunEvent::Discard).await;
    assert_eq!(dispatchable(&*store).await[0], "t2");

    // A CONFIRMED head is dispatchable again (for its apply), and still blocks the next one.
    let mut t3 = run("t3", "b", RunType::Tracked, 10);
    t3.deployment = "default".into();
    store.create_run(t3).await.unwrap();
    to_unconfirmed(&*store, "k1").await;
    step(&*store, "k1", RunEvent::Confirm).await;
    let order = dispatchable(&*store).await;
    assert!(order.contains(&"k1".to_string()));
    assert!(!order.contains(&"t3".to_string()));

    let view = store.dispatch_view().await.unwrap();
    assert!(view.runs.iter().all(|r| r.state.is_dispatchable()));
    let DispatchView { blocking_heads, .. } = view;
    assert_eq!(
        blocking_heads[&("b".to_string(), "default".to_string())],
        "k1"
    );
    assert_eq!(
        blocking_heads[&("a".to_string(), "default".to_string())],
        "t2"
    );
}

async fn to_unconfirmed_from_preparing(store: &dyn Store, id: &str) {
    for ev in [
        RunEvent::Initialize,
        RunEvent::Plan,
        RunEvent::RequireConfirmation,
    ] {
        step(store, id, ev).await;
    }
}

pub async fn logs(store: Arc<dyn Store>) {
    store.create_stack(stack("s1", &[]), vec![]).await.unwrap();
    for id in ["r1", "r2"] {
        store
            .create_run(run(id, "s1", RunType::Tracked, 1))
            .await
            .unwrap();
    }
    assert_eq!(store.last_log_seq("r1").await.unwrap(), 0);
    assert!(store.read_logs("r1", 0, 10).await.unwrap().is_empty());
    store.append_logs("r1", &[]).await.unwrap();

    let mut sys = line(3, "Cairn: state PLANNING");
    sys.stream = LogStream::System;
    sys.phase = None;
    store
        .append_logs("r1", &[line(1, "one"), line(2, "two ✓"), sys.clone()])
        .await
        .unwrap();
    // Lines may arrive out of order; reads are ordered by seq.
    store
        .append_logs("r1", &[line(6, "six"), line(4, "four")])
        .await
        .unwrap();
    store.append_logs("r1", &[line(5, "five")]).await.unwrap();
    store.append_logs("r2", &[line(1, "other")]).await.unwrap();
    assert_eq!(store.last_log_seq("r1").await.unwrap(), 6);
    assert_eq!(store.last_log_seq("r2").await.unwrap(), 1);

    let first = store.read_logs("r1", 0, 3).await.unwrap();
    assert_eq!(first, vec![line(1, "one"), line(2, "two ✓"), sys]);
    let rest = store.read_logs("r1", 3, 100).await.unwrap();
    assert_eq!(rest.iter().map(|l| l.seq).collect::<Vec<_>>(), [4, 5, 6]);
    assert!(store.read_logs("r1", 6, 100).await.unwrap().is_empty());

    // A re-sent line (agent reconnect) is ignored, not duplicated or overwritten.
    store
        .append_logs("r1", &[line(6, "six again"), line(7, "seven")])
        .await
        .unwrap();
    let tail = store.read_logs("r1", 5, 100).await.unwrap();
    assert_eq!(tail, vec![line(6, "six"), line(7, "seven")]);

    assert!(matches!(
        store.append_logs("ghost", &[line(1, "x")]).await,
        Err(StoreError::NotFound { kind: "run", .. })
    ));
}

pub async fn pools_workers_and_leases(store: Arc<dyn Store>) {
    let pool = WorkerPool {
        id: "pool-1".into(),
        name: "Private".into(),
        labels: vec!["region:eu".into()],
        token_hash: "aa".repeat(32),
        created_at: 1,
    };
    assert_eq!(store.create_worker_pool(pool.clone()).await.unwrap(), pool);
    assert!(matches!(
        store.create_worker_pool(pool.clone()).await,
        Err(StoreError::AlreadyExists { .. })
    ));
    let other = WorkerPool {
        id: "pool-2".into(),
        name: "Other".into(),
        labels: vec![],
        token_hash: "bb".repeat(32),
        created_at: 2,
    };
    store.create_worker_pool(other.clone()).await.unwrap();
    assert_eq!(store.get_worker_pool("pool-1").await.unwrap(), pool);
    assert_eq!(
        store
            .find_worker_pool_by_token_hash(&"bb".repeat(32))
            .await
            .unwrap(),
        other
    );
    assert!(matches!(
        store.find_worker_pool_by_token_hash(&"cc".repeat(32)).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.get_worker_pool("nope").await,
        Err(StoreError::NotFound { .. })
    ));
    let mut pools = store.list_worker_pools().await.unwrap();
    pools.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(pools, vec![pool.clone(), other.clone()]);

    let mut w = Worker {
        id: "wrk-1".into(),
        pool_id: "pool-1".into(),
        name: "w1".into(),
        labels: vec!["gpu".into()],
        max_jobs: 2,
        last_heartbeat_at: 10,
        connected: true,
    };
    store.upsert_worker(w.clone()).await.unwrap();
    w.last_heartbeat_at = 20;
    w.connected = false;
    store.upsert_worker(w.clone()).await.unwrap();
    let w2 = Worker {
        id: "wrk-2".into(),
        pool_id: "pool-2".into(),
        name: "w2".into(),
        labels: vec![],
        max_jobs: 1,
        last_heartbeat_at: 5,
        connected: true,
    };
    store.upsert_worker(w2.clone()).await.unwrap();
    assert_eq!(store.list_workers("pool-1").await.unwrap(), vec![w.clone()]);
    assert_eq!(store.list_workers("pool-2").await.unwrap(), vec![w2]);

    store.create_stack(stack("s1", &[]), vec![]).await.unwrap();
    for id in ["r1", "r2"] {
        store
            .create_run(run(id, "s1", RunType::Proposed, 1))
            .await
            .unwrap();
    }
    let lease = |id: &str, run_id: &str, worker: &str, at: i64| Lease {
        id: id.into(),
        run_id: run_id.into(),
        stack_id: "s1".into(),
        worker_id: worker.into(),
        kind: LeaseKind::Plan,
        created_at: at,
        heartbeat_at: at,
    };
    store
        .create_lease(lease("l1", "r1", "wrk-1", 100))
        .await
        .unwrap();
    let mut l2 = lease("l2", "r2", "wrk-2", 100);
    l2.kind = LeaseKind::Apply;
    store.create_lease(l2.clone()).await.unwrap();
    assert!(matches!(
        store.create_lease(lease("l1", "r2", "wrk-1", 1)).await,
        Err(StoreError::AlreadyExists { .. })
    ));
    assert_eq!(
        store.get_lease("l1").await.unwrap(),
        lease("l1", "r1", "wrk-1", 100)
    );

    // A worker refreshes only its own leases.
    store
        .heartbeat_leases("wrk-1", &["l1".into(), "l2".into()], 500)
        .await
        .unwrap();
    store.heartbeat_leases("wrk-1", &[], 600).await.unwrap();
    let l1 = store.get_lease("l1").await.unwrap();
    assert_eq!((l1.created_at, l1.heartbeat_at), (100, 500));
    assert_eq!(store.get_lease("l2").await.unwrap(), l2);

    let timeout = 300;
    let expired: Vec<String> = store
        .list_leases()
        .await
        .unwrap()
        .into_iter()
        .filter(|l| l.is_expired(700, timeout))
        .map(|l| l.id)
        .collect();
    assert_eq!(expired, ["l2"]);

    store.delete_lease("l2").await.unwrap();
    assert!(matches!(
        store.delete_lease("l2").await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.get_lease("l2").await,
        Err(StoreError::NotFound { kind: "lease", .. })
    ));
    assert_eq!(ids_of_leases(&*store).await, ["l1"]);
}

async fn ids_of_leases(store: &dyn Store) -> Vec<String> {
    let mut v: Vec<String> = store
        .list_leases()
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.id)
        .collect();
    v.sort();
    v
}

pub async fn api_keys(store: Arc<dyn Store>) {
    let key = ApiKey {
        id: "key-1".into(),
        login: "alice".into(),
        name: "Alice".into(),
        teams: vec!["ops".into(), "dev".into()],
        machine: false,
        role: Role::Admin,
        created_at: 1,
        revoked: false,
        secret_hash: "11".repeat(32),
    };
    assert_eq!(store.create_api_key(key.clone()).await.unwrap(), key);
    assert!(matches!(
        store.create_api_key(key.clone()).await,
        Err(StoreError::AlreadyExists { .. })
    ));
    let bot = ApiKey {
        id: "key-2".into(),
        login: "ci".into(),
        name: "CI".into(),
        teams: vec![],
        machine: true,
        role: Role::Writer,
        created_at: 2,
        revoked: false,
        secret_hash: "22".repeat(32),
    };
    store.create_api_key(bot.clone()).await.unwrap();
    assert_eq!(
        store.find_api_key_by_hash(&"11".repeat(32)).await.unwrap(),
        key
    );
    assert!(matches!(
        store.find_api_key_by_hash(&"33".repeat(32)).await,
        Err(StoreError::NotFound { .. })
    ));

    store.revoke_api_key("key-1").await.unwrap();
    // Revoked keys are still found, so that the caller can say why they are refused.
    let revoked = store.find_api_key_by_hash(&"11".repeat(32)).await.unwrap();
    assert!(revoked.revoked);
    assert_eq!(
        revoked,
        ApiKey {
            revoked: true,
            ..key.clone()
        }
    );
    assert!(
        !store
            .find_api_key_by_hash(&"22".repeat(32))
            .await
            .unwrap()
            .revoked
    );
    assert!(matches!(
        store.revoke_api_key("nope").await,
        Err(StoreError::NotFound { .. })
    ));
    let mut all = store.list_api_keys().await.unwrap();
    all.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(
        all,
        vec![
            ApiKey {
                revoked: true,
                ..key
            },
            bot
        ]
    );
}

/// 50 tasks race to decide one UNCONFIRMED run: exactly one wins, the others find the run
/// already decided, and the history shows one decision.
pub async fn concurrent_conflicting_transitions_have_one_winner(store: Arc<dyn Store>) {
    store.create_stack(stack("s1", &[]), vec![]).await.unwrap();
    for round in 0..3 {
        let id = format!("race-{round}");
        store
            .create_run(run(&id, "s1", RunType::Tracked, 1))
            .await
            .unwrap();
        let before = to_unconfirmed(&*store, &id).await;

        let barrier = Arc::new(tokio::sync::Barrier::new(50));
        let mut tasks = Vec::new();
        for i in 0..50 {
            let event = [RunEvent::Confirm, RunEvent::Discard, RunEvent::Cancel][i % 3];
            let store = store.clone();
            let barrier = barrier.clone();
            let id = id.clone();
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let out = transition(
                    &*store,
                    &id,
                    event,
                    &format!("task {i}"),
                    RunPatch::default(),
                )
                .await;
                (event, out)
            }));
        }
        let mut winners = Vec::new();
        let mut losers = 0;
        for t in tasks {
            match t.await.unwrap() {
                (event, Ok(run)) => winners.push((event, run)),
                (_, Err(StoreError::Core(CoreError::IllegalTransition { state, .. }))) => {
                    assert!(state.is_terminal() || state == RunState::Confirmed);
                    losers += 1;
                }
                (event, Err(e)) => panic!("{event}: unexpected error {e}"),
            }
        }
        assert_eq!(winners.len(), 1, "exactly one transition wins");
        assert_eq!(losers, 49);
        let (event, won) = winners.pop().unwrap();
        let expected = next_state(RunState::Unconfirmed, event).unwrap();
        assert_eq!(won.state, expected);

        let stored = store.get_run(&id).await.unwrap();
        assert_eq!(stored, won, "the stored run is the winner's");
        assert_eq!(stored.version, before.version + 1);
        assert_eq!(stored.states_history.len(), before.states_history.len() + 1);
        assert_eq!(
            stored.states_history[..before.states_history.len()],
            before.states_history[..]
        );
        let after: Vec<RunState> = stored
            .states_history
            .iter()
            .skip_while(|h| h.state != RunState::Unconfirmed)
            .skip(1)
            .map(|h| h.state)
            .collect();
        assert_eq!(after, [expected]);
        assert_history_is_legal(&stored);
    }
}

fn policy(id: &str, kind: &str, labels: &[&str]) -> PolicyRecord {
    PolicyRecord {
        id: id.into(),
        name: format!("Policy {id}"),
        kind: kind.into(),
        body: "package spacelift\n".into(),
        labels: labels.iter().map(|l| l.to_string()).collect(),
        version: 0,
        stack_ids: vec!["ignored-by-create".into()],
        created_at: 10,
        updated_at: 10,
    }
}

pub async fn policies_crud_attachments_and_versions(store: Arc<dyn Store>) {
    store.create_stack(stack("s1", &[]), vec![]).await.unwrap();
    store.create_stack(stack("s2", &[]), vec![]).await.unwrap();
    let created = store
        .create_policy(policy("p-trigger", "TRIGGER", &["autoattach:infra"]))
        .await
        .unwrap();
    assert_eq!(created.version, 1);
    assert!(created.stack_ids.is_empty(), "create ignores stack_ids");
    assert!(matches!(
        store.create_policy(policy("p-trigger", "PLAN", &[])).await,
        Err(StoreError::AlreadyExists { .. })
    ));
    for id in ["p-plan-a", "p-plan-b", "p-plan-c"] {
        store.create_policy(policy(id, "PLAN", &[])).await.unwrap();
    }

    // Attach is idempotent; both missing sides are named.
    store.attach_policy("p-trigger", "s2").await.unwrap();
    store.attach_policy("p-trigger", "s1").await.unwrap();
    store.attach_policy("p-trigger", "s1").await.unwrap();
    match store.attach_policy("nope", "s1").await {
        Err(StoreError::NotFound { kind, .. }) => assert_eq!(kind, "policy"),
        other => panic!("{other:?}"),
    }
    match store.attach_policy("p-trigger", "nope").await {
        Err(StoreError::NotFound { kind, .. }) => assert_eq!(kind, "stack"),
        other => panic!("{other:?}"),
    }
    let got = store.get_policy("p-trigger").await.unwrap();
    assert_eq!(got.stack_ids, ["s1", "s2"]);
    assert_eq!(got.labels, ["autoattach:infra"]);

    // Update is compare-and-swap on the version and keeps the attachments.
    let mut next = got.clone();
    next.body = "package spacelift\ntrigger[\"s1\"] { true }\n".into();
    next.updated_at = 20;
    let v2 = store.update_policy(next.clone()).await.unwrap();
    assert_eq!(v2.version, 2);
    assert_eq!(v2.body, next.body);
    assert_eq!(v2.stack_ids, ["s1", "s2"]);
    assert_eq!(v2.created_at, 10);
    assert!(matches!(
        store.update_policy(next).await,
        Err(StoreError::Conflict { .. })
    ));
    assert!(matches!(
        store.update_policy(policy("ghost", "PLAN", &[])).await,
        Err(StoreError::NotFound { .. })
    ));

    // Listing: by kind, paged by id.
    let first = store
        .list_policies(Some("PLAN"), &Page::first(2))
        .await
        .unwrap();
    let ids: Vec<_> = first.items.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["p-plan-a", "p-plan-b"]);
    let second = store
        .list_policies(
            Some("PLAN"),
            &Page {
                size: 2,
                token: first.next,
            },
        )
        .await
        .unwrap();
    assert_eq!(second.items.len(), 1);
    assert!(second.next.is_none());
    assert_eq!(
        store
            .list_policies(None, &Page::first(0))
            .await
            .unwrap()
            .items
            .len(),
        4
    );
    let all = store.all_policies().await.unwrap();
    assert_eq!(all.len(), 4);
    assert_eq!(
        all.iter().find(|p| p.id == "p-trigger").unwrap().stack_ids,
        ["s1", "s2"]
    );

    // Detach, and attachments go with a deleted stack or policy.
    store.detach_policy("p-trigger", "s2").await.unwrap();
    assert!(matches!(
        store.detach_policy("p-trigger", "s2").await,
        Err(StoreError::NotFound { .. })
    ));
    store.delete_stack("s1").await.unwrap();
    assert!(store
        .get_policy("p-trigger")
        .await
        .unwrap()
        .stack_ids
        .is_empty());
    store.attach_policy("p-plan-a", "s2").await.unwrap();
    store.delete_policy("p-plan-a").await.unwrap();
    assert!(matches!(
        store.get_policy("p-plan-a").await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.delete_policy("p-plan-a").await,
        Err(StoreError::NotFound { .. })
    ));
    store.attach_policy("p-plan-b", "s2").await.unwrap();
}

pub async fn policy_samples_are_bounded_and_newest_first(store: Arc<dyn Store>) {
    store
        .create_policy(policy("p1", "PLAN", &[]))
        .await
        .unwrap();
    store
        .create_policy(policy("p2", "PLAN", &[]))
        .await
        .unwrap();
    for i in 0..7 {
        store
            .add_policy_sample(
                PolicySample {
                    id: format!("smp-{i}"),
                    policy_id: "p1".into(),
                    policy_version: 1 + i / 4,
                    run_id: "run-x".into(),
                    input_json: format!("{{\"i\":{i}}}"),
                    decision_json: "{}".into(),
                    duration_micros: 5,
                    created_at: 100,
                    error: if i == 6 { "boom".into() } else { String::new() },
                },
                5,
            )
            .await
            .unwrap();
    }
    store
        .add_policy_sample(
            PolicySample {
                id: "other".into(),
                policy_id: "p2".into(),
                policy_version: 1,
                ..Default::default()
            },
            5,
        )
        .await
        .unwrap();
    assert!(matches!(
        store
            .add_policy_sample(
                PolicySample {
                    id: "orphan".into(),
                    policy_id: "missing".into(),
                    ..Default::default()
                },
                5
            )
            .await,
        Err(StoreError::NotFound { .. })
    ));
    let page = store
        .list_policy_samples("p1", &Page::first(3))
        .await
        .unwrap();
    let ids: Vec<_> = page.items.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["smp-6", "smp-5", "smp-4"]);
    assert_eq!(page.items[0].error, "boom");
    assert_eq!(page.items[0].policy_version, 2);
    let rest = store
        .list_policy_samples(
            "p1",
            &Page {
                size: 3,
                token: page.next,
            },
        )
        .await
        .unwrap();
    let ids: Vec<_> = rest.items.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["smp-3", "smp-2"], "only the newest 5 are kept");
    assert!(rest.next.is_none());
    let got = store.get_policy_sample("smp-3").await.unwrap();
    assert_eq!(got.input_json, "{\"i\":3}");
    assert_eq!(got.run_id, "run-x");
    assert!(matches!(
        store.get_policy_sample("smp-0").await,
        Err(StoreError::NotFound { .. })
    ));
    store.delete_policy("p1").await.unwrap();
    assert!(matches!(
        store.get_policy_sample("smp-6").await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(
        store
            .list_policy_samples("p2", &Page::first(0))
            .await
            .unwrap()
            .items
            .len(),
        1
    );
}

pub async fn reviews_and_approval_outcomes(store: Arc<dyn Store>) {
    store.create_stack(stack("s1", &[]), vec![]).await.unwrap();
    store
        .create_run(run("r1", "s1", RunType::Tracked, 1))
        .await
        .unwrap();
    let review = |login: &str, approve: bool, state: &str, at: i64| ReviewRecord {
        run_id: "r1".into(),
        login: login.into(),
        name: login.to_uppercase(),
        teams: vec!["ops".into()],
        approve,
        note: format!("{login} says {approve}"),
        run_state: state.into(),
        remote_ip: "127.0.0.1".into(),
        timestamp: at,
    };
    store
        .add_review(review("alice", false, "QUEUED", 1))
        .await
        .unwrap();
    store
        .add_review(review("alice", true, "UNCONFIRMED", 2))
        .await
        .unwrap();
    store
        .add_review(review("bob", true, "UNCONFIRMED", 3))
        .await
        .unwrap();
    let got = store.list_reviews("r1").await.unwrap();
    assert_eq!(got.len(), 3);
    assert_eq!(got[0], review("alice", false, "QUEUED", 1));
    assert_eq!(got[2].login, "bob");
    assert!(store.list_reviews("other").await.unwrap().is_empty());
    assert!(matches!(
        store
            .add_review(ReviewRecord {
                run_id: "missing".into(),
                ..review("x", true, "QUEUED", 1)
            })
            .await,
        Err(StoreError::NotFound { .. })
    ));

    assert_eq!(store.run_approval("r1", "QUEUED").await.unwrap(), None);
    store
        .set_run_approval("r1", "QUEUED", "UNDECIDED")
        .await
        .unwrap();
    store
        .set_run_approval("r1", "QUEUED", "APPROVED")
        .await
        .unwrap();
    store
        .set_run_approval("r1", "UNCONFIRMED", "REJECTED")
        .await
        .unwrap();
    assert_eq!(
        store.run_approval("r1", "QUEUED").await.unwrap().as_deref(),
        Some("APPROVED")
    );
    assert_eq!(
        store
            .run_approval("r1", "UNCONFIRMED")
            .await
            .unwrap()
            .as_deref(),
        Some("REJECTED")
    );
    assert!(matches!(
        store
            .set_run_approval("missing", "QUEUED", "APPROVED")
            .await,
        Err(StoreError::NotFound { .. })
    ));
}
