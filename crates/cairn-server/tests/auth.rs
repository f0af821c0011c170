//! The auth matrix: every RPC of the role table × {no key, reader, writer, admin}, called over
//! real gRPC with an empty request (valid protobuf for every message type).

mod common;

use cairn_core::Role;
use cairn_proto::v1 as pb;
use cairn_server::auth::{Access, METHODS};
use common::*;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::{Code, Status};

#[derive(Clone, PartialEq, prost::Message)]
struct Empty {}

/// Calls `path` with an empty message and the given key; returns the status code.
async fn call(s: &TestServer, path: &str, key: Option<&str>) -> Code {
    let mut grpc = tonic::client::Grpc::new(s.channel.clone());
    grpc.ready().await.unwrap();
    let mut req = tonic::Request::new(Empty {});
    if let Some(k) = key {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {k}").parse().unwrap());
    }
    let codec = tonic_prost::ProstCodec::<Empty, Empty>::default();
    let p = PathAndQuery::try_from(path).unwrap();
    let streaming = path.ends_with("/WatchRun");
    let res: Result<(), Status> = if streaming {
        match grpc.server_streaming(req, p, codec).await {
            Ok(resp) => resp.into_inner().message().await.map(|_| ()),
            Err(s) => Err(s),
        }
    } else {
        grpc.unary(req, p, codec).await.map(|_| ())
    };
    match res {
        Ok(()) => Code::Ok,
        Err(s) => s.code(),
    }
}

#[tokio::test]
async fn every_rpc_by_every_role() {
    let s = TestServer::start().await;
    let reader = s.key("reader", pb::Role::Reader).await;
    let writer = s.key("writer", pb::Role::Writer).await;
    let keys = [
        (Role::Reader, reader.as_str()),
        (Role::Writer, writer.as_str()),
        (Role::Admin, s.admin.as_str()),
    ];
    let mut checked = 0;
    for (path, access) in METHODS {
        let Access::Role(required) = access else {
            continue;
        };
        assert_eq!(
            call(&s, path, None).await,
            Code::Unauthenticated,
            "{path} without a key"
        );
        assert_eq!(
            call(&s, path, Some("cairn_not-a-key")).await,
            Code::Unauthenticated,
            "{path} with a wrong key"
        );
        for (role, key) in keys {
            let got = call(&s, path, Some(key)).await;
            if role < *required {
                assert_eq!(got, Code::PermissionDenied, "{path} as {role:?}");
            } else {
                assert!(
                    got != Code::PermissionDenied && got != Code::Unauthenticated,
                    "{path} as {role:?}: {got:?}"
                );
            }
            checked += 1;
        }
    }
    // 46 + 9 DeploymentService + 7 StateService.
    assert_eq!(checked, 3 * 62, "every API RPC was walked");
    // Methods outside the table are refused whatever the key.
    assert_eq!(
        call(&s, "/cairn.v1.StackService/DropAllTables", Some(&s.admin)).await,
        Code::PermissionDenied
    );
    // Health is public.
    assert_eq!(
        call(&s, "/grpc.health.v1.Health/Check", None).await,
        Code::Ok
    );
}

#[tokio::test]
async fn agent_methods_need_a_valid_pool_token() {
    let s = TestServer::start().await;
    let err = TestAgent::try_connect(&s, "cairnpool_wrong", 1)
        .await
        .err()
        .expect("a wrong pool token is refused");
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = TestAgent::try_connect(&s, "", 1).await.err().unwrap();
    assert_eq!(err.code(), Code::Unauthenticated);
    // Artifact transfer with a wrong token.
    let mut client = s.agent_client();
    let r = client
        .download_workspace(cairn_proto::agent::v1::DownloadWorkspaceRequest {
            lease_id: "lease-x".into(),
            artifact_id: "art-x".into(),
            pool_token: "cairnpool_wrong".into(),
        })
        .await;
    assert_eq!(code(r), Code::Unauthenticated);
    let r = client
        .upload_workspace(futures::stream::iter(vec![
            cairn_proto::agent::v1::UploadWorkspaceRequest {
                lease_id: "lease-x".into(),
                run_id: "r".into(),
                chunk: b"data".to_vec(),
                pool_token: "cairnpool_wrong".into(),
            },
        ]))
        .await;
    assert_eq!(code(r), Code::Unauthenticated);
    // The right token but a lease the pool does not hold.
    let r = client
        .download_workspace(cairn_proto::agent::v1::DownloadWorkspaceRequest {
            lease_id: "lease-x".into(),
            artifact_id: "art-x".into(),
            pool_token: s.pool_token.clone(),
        })
        .await;
    assert_eq!(code(r), Code::PermissionDenied);
    // An API key is not a pool token.
    let err = TestAgent::try_connect(&s, &s.admin.clone(), 1)
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), Code::Unauthenticated);
}
