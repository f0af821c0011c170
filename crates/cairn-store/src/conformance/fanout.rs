//! Cases for the many-stack methods a push fan-out uses: `update_stacks`, `runs_for_push`.

use std::sync::Arc;

use cairn_core::{Commit, CoreError, RunState, RunType};

use super::{run, stack};
use crate::{Store, StoreError};

/// `update_stacks` writes every stack or none, and names the stack that refused.
pub async fn update_stacks_is_all_or_nothing(store: Arc<dyn Store>) {
    let mut created = Vec::new();
    for id in ["fa", "fb", "fc"] {
        created.push(store.create_stack(stack(id, &["x"]), vec![]).await.unwrap());
    }
    let head = Commit {
        hash: "abc123".into(),
        branch: "main".into(),
        ..Default::default()
    };
    let changed: Vec<_> = created
        .iter()
        .map(|s| {
            let mut s = s.clone();
            s.tracked_commit = Some(head.clone());
            s.labels.push(format!("l-{}", s.id));
            s
        })
        .collect();
    let stored = store.update_stacks(changed.clone()).await.unwrap();
    assert_eq!(
        stored.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        ["fa", "fb", "fc"],
        "input order"
    );
    for (before, after) in created.iter().zip(&stored) {
        assert_eq!(after.version, before.version + 1);
        let read = store.get_stack(&before.id).await.unwrap();
        assert_eq!(&read, after, "the returned stack is what is stored");
        assert_eq!(read.tracked_commit.as_ref(), Some(&head));
        // Labels are also a column (list_stacks filters on it).
        let page = store
            .list_stacks(&[format!("l-{}", before.id)], &crate::Page::first(10))
            .await
            .unwrap();
        assert_eq!(page.items.len(), 1, "label column of {} updated", before.id);
    }

    // One stale version (fb still at the version the first batch replaced): nothing is written.
    let mut stale = stored.clone();
    for s in &mut stale {
        s.description = "second".into();
    }
    stale[1].version -= 1;
    match store.update_stacks(stale.clone()).await {
        Err(StoreError::Conflict { kind, id, expected }) => {
            assert_eq!((kind, id.as_str()), ("stack", "fb"));
            assert_eq!(expected, stored[1].version - 1);
        }
        other => panic!("expected a conflict on fb, got {other:?}"),
    }
    for s in &stored {
        assert_eq!(
            &store.get_stack(&s.id).await.unwrap(),
            s,
            "{} unchanged after the refused batch",
            s.id
        );
    }

    // A stack that does not exist: NotFound naming it, nothing written.
    let mut missing = stored.clone();
    missing.push(stack("fz", &[]));
    missing[3].version = 1;
    match store.update_stacks(missing).await {
        Err(StoreError::NotFound { kind, id }) => assert_eq!((kind, id.as_str()), ("stack", "fz")),
        other => panic!("expected fz not found, got {other:?}"),
    }
    assert_eq!(store.get_stack("fa").await.unwrap(), stored[0]);

    // The same stack twice can never succeed: refused up front, naming the field.
    let twice = vec![stored[0].clone(), stored[0].clone()];
    match store.update_stacks(twice).await {
        Err(StoreError::Core(CoreError::InvalidArgument { field, reason })) => {
            assert_eq!(field, "stacks");
            assert!(reason.contains("\"fa\""), "{reason}");
        }
        other => panic!("expected invalid stacks, got {other:?}"),
    }
    assert!(store.update_stacks(Vec::new()).await.unwrap().is_empty());
}

/// `unfinished_runs_of`: the unfinished runs of the given stacks, by stack then oldest first;
/// nothing of other stacks, nothing terminal.
pub async fn unfinished_runs_of_many_stacks(store: Arc<dyn Store>) {
    for id in ["pa", "pb", "pc"] {
        store.create_stack(stack(id, &[]), vec![]).await.unwrap();
    }
    let a_late = store
        .create_run(run("r-a-late", "pa", RunType::Tracked, 30))
        .await
        .unwrap();
    let a_early = store
        .create_run(run("r-a-early", "pa", RunType::Proposed, 20))
        .await
        .unwrap();
    let mut done = run("r-a-done", "pa", RunType::Tracked, 10);
    done.state = RunState::Finished;
    store.create_run(done).await.unwrap();
    let b = store
        .create_run(run("r-b", "pb", RunType::Tracked, 5))
        .await
        .unwrap();
    store
        .create_run(run("r-c", "pc", RunType::Tracked, 1))
        .await
        .unwrap();

    let ids = vec!["pb".to_string(), "pa".to_string(), "nosuch".to_string()];
    let got = store.unfinished_runs_of(&ids).await.unwrap();
    assert_eq!(got, vec![a_early, a_late, b], "by stack, then oldest first");
    for id in ["pa", "pb"] {
        let one = store.unfinished_runs(id).await.unwrap();
        let many: Vec<_> = got.iter().filter(|r| r.stack_id == id).cloned().collect();
        assert_eq!(one, many, "same runs as unfinished_runs({id})");
    }
    assert!(store.unfinished_runs_of(&[]).await.unwrap().is_empty());
}
