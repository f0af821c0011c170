use std::sync::Arc;
use std::time::Duration;

use cairn_core::{
    decide_lock, decide_unlock, validate, Commit, LockOutcome, Principal, Role, UnlockOutcome,
};
use cairn_proto::v1 as pb;
use cairn_proto::v1::stack_service_server::StackService;
use tonic::{Request, Response, Status};

use crate::auth::caller;
use crate::convert;
use crate::error::{Result, ServerError};
use crate::services::{commit_sha, page};
use crate::state::AppState;

pub struct StackSvc {
    pub state: Arc<AppState>,
}

/// `git ls-remote` gets this long before SyncStack gives up on a repository.
const LS_REMOTE_TIMEOUT: Duration = Duration::from_secs(60);

impl StackSvc {
    async fn existing(&self, field: &str, id: &str) -> Result<cairn_core::Stack> {
        validate::stack_id(field, id)?;
        Ok(self.state.store.get_stack(id).await?)
    }

    async fn create(&self, r: pb::CreateStackRequest) -> Result<cairn_core::Stack> {
        let input = r
            .stack
            .ok_or_else(|| ServerError::invalid("stack", "required"))?;
        let mut stack = convert::stack_from(input);
        stack.validate()?;
        self.check_pool(&stack).await?;
        let mut names = std::collections::HashSet::new();
        let mut env = Vec::with_capacity(r.env.len());
        for (i, v) in r.env.into_iter().enumerate() {
            let v = convert::env_var_from(v);
            v.validate(&format!("env[{i}]"))?;
            if !names.insert(v.name.clone()) {
                return Err(ServerError::invalid(
                    format!("env[{i}].name"),
                    format!("{} is set twice", v.name),
                ));
            }
            env.push(v);
        }
        if env.len() > 1000 {
            return Err(ServerError::invalid("env", "at most 1000 variables"));
        }
        let now = cairn_core::now_nanos();
        stack.created_at = now;
        stack.updated_at = now;
        stack.version = 1;
        stack.state = "NONE".into();
        Ok(self.state.store.create_stack(stack, env).await?)
    }

    async fn check_pool(&self, stack: &cairn_core::Stack) -> Result<()> {
        if stack.worker_pool_id.is_empty() {
            return Ok(());
        }
        validate::slug("stack.worker_pool.id", &stack.worker_pool_id)?;
        match self
            .state
            .store
            .get_worker_pool(&stack.worker_pool_id)
            .await
        {
            Ok(_) => Ok(()),
            Err(cairn_store::StoreError::NotFound { .. }) => Err(ServerError::invalid(
                "stack.worker_pool.id",
                format!("no worker pool {:?}", stack.worker_pool_id),
            )),
            Err(e) => Err(e.into()),
        }
    }

    async fn update(&self, r: pb::UpdateStackRequest) -> Result<cairn_core::Stack> {
        let input = r
            .stack
            .ok_or_else(|| ServerError::invalid("stack", "required"))?;
        let wanted = convert::stack_from(input);
        let current = self.existing("stack.id", &wanted.id).await?;
        if wanted.version != 0 && wanted.version != current.version {
            return Err(ServerError::Conflict(format!(
                "stack {} is at version {}, not {}",
                current.id, current.version, wanted.version
            )));
        }
        let next = cairn_core::Stack {
            id: current.id.clone(),
            locked_by: current.locked_by.clone(),
            lock_note: current.lock_note.clone(),
            tracked_commit: current.tracked_commit.clone(),
            state: current.state.clone(),
            created_at: current.created_at,
            updated_at: cairn_core::now_nanos(),
            version: current.version,
            ..wanted
        };
        next.validate()?;
        self.check_pool(&next).await?;
        Ok(self.state.store.update_stack(next).await?)
    }

    async fn lock(&self, p: &Principal, r: pb::LockStackRequest) -> Result<cairn_core::Stack> {
        self.existing("stack_id", &r.stack_id).await?;
        validate::max_len("note", &r.note, 1024)?;
        let owner = p.login.clone();
        self.state
            .mutate_stack(&r.stack_id, move |s| {
                match decide_lock(&s.locked_by, &owner) {
                    LockOutcome::Locked => {
                        s.locked_by = owner.clone();
                        s.lock_note = r.note.clone();
                        Ok(())
                    }
                    LockOutcome::AlreadyHeld => Ok(()),
                    LockOutcome::HeldByOther(o) => Err(ServerError::precondition(format!(
                        "stack {} is locked by {o}",
                        s.id
                    ))),
                }
            })
            .await
    }

