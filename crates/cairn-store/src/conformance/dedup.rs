//! Conformance cases for [`Store::create_runs_dedup`]: one run per dedup key, whoever races.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use cairn_core::{Run, RunType};

use super::{run, stack};
use crate::{create_run_dedup, Dedup, Store, StoreError};

/// A run of `stack_id` at `sha`, with a unique id.
fn vcs_run(id: &str, stack_id: &str, sha: &str, run_type: RunType) -> Run {
    let mut r = run(id, stack_id, run_type, 5);
    r.commit.hash = sha.into();
    r.triggered_by = "git:push".into();
    r
}

pub async fn run_dedup_keys_are_unique(store: Arc<dyn Store>) {
    store.create_stack(stack("s1", &[]), vec![]).await.unwrap();
    store.create_stack(stack("s2", &[]), vec![]).await.unwrap();

    let first = create_run_dedup(&*store, vcs_run("a", "s1", "abc123", RunType::Tracked))
        .await
        .unwrap();
    assert!(first.created());
    assert_eq!(store.get_run("a").await.unwrap(), *first.run());

    // Same stack, deployment, SHA (another case) and type: the stored run comes back.
    let again = create_run_dedup(&*store, vcs_run("b", "s1", "ABC123", RunType::Tracked))
        .await
        .unwrap();
    assert_eq!(again, Dedup::Existing(first.run().clone()));
    assert!(matches!(
        store.get_run("b").await,
        Err(StoreError::NotFound { .. })
    ));

    // Another type, stack or deployment is another key.
    let mut other_deployment = vcs_run("e", "s1", "abc123", RunType::Tracked);
    other_deployment.deployment = "eu".into();
    let batch = store
        .create_runs_dedup(vec![
            vcs_run("c", "s1", "abc123", RunType::Proposed),
            vcs_run("d", "s2", "abc123", RunType::Tracked),
            other_deployment,
            // Twice in one batch: the second gets the first.
            vcs_run("f", "s2", "abc123", RunType::Tracked),
            vcs_run("g", "s1", "abc123", RunType::Tracked),
        ])
        .await
        .unwrap();
    let got: Vec<(bool, &str)> = batch
        .iter()
        .map(|d| (d.created(), d.run().id.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (true, "c"),
            (true, "d"),
            (true, "e"),
            (false, "d"),
            (false, "a")
        ]
    );

    // Runs created without a key never collide, with each other or with keyed runs.
    store
        .create_run(vcs_run("h", "s1", "abc123", RunType::Tracked))
        .await
        .unwrap();
    store
        .create_run(vcs_run("i", "s1", "abc123", RunType::Tracked))
        .await
        .unwrap();

    // A missing stack is named; the batch it was in wrote nothing.
    match store
        .create_runs_dedup(vec![
            vcs_run("j", "s1", "fff000", RunType::Tracked),
            vcs_run("k", "nope", "fff000", RunType::Tracked),
        ])
        .await
    {
        Err(StoreError::NotFound { kind: "stack", id }) => assert!(id.contains("nope"), "{id}"),
        other => panic!("expected stack not found, got {other:?}"),
    }
    assert!(matches!(
        store.get_run("j").await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(store.create_runs_dedup(vec![]).await.unwrap().is_empty());
}

pub async fn concurrent_dedup_inserts_have_one_winner(store: Arc<dyn Store>) {
    dedup_race(&[store.clone(), store]).await;
}

/// Races batches of keyed inserts over `stores` (handles on one database — several handles
/// stand for several server replicas): 12 tasks per store, each inserting the same 20 keys
/// (every commit of 5 stacks × 2 types, plus one commit per stack shared by every task) in its
/// own order, half of them as one batch and half one run at a time. Exactly one run per key
/// must exist afterwards and every task must have been told about that run.
pub async fn dedup_race(stores: &[Arc<dyn Store>]) {
    let stacks = ["r1", "r2", "r3", "r4", "r5"];
    for s in stacks {
        stores[0].create_stack(stack(s, &[]), vec![]).await.unwrap();
    }
    let mut keys = Vec::new();
    for s in stacks {
        for sha in ["aaa111", "bbb222"] {
            for t in [RunType::Tracked, RunType::Proposed] {
                keys.push((s, sha, t));
            }
        }
    }
    let tasks_per_store = 12;
    let barrier = Arc::new(tokio::sync::Barrier::new(stores.len() * tasks_per_store));
    let mut tasks = Vec::new();
    for (n, store) in stores.iter().enumerate() {
        for t in 0..tasks_per_store {
            let task = n * tasks_per_store + t;
            let mut mine: Vec<Run> = keys
                .iter()
                .enumerate()
                .map(|(k, (s, sha, ty))| vcs_run(&format!("t{task}-k{k}"), s, sha, *ty))
                .collect();
            // Every task its own order, so batches overlap in every interleaving.
            mine.rotate_left(task % keys.len());
            if task % 3 == 0 {
                mine.reverse();
            }
            let store = store.clone();
            let barrier = barrier.clone();
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                if task % 2 == 0 {
                    store.create_runs_dedup(mine).await
                } else {
                    let mut out = Vec::new();
                    for r in mine {
                        out.push(create_run_dedup(&*store, r).await?);
                    }
                    Ok(out)
                }
            }));
        }
    }
    let mut winner_of: HashMap<String, String> = HashMap::new();
    let mut created = 0;
    for t in tasks {
        for d in t.await.unwrap().unwrap() {
            let key = d.run().dedup_key();
            let id = d.run().id.clone();
            if d.created() {
                created += 1;
            }
            match winner_of.get(&key) {
                Some(w) => assert_eq!(*w, id, "two runs returned for key {key}"),
                None => {
                    winner_of.insert(key, id);
                }
            }
        }
    }
    assert_eq!(winner_of.len(), keys.len());
    assert_eq!(created, keys.len(), "exactly one Created per key");
    let mut stored = HashSet::new();
    for s in stacks {
        let runs = stores[0]
            .list_runs(s, &crate::Page::first(crate::Page::MAX_SIZE))
            .await
            .unwrap()
            .items;
        assert_eq!(runs.len(), 4, "stack {s}: one run per (sha, type)");
        for r in runs {
            assert_eq!(winner_of[&r.dedup_key()], r.id);
            stored.insert(r.id);
        }
    }
    assert_eq!(stored.len(), keys.len());
}
