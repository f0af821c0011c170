use std::sync::Arc;

use cairn_core::{validate, WorkerPool};
use cairn_proto::v1 as pb;
use cairn_proto::v1::worker_pool_service_server::WorkerPoolService;
use tonic::{Request, Response, Status};

use crate::convert;
use crate::crypto::{new_secret, sha256_hex};
use crate::error::{Result, ServerError};
use crate::services::page;
use crate::state::AppState;

pub struct WorkerPoolSvc {
    pub state: Arc<AppState>,
}

/// Creates a pool and returns it with its token (shown once; stored hashed).
pub async fn create_pool(
    state: &AppState,
    id: &str,
    name: &str,
    labels: Vec<String>,
) -> Result<(WorkerPool, String)> {
    validate::slug("id", id)?;
    validate::max_len("name", name, 256)?;
    for (i, l) in labels.iter().enumerate() {
        validate::non_empty(&format!("labels[{i}]"), l, 256)?;
    }
    if labels.len() > 100 {
        return Err(ServerError::invalid("labels", "at most 100 labels"));
    }
    let token = new_secret("cairnpool");
    let pool = state
        .store
        .create_worker_pool(WorkerPool {
            id: id.to_string(),
            name: if name.is_empty() { id } else { name }.to_string(),
            labels,
            token_hash: sha256_hex(token.as_bytes()),
            created_at: cairn_core::now_nanos(),
        })
        .await?;
    Ok((pool, token))
}

#[tonic::async_trait]
impl WorkerPoolService for WorkerPoolSvc {
    async fn create_worker_pool(
        &self,
        req: Request<pb::CreateWorkerPoolRequest>,
    ) -> Result<Response<pb::CreateWorkerPoolResponse>, Status> {
        let r = req.into_inner();
        let (pool, token) = create_pool(&self.state, &r.id, &r.name, r.labels).await?;
        tracing::info!(pool.id = %pool.id, "worker pool created");
        Ok(Response::new(pb::CreateWorkerPoolResponse {
            pool: Some(convert::worker_pool(&pool)),
            token,
        }))
    }

    async fn list_worker_pools(
        &self,
        req: Request<pb::ListWorkerPoolsRequest>,
    ) -> Result<Response<pb::ListWorkerPoolsResponse>, Status> {
        let page = page(req.into_inner().page)?;
        let mut pools = self
            .state
            .store
            .list_worker_pools()
            .await
            .map_err(ServerError::from)?;
        pools.sort_by(|a, b| a.id.cmp(&b.id));
        // Pools are few: page in memory, the token being the last id of the previous page.
        if let Some(after) = &page.token {
            pools.retain(|p| p.id.as_str() > after.as_str());
        }
        let limit = page.limit() as usize;
        let next = (pools.len() > limit).then(|| pools[limit - 1].id.clone());
        pools.truncate(limit);
        Ok(Response::new(pb::ListWorkerPoolsResponse {
            pools: pools.iter().map(convert::worker_pool).collect(),
            next_page_token: next.unwrap_or_default(),
        }))
    }

    async fn list_workers(
        &self,
        req: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::ListWorkersResponse>, Status> {
        let pool_id = req.into_inner().pool_id;
        validate::slug("pool_id", &pool_id).map_err(ServerError::from)?;
        self.state
            .store
            .get_worker_pool(&pool_id)
            .await
            .map_err(ServerError::from)?;
        let workers = self
            .state
            .store
            .list_workers(&pool_id)
            .await
            .map_err(ServerError::from)?;
        let workers = workers
            .into_iter()
            .map(|w| {
                // The registry is the truth about connections; the store may still say
                // "connected" for an agent of a server that crashed.
                let live = self.state.agents.live(&w.id);
                pb::Worker {
                    connected: live.is_some(),
                    run_ids: live.map(|l| l.run_ids).unwrap_or_default(),
                    id: w.id,
                    pool_id: w.pool_id,
                    name: w.name,
                    labels: w.labels,
                    last_heartbeat_at: w.last_heartbeat_at,
                    max_jobs: w.max_jobs,
                }
            })
            .collect();
        Ok(Response::new(pb::ListWorkersResponse { workers }))
    }
}
