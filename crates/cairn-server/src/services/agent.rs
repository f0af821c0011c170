use std::pin::Pin;
use std::sync::Arc;

use cairn_core::WorkerPool;
use cairn_proto::agent::v1 as apb;
use cairn_proto::agent::v1::agent_service_server::AgentService;
use futures::Stream;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::crypto::sha256_hex;
use crate::error::{Result, ServerError};
use crate::state::AppState;

pub struct AgentSvc {
    pub state: Arc<AppState>,
}

const CHUNK: usize = 64 * 1024;

/// The pool a token belongs to; unknown tokens are UNAUTHENTICATED.
pub async fn pool_for_token(state: &AppState, token: &str) -> Result<WorkerPool> {
    if token.is_empty() {
        return Err(ServerError::Unauthenticated("pool token required".into()));
    }
    match state
        .store
        .find_worker_pool_by_token_hash(&sha256_hex(token.as_bytes()))
        .await
    {
        Ok(p) => Ok(p),
        Err(cairn_store::StoreError::NotFound { .. }) => {
            Err(ServerError::Unauthenticated("invalid pool token".into()))
        }
        Err(e) => Err(e.into()),
    }
}

/// The lease named in an artifact request, after checking that the token's pool holds it.
async fn lease_of_pool(state: &AppState, token: &str, lease_id: &str) -> Result<cairn_core::Lease> {
    let pool = pool_for_token(state, token).await?;
    let denied = || ServerError::PermissionDenied("lease not held by this pool".into());
    if lease_id.is_empty() {
        return Err(ServerError::invalid("lease_id", "required"));
    }
    let lease = match state.store.get_lease(lease_id).await {
        Ok(l) => l,
        Err(cairn_store::StoreError::NotFound { .. }) => return Err(denied()),
        Err(e) => return Err(e.into()),
    };
    let workers = state.store.list_workers(&pool.id).await?;
    if !workers.iter().any(|w| w.id == lease.worker_id) {
        return Err(denied());
    }
    Ok(lease)
}

impl AgentSvc {
    async fn upload(
        &self,
        mut stream: Streaming<apb::UploadWorkspaceRequest>,
    ) -> Result<apb::UploadWorkspaceResponse> {
        let first = stream
            .message()
            .await
            .map_err(|s| ServerError::invalid("chunk", s.message().to_string()))?
            .ok_or_else(|| ServerError::invalid("lease_id", "empty upload"))?;
        let lease = lease_of_pool(&self.state, &first.pool_token, &first.lease_id).await?;
        if first.run_id != lease.run_id {
            return Err(ServerError::invalid("run_id", "does not match the lease"));
        }
        let mut up = self.state.artifacts.begin().await?;
        let mut chunk = first.chunk;
        loop {
            if let Err(e) = up.write(&chunk).await {
                up.abort().await;
                return Err(e);
            }
            match stream.message().await {
                Ok(Some(m)) => chunk = m.chunk,
                Ok(None) => break,
                Err(s) => {
                    up.abort().await;
                    return Err(ServerError::Unavailable(format!(
                        "upload interrupted: {}",
                        s.message()
                    )));
                }
            }
        }
        let stored = self.state.artifacts.commit(up).await?;
        let artifact_id = stored.artifact_id.clone();
        let previous = self.state.store.get_run(&lease.run_id).await?.artifact_id;
        let res = self
            .state
            .mutate_run(&lease.run_id, |run, now| {
                run.apply_patch(
                    cairn_core::RunPatch {
                        artifact_id: Some(artifact_id.clone()),
                        ..Default::default()
                    },
                    now,
                );
                Ok(())
            })
            .await;
        if let Err(e) = res {
            self.state.artifacts.delete(&artifact_id).await;
            return Err(e);
        }
        if !previous.is_empty() && previous != artifact_id {
            // A replan replaces the workspace of the earlier plan.
            self.state.artifacts.delete(&previous).await;
        }
        tracing::info!(run.id = %lease.run_id, artifact.id = %artifact_id, size = stored.size, "workspace stored");
        Ok(apb::UploadWorkspaceResponse {
            artifact_id,
            sha256: stored.sha256,
            size: i64::try_from(stored.size).unwrap_or(i64::MAX),
        })
    }

    async fn download(
        &self,
        r: apb::DownloadWorkspaceRequest,
    ) -> Result<mpsc::Receiver<Result<apb::DownloadWorkspaceResponse, Status>>> {
        let lease = lease_of_pool(&self.state, &r.pool_token, &r.lease_id).await?;
        let run = self.state.store.get_run(&lease.run_id).await?;
        let source = crate::artifacts::source_artifact_id(&run.id);
        if r.artifact_id.is_empty() || (run.artifact_id != r.artifact_id && source != r.artifact_id)
        {
            return Err(ServerError::PermissionDenied(
                "artifact does not belong to the lease's run".into(),
            ));
        }
        let (mut file, sha) = self.state.artifacts.open_read(&r.artifact_id).await?;
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(async move {
            let mut first = Some(sha);
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = match file.read(&mut buf).await {
                    Ok(n) => n,
                    Err(e) => {
                        let _ = tx
                            .send(Err(ServerError::io("reading workspace archive", e).into()))
                            .await;
                        return;
                    }
                };
                // An empty archive still sends one message, carrying the digest.
                if n == 0 && first.is_none() {
                    return;
                }
                let msg = apb::DownloadWorkspaceResponse {
                    chunk: buf[..n].to_vec(),
                    sha256: first.take().unwrap_or_default(),
                };
                if tx.send(Ok(msg)).await.is_err() || n == 0 {
                    return;
                }
            }
        });
        Ok(rx)
    }
}

type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl AgentService for AgentSvc {
    type SessionStream = Boxed<apb::SessionResponse>;

    async fn session(
        &self,
        req: Request<Streaming<apb::SessionRequest>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let rx = crate::agents::start_session(self.state.clone(), req.into_inner()).await?;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn upload_workspace(
        &self,
        req: Request<Streaming<apb::UploadWorkspaceRequest>>,
    ) -> Result<Response<apb::UploadWorkspaceResponse>, Status> {
        Ok(Response::new(self.upload(req.into_inner()).await?))
    }

    type DownloadWorkspaceStream = Boxed<apb::DownloadWorkspaceResponse>;

    async fn download_workspace(
        &self,
        req: Request<apb::DownloadWorkspaceRequest>,
    ) -> Result<Response<Self::DownloadWorkspaceStream>, Status> {
        let rx = self.download(req.into_inner()).await?;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