    async fn unlock(&self, p: &Principal, r: pb::UnlockStackRequest) -> Result<cairn_core::Stack> {
        self.existing("stack_id", &r.stack_id).await?;
        if r.force && p.role < Role::Admin {
            return Err(ServerError::PermissionDenied(
                "only admins may force an unlock".into(),
            ));
        }
        let owner = p.login.clone();
        let current = self.state.store.get_stack(&r.stack_id).await?;
        match decide_unlock(&current.locked_by, &owner, r.force) {
            UnlockOutcome::NotLocked => return Ok(current),
            UnlockOutcome::HeldByOther(o) => {
                return Err(ServerError::precondition(format!(
                    "stack {} is locked by {o}",
                    current.id
                )))
            }
            UnlockOutcome::Unlocked => {}
        }
        self.state
            .mutate_stack(&r.stack_id, move |s| {
                match decide_unlock(&s.locked_by, &owner, r.force) {
                    UnlockOutcome::Unlocked | UnlockOutcome::NotLocked => {
                        s.locked_by.clear();
                        s.lock_note.clear();
                        Ok(())
                    }
                    UnlockOutcome::HeldByOther(o) => Err(ServerError::precondition(format!(
                        "stack {} is locked by {o}",
                        s.id
                    ))),
                }
            })
            .await
    }

    async fn sync(&self, r: pb::SyncStackRequest) -> Result<cairn_core::Stack> {
        let stack = self.existing("stack_id", &r.stack_id).await?;
        let commit = match r.commit.filter(|c| !c.hash.is_empty()) {
            Some(c) => {
                commit_sha("commit.hash", &c.hash)?;
                validate::max_len("commit.message", &c.message, 64 * 1024)?;
                validate::max_len("commit.author", &c.author, 1024)?;
                let mut c = convert::commit_from(c);
                if c.branch.is_empty() {
                    c.branch = stack.branch.clone();
                }
                validate::branch("commit.branch", &c.branch)?;
                c
            }
            None => Commit {
                hash: ls_remote_head(&stack.repository, &stack.branch).await?,
                branch: stack.branch.clone(),
                ..Default::default()
            },
        };
        let stack = self
            .state
            .mutate_stack(&stack.id, move |s| {
                s.tracked_commit = Some(commit.clone());
                Ok(())
            })
            .await?;
        crate::deployments::after_sync(&self.state, &stack).await?;
        Ok(stack)
    }
}

/// The head of `branch` in `repository`, asked of a real `git` process.
pub async fn ls_remote_head(repository: &str, branch: &str) -> Result<String> {
    if repository.starts_with('-') {
        return Err(ServerError::invalid(
            "stack.repository",
            "must not start with '-'",
        ));
    }
    let refname = format!("refs/heads/{branch}");
    let out = tokio::time::timeout(
        LS_REMOTE_TIMEOUT,
        tokio::process::Command::new("git")
            .args(["ls-remote", repository, &refname])
            .env("GIT_TERMINAL_PROMPT", "0")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| ServerError::Unavailable(format!("git ls-remote {repository} timed out")))?
    .map_err(|e| ServerError::io("running git", e))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let err: String = err.trim().chars().take(500).collect();
        return Err(ServerError::precondition(format!(
            "git ls-remote {repository} failed: {err}"
        )));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .find(|(_, r)| *r == refname)
        .map(|(sha, _)| sha.to_string())
        .ok_or_else(|| {
            ServerError::precondition(format!("branch {branch} not found in {repository}"))
        })
}

fn stack_reply(s: &cairn_core::Stack) -> Option<pb::Stack> {
    Some(convert::stack(s))
}

#[tonic::async_trait]
impl StackService for StackSvc {
    async fn create_stack(
        &self,
        req: Request<pb::CreateStackRequest>,
    ) -> Result<Response<pb::CreateStackResponse>, Status> {
        let s = self.create(req.into_inner()).await?;
        tracing::info!(stack.id = %s.id, "stack created");
        Ok(Response::new(pb::CreateStackResponse {
            stack: stack_reply(&s),
        }))
    }

    async fn get_stack(
        &self,
        req: Request<pb::GetStackRequest>,
    ) -> Result<Response<pb::GetStackResponse>, Status> {
        let s = self
            .existing("stack_id", &req.into_inner().stack_id)
            .await?;
        Ok(Response::new(pb::GetStackResponse {
            stack: stack_reply(&s),
        }))
    }

