//! Conformance cases of VCS integrations, deliveries and poller refs.

use std::sync::Arc;

use crate::{GitRefRecord, Store, StoreError, VcsEventRecord, VcsIntegration};

fn integration(id: &str) -> VcsIntegration {
    VcsIntegration {
        id: id.into(),
        provider: "GITHUB".into(),
        api_base_url: "https://api.example.test".into(),
        webhook_secret: vec![1, 2, 3, 0, 255],
        token: Vec::new(),
        poll_interval_seconds: 5,
        created_at: 1_000,
    }
}

fn event(id: &str, integration_id: &str, delivery: &str, at: i64) -> VcsEventRecord {
    VcsEventRecord {
        id: id.into(),
        integration_id: integration_id.into(),
        provider: "github".into(),
        delivery_id: delivery.into(),
        event_type: "push".into(),
        payload: br#"{"ref":"refs/heads/main"}"#.to_vec(),
        received_at: at,
        processed_at: 0,
        result: String::new(),
    }
}

pub async fn vcs_integrations_events_and_refs(store: Arc<dyn Store>) {
    let s = store.as_ref();
    s.create_vcs_integration(integration("gh-b")).await.unwrap();
    s.create_vcs_integration(integration("gh-a")).await.unwrap();
    assert!(matches!(
        s.create_vcs_integration(integration("gh-a")).await,
        Err(StoreError::AlreadyExists { .. })
    ));
    assert_eq!(
        s.get_vcs_integration("gh-a").await.unwrap(),
        integration("gh-a")
    );
    assert!(matches!(
        s.get_vcs_integration("nope").await,
        Err(StoreError::NotFound { .. })
    ));
    let ids: Vec<String> = s
        .list_vcs_integrations()
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(ids, ["gh-a", "gh-b"]);

    // Deliveries: unique per integration, not across integrations.
    s.add_vcs_event(event("e2", "gh-a", "d1", 20))
        .await
        .unwrap();
    s.add_vcs_event(event("e1", "gh-a", "d2", 10))
        .await
        .unwrap();
    s.add_vcs_event(event("e3", "gh-b", "d1", 30))
        .await
        .unwrap();
    match s.add_vcs_event(event("e4", "gh-a", "d1", 40)).await {
        Err(StoreError::AlreadyExists { id, .. }) => assert_eq!(id, "d1"),
        other => panic!("duplicate delivery accepted: {other:?}"),
    }
    assert!(matches!(
        s.add_vcs_event(event("e5", "missing", "d9", 50)).await,
        Err(StoreError::NotFound { .. })
    ));
    let found = s.get_vcs_event_by_delivery("gh-a", "d1").await.unwrap();
    assert_eq!(found, event("e2", "gh-a", "d1", 20));
    let pending: Vec<String> = s
        .unprocessed_vcs_events()
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(pending, ["e1", "e2", "e3"]);
    s.mark_vcs_event_processed("e1", 99, "run r1")
        .await
        .unwrap();
    assert!(matches!(
        s.mark_vcs_event_processed("nope", 99, "").await,
        Err(StoreError::NotFound { .. })
    ));
    let pending: Vec<String> = s
        .unprocessed_vcs_events()
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(pending, ["e2", "e3"]);
    let done = s.get_vcs_event_by_delivery("gh-a", "d2").await.unwrap();
    assert_eq!((done.processed_at, done.result.as_str()), (99, "run r1"));

    // Poller refs: replaced as a whole per repository.
    assert!(s.git_refs("/srv/repo.git").await.unwrap().is_empty());
    let r = |name: &str, sha: &str| GitRefRecord {
        name: name.into(),
        sha: sha.into(),
    };
    s.set_git_refs(
        "/srv/repo.git",
        &[r("refs/heads/main", "a1"), r("refs/heads/dev", "b1")],
    )
    .await
    .unwrap();
    s.set_git_refs("/srv/other.git", &[r("refs/heads/main", "c1")])
        .await
        .unwrap();
    assert_eq!(
        s.git_refs("/srv/repo.git").await.unwrap(),
        [r("refs/heads/dev", "b1"), r("refs/heads/main", "a1")]
    );
    s.set_git_refs("/srv/repo.git", &[r("refs/heads/main", "a2")])
        .await
        .unwrap();
    assert_eq!(
        s.git_refs("/srv/repo.git").await.unwrap(),
        [r("refs/heads/main", "a2")]
    );
    assert_eq!(
        s.git_refs("/srv/other.git").await.unwrap(),
        [r("refs/heads/main", "c1")]
    );
}

pub async fn pull_request_snapshots(store: Arc<dyn Store>) {
    let s = store.as_ref();
    s.create_vcs_integration(integration("gh")).await.unwrap();
    s.create_vcs_integration(integration("gh2")).await.unwrap();
    let pr = |integration: &str, repo: &str, number: i64, json: &str, at: i64| {
        crate::PullRequestRecord {
            integration_id: integration.into(),
            repository: repo.into(),
            number,
            event_json: json.into(),
            updated_at: at,
        }
    };
    assert_eq!(s.get_pull_request("gh", "o/r", 1).await.unwrap(), None);
    s.put_pull_request(pr("gh", "o/r", 1, r#"{"v":1}"#, 10))
        .await
        .unwrap();
    s.put_pull_request(pr("gh", "o/r", 2, r#"{"v":"two"}"#, 11))
        .await
        .unwrap();
    s.put_pull_request(pr("gh2", "o/r", 1, r#"{"other":true}"#, 12))
        .await
        .unwrap();
    // A newer event of the same pull request replaces the record.
    s.put_pull_request(pr("gh", "o/r", 1, r#"{"v":3}"#, 13))
        .await
        .unwrap();
    assert_eq!(
        s.get_pull_request("gh", "o/r", 1).await.unwrap(),
        Some(pr("gh", "o/r", 1, r#"{"v":3}"#, 13))
    );
    assert_eq!(
        s.get_pull_request("gh2", "o/r", 1).await.unwrap(),
        Some(pr("gh2", "o/r", 1, r#"{"other":true}"#, 12))
    );
    assert_eq!(s.get_pull_request("gh", "o/other", 1).await.unwrap(), None);
    match s.put_pull_request(pr("missing", "o/r", 1, "{}", 1)).await {
        Err(StoreError::NotFound { kind, id }) => {
            assert_eq!((kind, id.as_str()), ("vcs integration", "missing"))
        }
        other => panic!("expected the integration to be named, got {other:?}"),
    }
}
