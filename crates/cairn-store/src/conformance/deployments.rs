//! Conformance cases for deployments, their locks and configuration versions.

use std::collections::BTreeMap;
use std::sync::Arc;

use cairn_core::{
    ConfigSource, ConfigurationVersion, Deployment, DeploymentSnapshot, InputValue, UpstreamRef,
};

use crate::{Store, StoreError};

use super::stack;

fn deployment(stack_id: &str, name: &str) -> Deployment {
    let mut d = Deployment::new(stack_id, name, 1_000);
    d.inputs.insert(
        "region".into(),
        InputValue::Literal(serde_json::json!("eu")),
    );
    d.inputs.insert(
        "vpc".into(),
        InputValue::Upstream(UpstreamRef {
            stack: "net".into(),
            deployment: "prod".into(),
            output: "vpc_id".into(),
        }),
    );
    d
}

fn version(stack_id: &str, id: &str, names: &[&str]) -> ConfigurationVersion {
    ConfigurationVersion {
        id: id.into(),
        stack_id: stack_id.into(),
        seq: 0,
        commit_sha: "a".repeat(40),
        content_digest: "b".repeat(40),
        deployments: names
            .iter()
            .map(|n| DeploymentSnapshot {
                name: n.to_string(),
                inputs: BTreeMap::new(),
                destroy: false,
                auto_approve: *n == "dev",
            })
            .collect(),
        source: ConfigSource::Vcs,
        created_at: 2_000,
    }
}

pub async fn deployments_crud_and_lock(store: Arc<dyn Store>) {
    store.create_stack(stack("s1", &[]), vec![]).await.unwrap();
    assert!(store.list_deployments("s1").await.unwrap().is_empty());
    let created = store
        .create_deployment(deployment("s1", "prod"))
        .await
        .unwrap();
    assert_eq!(created, deployment("s1", "prod"));
    store
        .create_deployment(deployment("s1", "dev"))
        .await
        .unwrap();
    assert!(matches!(
        store.create_deployment(deployment("s1", "dev")).await,
        Err(StoreError::AlreadyExists { .. })
    ));
    assert!(matches!(
        store.create_deployment(deployment("nope", "dev")).await,
        Err(StoreError::NotFound { kind: "stack", .. })
    ));
    let names: Vec<_> = store
        .list_deployments("s1")
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert_eq!(names, ["dev", "prod"]);
    let mut d = store.get_deployment("s1", "prod").await.unwrap();
    d.destroy = true;
    d.last_config_version = 3;
    store.update_deployment(d.clone()).await.unwrap();
    assert_eq!(store.get_deployment("s1", "prod").await.unwrap(), d);
    assert!(matches!(
        store.get_deployment("s1", "qa").await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.update_deployment(deployment("s1", "qa")).await,
        Err(StoreError::NotFound { .. })
    ));

    // The lock: compare-and-set, re-entrant for its holder, released only by it.
    assert_eq!(
        store
            .acquire_deployment_lock("s1", "prod", "r1")
            .await
            .unwrap(),
        "r1"
    );
    assert_eq!(
        store
            .acquire_deployment_lock("s1", "prod", "r1")
            .await
            .unwrap(),
        "r1"
    );
    assert_eq!(
        store
            .acquire_deployment_lock("s1", "prod", "r2")
            .await
            .unwrap(),
        "r1"
    );
    assert_eq!(
        store
            .acquire_deployment_lock("s1", "dev", "r2")
            .await
            .unwrap(),
        "r2"
    );
    assert_eq!(
        store
            .get_deployment("s1", "prod")
            .await
            .unwrap()
            .lock_holder,
        "r1"
    );
    // Updating the document keeps the lock.
    store.update_deployment(d.clone()).await.unwrap();
    assert_eq!(
        store
            .get_deployment("s1", "prod")
            .await
            .unwrap()
            .lock_holder,
        "r1"
    );
    assert!(!store
        .release_deployment_lock("s1", "prod", "r2")
        .await
        .unwrap());
    assert!(store
        .release_deployment_lock("s1", "prod", "r1")
        .await
        .unwrap());
    assert!(!store
        .release_deployment_lock("s1", "prod", "r1")
        .await
        .unwrap());
    assert_eq!(
        store
            .get_deployment("s1", "prod")
            .await
            .unwrap()
            .lock_holder,
        ""
    );
    assert_eq!(
        store
            .acquire_deployment_lock("s1", "prod", "r2")
            .await
            .unwrap(),
        "r2"
    );
    assert!(store
        .acquire_deployment_lock("s1", "qa", "r2")
        .await
        .is_err());

    // Concurrent takers: exactly one wins.
    store
        .create_deployment(deployment("s1", "race"))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let me = format!("run{i}");
            store
                .acquire_deployment_lock("s1", "race", &me)
                .await
                .unwrap()
                == me
        }));
    }
    let mut winners = 0;
    for t in tasks {
        winners += usize::from(t.await.unwrap());
    }
    assert_eq!(winners, 1);

    // Deleting the stack deletes its deployments.
    store.delete_stack("s1").await.unwrap();
    store.create_stack(stack("s1", &[]), vec![]).await.unwrap();
    assert!(store.list_deployments("s1").await.unwrap().is_empty());
}

pub async fn configuration_versions_are_numbered_per_stack(store: Arc<dyn Store>) {
    store.create_stack(stack("s1", &[]), vec![]).await.unwrap();
    store.create_stack(stack("s2", &[]), vec![]).await.unwrap();
    let v1 = store
        .add_configuration_version(version("s1", "cv1", &["dev", "prod"]))
        .await
        .unwrap();
    assert_eq!(v1.seq, 1);
    let other = store
        .add_configuration_version(version("s2", "cv2", &["default"]))
        .await
        .unwrap();
    assert_eq!(other.seq, 1);
    let v2 = store
        .add_configuration_version(version("s1", "cv3", &["prod"]))
        .await
        .unwrap();
    assert_eq!(v2.seq, 2);
    assert_eq!(store.get_configuration_version("s1", 1).await.unwrap(), v1);
    assert_eq!(store.get_configuration_version("s1", 2).await.unwrap(), v2);
    assert!(matches!(
        store.get_configuration_version("s1", 3).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store
            .add_configuration_version(version("s1", "cv1", &[]))
            .await,
        Err(StoreError::AlreadyExists { .. })
    ));
    assert!(matches!(
        store
            .add_configuration_version(version("nope", "cv9", &[]))
            .await,
        Err(StoreError::NotFound { kind: "stack", .. })
    ));
    let seqs = |l: Vec<ConfigurationVersion>| l.into_iter().map(|v| v.seq).collect::<Vec<_>>();
    assert_eq!(
        seqs(
            store
                .list_configuration_versions("s1", 0, 10)
                .await
                .unwrap()
        ),
        [2, 1]
    );
    assert_eq!(
        seqs(store.list_configuration_versions("s1", 0, 1).await.unwrap()),
        [2]
    );
    assert_eq!(
        seqs(
            store
                .list_configuration_versions("s1", 2, 10)
                .await
                .unwrap()
        ),
        [1]
    );

    // Concurrent appends get distinct, gap-free numbers.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .add_configuration_version(version("s1", &format!("c{i}"), &["prod"]))
                .await
                .unwrap()
                .seq
        }));
    }
    let mut got = Vec::new();
    for t in tasks {
        got.push(t.await.unwrap());
    }
    got.sort();
    assert_eq!(got, (3..=10).collect::<Vec<i64>>());
}