    async fn list_stacks(
        &self,
        req: Request<pb::ListStacksRequest>,
    ) -> Result<Response<pb::ListStacksResponse>, Status> {
        let r = req.into_inner();
        let page = page(r.page)?;
        for (i, l) in r.labels.iter().enumerate() {
            validate::non_empty(&format!("labels[{i}]"), l, 256).map_err(ServerError::from)?;
        }
        let out = self
            .state
            .store
            .list_stacks(&r.labels, &page)
            .await
            .map_err(ServerError::from)?;
        Ok(Response::new(pb::ListStacksResponse {
            stacks: out.items.iter().map(convert::stack).collect(),
            next_page_token: out.next.unwrap_or_default(),
        }))
    }

    async fn update_stack(
        &self,
        req: Request<pb::UpdateStackRequest>,
    ) -> Result<Response<pb::UpdateStackResponse>, Status> {
        let s = self.update(req.into_inner()).await?;
        Ok(Response::new(pb::UpdateStackResponse {
            stack: stack_reply(&s),
        }))
    }

    async fn delete_stack(
        &self,
        req: Request<pb::DeleteStackRequest>,
    ) -> Result<Response<pb::DeleteStackResponse>, Status> {
        let id = req.into_inner().stack_id;
        self.existing("stack_id", &id).await?;
        // The store checks for active runs and deletes in one transaction.
        self.state
            .store
            .delete_stack(&id)
            .await
            .map_err(ServerError::from)?;
        tracing::info!(stack.id = %id, "stack deleted");
        Ok(Response::new(pb::DeleteStackResponse {}))
    }

    async fn lock_stack(
        &self,
        req: Request<pb::LockStackRequest>,
    ) -> Result<Response<pb::LockStackResponse>, Status> {
        let p = caller(&req)?.principal.clone();
        let s = self.lock(&p, req.into_inner()).await?;
        Ok(Response::new(pb::LockStackResponse {
            stack: stack_reply(&s),
        }))
    }

    async fn unlock_stack(
        &self,
        req: Request<pb::UnlockStackRequest>,
    ) -> Result<Response<pb::UnlockStackResponse>, Status> {
        let p = caller(&req)?.principal.clone();
        let s = self.unlock(&p, req.into_inner()).await?;
        Ok(Response::new(pb::UnlockStackResponse {
            stack: stack_reply(&s),
        }))
    }

    async fn set_env_var(
        &self,
        req: Request<pb::SetEnvVarRequest>,
    ) -> Result<Response<pb::SetEnvVarResponse>, Status> {
        let r = req.into_inner();
        let var = convert::env_var_from(
            r.var
                .ok_or_else(|| ServerError::invalid("var", "required"))?,
        );
        var.validate("var").map_err(ServerError::from)?;
        self.existing("stack_id", &r.stack_id).await?;
        let reply = convert::env_var(&var);
        self.state
            .store
            .set_env_var(&r.stack_id, var)
            .await
            .map_err(ServerError::from)?;
        // The name only: values, secret or not, stay out of logs.
        tracing::info!(stack.id = %r.stack_id, env.name = %reply.name, "environment variable set");
        Ok(Response::new(pb::SetEnvVarResponse { var: Some(reply) }))
    }

    async fn delete_env_var(
        &self,
        req: Request<pb::DeleteEnvVarRequest>,
    ) -> Result<Response<pb::DeleteEnvVarResponse>, Status> {
        let r = req.into_inner();
        validate::env_name("name", &r.name).map_err(ServerError::from)?;
        self.existing("stack_id", &r.stack_id).await?;
        self.state
            .store
            .delete_env_var(&r.stack_id, &r.name)
            .await
            .map_err(ServerError::from)?;
        Ok(Response::new(pb::DeleteEnvVarResponse {}))
    }

    async fn list_env_vars(
        &self,
        req: Request<pb::ListEnvVarsRequest>,
    ) -> Result<Response<pb::ListEnvVarsResponse>, Status> {
        let id = req.into_inner().stack_id;
        self.existing("stack_id", &id).await?;
        let vars = self
            .state
            .store
            .list_env_vars(&id)
            .await
            .map_err(ServerError::from)?;
        Ok(Response::new(pb::ListEnvVarsResponse {
            vars: vars.iter().map(convert::env_var).collect(),
        }))
    }

    async fn sync_stack(
        &self,
        req: Request<pb::SyncStackRequest>,
    ) -> Result<Response<pb::SyncStackResponse>, Status> {
        let s = self.sync(req.into_inner()).await?;
        Ok(Response::new(pb::SyncStackResponse {
            stack: stack_reply(&s),
        }))
    }
}
