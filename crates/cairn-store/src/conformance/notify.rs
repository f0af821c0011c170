//! Conformance cases for webhooks, their delivery log and pull-request comment ids.

use std::sync::Arc;

use crate::{DeliveryRecord, Store, StoreError, WebhookRecord};

use super::stack;

fn webhook(id: &str, stack_id: &str) -> WebhookRecord {
    WebhookRecord {
        id: id.into(),
        url: format!("http://127.0.0.1:9/{id}"),
        secret: vec![0, 1, 0xff],
        stack_id: stack_id.into(),
        format: "JSON".into(),
        created_at: 7,
    }
}

fn delivery(id: &str, webhook_id: &str, created_at: i64) -> DeliveryRecord {
    DeliveryRecord {
        id: id.into(),
        webhook_id: webhook_id.into(),
        run_id: "run-1".into(),
        run_state: "FINISHED".into(),
        status: "PENDING".into(),
        status_code: 0,
        attempts: 1,
        error: "connection refused".into(),
        created_at,
        updated_at: created_at,
    }
}

pub async fn webhooks_deliveries_and_pr_comments(store: Arc<dyn Store>) {
    let b = store.create_webhook(webhook("b", "")).await.unwrap();
    let a = store.create_webhook(webhook("a", "s1")).await.unwrap();
    assert_eq!(store.get_webhook("a").await.unwrap(), a);
    assert!(matches!(
        store.create_webhook(webhook("a", "")).await,
        Err(StoreError::AlreadyExists { .. })
    ));
    assert_eq!(store.list_webhooks().await.unwrap(), vec![a.clone(), b]);

    // A delivery is rewritten in place after each attempt.
    store
        .put_webhook_delivery(delivery("d1", "a", 10), 2)
        .await
        .unwrap();
    let mut d1 = delivery("d1", "a", 10);
    d1.status = "SUCCEEDED".into();
    d1.status_code = 200;
    d1.attempts = 3;
    d1.error.clear();
    d1.updated_at = 30;
    store.put_webhook_delivery(d1.clone(), 2).await.unwrap();
    assert_eq!(
        store.list_webhook_deliveries("a", 10).await.unwrap(),
        vec![d1.clone()]
    );

    // Only the newest `keep` are kept, listed newest first.
    store
        .put_webhook_delivery(delivery("d2", "a", 20), 2)
        .await
        .unwrap();
    store
        .put_webhook_delivery(delivery("d3", "a", 40), 2)
        .await
        .unwrap();
    let ids: Vec<String> = store
        .list_webhook_deliveries("a", 10)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(ids, ["d3", "d2"]);
    assert_eq!(
        store.list_webhook_deliveries("a", 1).await.unwrap().len(),
        1
    );
    assert!(matches!(
        store
            .put_webhook_delivery(delivery("x", "nope", 1), 2)
            .await,
        Err(StoreError::NotFound { .. })
    ));

    store.delete_webhook("a").await.unwrap();
    assert!(store
        .list_webhook_deliveries("a", 10)
        .await
        .unwrap()
        .is_empty());
    assert!(matches!(
        store.delete_webhook("a").await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.get_webhook("a").await,
        Err(StoreError::NotFound { .. })
    ));

    store
        .create_stack(stack("s1", &[]), Vec::new())
        .await
        .unwrap();
    assert_eq!(store.pr_comment_id("s1", 5).await.unwrap(), None);
    store.set_pr_comment_id("s1", 5, 900).await.unwrap();
    store.set_pr_comment_id("s1", 5, 901).await.unwrap();
    assert_eq!(store.pr_comment_id("s1", 5).await.unwrap(), Some(901));
    assert_eq!(store.pr_comment_id("s1", 6).await.unwrap(), None);
    store.delete_stack("s1").await.unwrap();
    assert_eq!(store.pr_comment_id("s1", 5).await.unwrap(), None);
}
