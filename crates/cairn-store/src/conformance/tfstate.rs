//! Conformance cases for Terraform state versions and state locks.

use std::sync::Arc;

use crate::{LockAttempt, Page, StateLock, StateVersion, Store, StoreError, UnlockOutcome};

use super::stack;

fn version(stack_id: &str, deployment: &str, serial: i64, lineage: &str) -> StateVersion {
    StateVersion {
        stack_id: stack_id.into(),
        deployment: deployment.into(),
        serial,
        lineage: lineage.into(),
        // Not valid UTF-8 on purpose: the body is stored as bytes, untouched.
        body: [
            b"{\"serial\":".as_slice(),
            serial.to_string().as_bytes(),
            &[0xff, b'}'],
        ]
        .concat(),
        outputs_json: format!("{{\"n\":{serial}}}"),
        created_at: 1_000 + serial,
        created_by_run: format!("run-{serial}"),
        note: if serial % 2 == 0 {
            format!("restored by admin ({serial})")
        } else {
            String::new()
        },
    }
}

fn lock(stack_id: &str, deployment: &str, id: &str, run: &str) -> StateLock {
    StateLock {
        stack_id: stack_id.into(),
        deployment: deployment.into(),
        id: id.into(),
        holder_run_id: run.into(),
        holder_worker_id: format!("worker-of-{run}"),
        info_json: format!("{{\"ID\":\"{id}\",\"Operation\":\"OperationTypeApply\"}}"),
        created_at: 42,
    }
}

fn is_conflict(r: crate::Result<StateVersion>, current: i64) -> bool {
    matches!(r, Err(StoreError::Conflict { expected, .. }) if expected == current)
}

pub async fn state_versions_append_only_and_refuse_stale_writes(store: Arc<dyn Store>) {
    store.create_stack(stack("s1", &[]), vec![]).await.unwrap();
    assert_eq!(
        store.current_state_version("s1", "default").await.unwrap(),
        None
    );
    let v1 = version("s1", "default", 1, "lin-a");
    assert_eq!(store.add_state_version(v1.clone()).await.unwrap(), v1);
    assert_eq!(
        store.current_state_version("s1", "default").await.unwrap(),
        Some(v1.clone())
    );

    // Same serial, lower serial, other lineage: refused, the current version stays.
    assert!(is_conflict(
        store
            .add_state_version(version("s1", "default", 1, "lin-a"))
            .await,
        1
    ));
    assert!(is_conflict(
        store
            .add_state_version(version("s1", "default", 0, "lin-a"))
            .await,
        1
    ));
    assert!(is_conflict(
        store
            .add_state_version(version("s1", "default", 5, "lin-b"))
            .await,
        1
    ));
    assert_eq!(
        store.current_state_version("s1", "default").await.unwrap(),
        Some(v1.clone())
    );

    // Serials may jump; the highest is current.
    let v3 = version("s1", "default", 3, "lin-a");
    store.add_state_version(v3.clone()).await.unwrap();
    let v4 = version("s1", "default", 4, "lin-a");
    store.add_state_version(v4.clone()).await.unwrap();
    assert_eq!(
        store.current_state_version("s1", "default").await.unwrap(),
        Some(v4.clone())
    );
    assert!(is_conflict(
        store
            .add_state_version(version("s1", "default", 2, "lin-a"))
            .await,
        4
    ));
    assert_eq!(
        store.get_state_version("s1", "default", 3).await.unwrap(),
        v3
    );
    assert!(matches!(
        store.get_state_version("s1", "default", 2).await,
        Err(StoreError::NotFound { .. })
    ));

    // Newest first, in pages.
    let first = store
        .list_state_versions("s1", "default", &Page::first(2))
        .await
        .unwrap();
    assert_eq!(first.items, vec![v4.clone(), v3.clone()]);
    let token = first.next.expect("a second page");
    let second = store
        .list_state_versions(
            "s1",
            "default",
            &Page {
                size: 2,
                token: Some(token),
            },
        )
        .await
        .unwrap();
    assert_eq!(second.items, vec![v1.clone()]);
    assert_eq!(second.next, None);

    // Deployments are independent; another lineage may start there.
    let other = version("s1", "staging", 1, "lin-z");
    store.add_state_version(other.clone()).await.unwrap();
    assert_eq!(
        store.current_state_version("s1", "staging").await.unwrap(),
        Some(other)
    );
    assert_eq!(
        store
            .current_state_version("s1", "default")
            .await
            .unwrap()
            .map(|v| v.serial),
        Some(4)
    );

    assert!(matches!(
        store
            .add_state_version(version("nope", "default", 1, "lin-a"))
            .await,
        Err(StoreError::NotFound { kind: "stack", .. })
    ));

    // State goes with its stack.
    store.delete_stack("s1").await.unwrap();
    store.create_stack(stack("s1", &[]), vec![]).await.unwrap();
    assert_eq!(
        store.current_state_version("s1", "default").await.unwrap(),
        None
    );
}

pub async fn state_locks_acquire_release_and_force_release(store: Arc<dyn Store>) {
    store.create_stack(stack("s1", &[]), vec![]).await.unwrap();
    assert_eq!(store.get_state_lock("s1", "default").await.unwrap(), None);

    let a = lock("s1", "default", "lock-a", "run-1");
    assert_eq!(
        store.acquire_state_lock(a.clone()).await.unwrap(),
        LockAttempt::Acquired(a.clone())
    );
    // A retried request with the same id by the same run keeps the lock.
    assert_eq!(
        store.acquire_state_lock(a.clone()).await.unwrap(),
        LockAttempt::Acquired(a.clone())
    );
    // Anyone else finds the holder.
    let b = lock("s1", "default", "lock-b", "run-2");
    assert_eq!(
        store.acquire_state_lock(b.clone()).await.unwrap(),
        LockAttempt::Held(a.clone())
    );
    assert_eq!(
        store
            .acquire_state_lock(lock("s1", "default", "lock-a", "run-2"))
            .await
            .unwrap(),
        LockAttempt::Held(a.clone())
    );
    assert_eq!(
        store.get_state_lock("s1", "default").await.unwrap(),
        Some(a.clone())
    );

    // Release needs the matching id.
    assert_eq!(
        store
            .release_state_lock("s1", "default", "lock-b")
            .await
            .unwrap(),
        UnlockOutcome::HeldByOther(a.clone())
    );
    assert_eq!(
        store.get_state_lock("s1", "default").await.unwrap(),
        Some(a.clone())
    );
    assert_eq!(
        store
            .release_state_lock("s1", "default", "lock-a")
            .await
            .unwrap(),
        UnlockOutcome::Released(a.clone())
    );
    assert_eq!(
        store
            .release_state_lock("s1", "default", "lock-a")
            .await
            .unwrap(),
        UnlockOutcome::NotLocked
    );

    // Locks are per deployment; force-release frees exactly the run's locks.
    store.acquire_state_lock(b.clone()).await.unwrap();
    let c = lock("s1", "staging", "lock-c", "run-2");
    store.acquire_state_lock(c.clone()).await.unwrap();
    store.create_stack(stack("s2", &[]), vec![]).await.unwrap();
    let d = lock("s2", "default", "lock-d", "run-3");
    store.acquire_state_lock(d.clone()).await.unwrap();
    assert!(store
        .force_release_state_locks("run-1")
        .await
        .unwrap()
        .is_empty());
    let mut freed = store.force_release_state_locks("run-2").await.unwrap();
    freed.sort_by(|x, y| x.deployment.cmp(&y.deployment));
    assert_eq!(freed, vec![b.clone(), c]);
    assert_eq!(store.get_state_lock("s1", "default").await.unwrap(), None);
    assert_eq!(store.get_state_lock("s1", "staging").await.unwrap(), None);
    assert_eq!(
        store.get_state_lock("s2", "default").await.unwrap(),
        Some(d)
    );
    assert_eq!(
        store.acquire_state_lock(a.clone()).await.unwrap(),
        LockAttempt::Acquired(a)
    );

    assert!(matches!(
        store
            .acquire_state_lock(lock("nope", "default", "x", "run-9"))
            .await,
        Err(StoreError::NotFound { kind: "stack", .. })
    ));
}

/// Racing writers of one deployment: of 16 first versions with different lineages (and serials)
/// exactly one is stored, and of 16 lock requests exactly one wins.
pub async fn concurrent_state_writers_have_one_winner(store: Arc<dyn Store>) {
    store.create_stack(stack("s1", &[]), vec![]).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..16 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .add_state_version(version("s1", "default", 1 + i % 3, &format!("lin-{i}")))
                .await
        }));
    }
    let mut stored = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(v) => stored.push(v),
            Err(StoreError::Conflict { .. }) | Err(StoreError::AlreadyExists { .. }) => {}
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    // Every writer brought its own lineage, so only the first one stored can be accepted.
    assert_eq!(stored.len(), 1);
    let all = store
        .list_state_versions("s1", "default", &Page::first(100))
        .await
        .unwrap()
        .items;
    assert_eq!(all, stored);

    let mut tasks = Vec::new();
    for i in 0..16 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .acquire_state_lock(lock("s1", "default", &format!("l-{i}"), &format!("r-{i}")))
                .await
                .unwrap()
        }));
    }
    let mut winners = Vec::new();
    let mut holders = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            LockAttempt::Acquired(l) => winners.push(l),
            LockAttempt::Held(l) => holders.push(l),
        }
    }
    assert_eq!(winners.len(), 1);
    assert_eq!(holders.len(), 15);
    assert!(holders.iter().all(|h| h == &winners[0]));
}
