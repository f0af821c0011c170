use std::pin::Pin;
use std::sync::Arc;

use cairn_core::{
    next_state, validate, Commit, CoreError, Principal, Run, RunEvent, RunPatch, RunType,
};
use cairn_proto::v1 as pb;
use cairn_proto::v1::run_service_server::RunService;
use futures::Stream;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::agents::cancel_run_jobs;
use crate::auth::{caller, Caller};
use crate::convert;
use crate::error::{Result, ServerError};
use crate::hub::WatchEvent;
use crate::services::{commit_sha, page};
use crate::state::AppState;

pub struct RunSvc {
    pub state: Arc<AppState>,
}

const MAX_LOG_PAGE: u32 = 5000;

impl RunSvc {
    async fn existing(&self, id: &str) -> Result<Run> {
        validate::run_id("run_id", id)?;
        Ok(self.state.store.get_run(id).await?)
    }

    async fn trigger(&self, c: &Caller, r: pb::TriggerRunRequest) -> Result<Run> {
        validate::stack_id("stack_id", &r.stack_id)?;
        let run_type = match pb::RunType::try_from(r.r#type) {
            Ok(pb::RunType::Unspecified | pb::RunType::Tracked) => RunType::Tracked,
            Ok(pb::RunType::Proposed) => RunType::Proposed,
            Ok(pb::RunType::Task) => RunType::Task,
            _ => {
                return Err(ServerError::invalid(
                    "type",
                    "must be TRACKED, PROPOSED or TASK",
                ))
            }
        };
        let mode = convert::run_mode_from("mode", r.mode)?;
        if !r.commit_sha.is_empty() {
            commit_sha("commit_sha", &r.commit_sha)?;
        }
        let deployment = if r.deployment.is_empty() {
            cairn_core::DEFAULT_DEPLOYMENT.to_string()
        } else {
            validate::slug("deployment", &r.deployment)?;
            r.deployment
        };
        let stack = self.state.store.get_stack(&r.stack_id).await?;
        if !stack.locked_by.is_empty() && stack.locked_by != c.principal.login {
            return Err(ServerError::precondition(format!(
                "stack {} is locked by {}",
                stack.id, stack.locked_by
            )));
        }
        let commit = if r.commit_sha.is_empty() {
            stack.tracked_commit.clone().ok_or_else(|| {
                ServerError::precondition(format!(
                    "stack {} has no tracked commit yet: sync it or give commit_sha",
                    stack.id
                ))
            })?
        } else if stack
            .tracked_commit
            .as_ref()
            .is_some_and(|t| t.hash == r.commit_sha)
        {
            stack.tracked_commit.clone().unwrap_or_default()
        } else {
            Commit {
                hash: r.commit_sha,
                branch: stack.branch.clone(),
                ..Default::default()
            }
        };
        let now = cairn_core::now_nanos();
        let mut run = Run::new(
            cairn_core::ids::new_run_id(),
            stack.id.clone(),
            run_type,
            commit,
            c.principal.trigger_label(),
            c.principal.creator_session(&c.ip),
            now,
        );
        run.mode = mode;
        run.prioritized = r.prioritized;
        run.deployment = deployment;
        let run = self.state.store.create_run(run).await?;
        if let Some(tp) = cairn_telemetry::propagation::current_traceparent() {
            self.state.remember_traceparent(&run.id, tp);
        }
        tracing::info!(run.id = %run.id, stack.id = %run.stack_id, run.type = run.run_type.as_str(), "run triggered");
        crate::policies::after_run_created(&self.state, &run).await;
        Ok(self.state.store.get_run(&run.id).await?)
    }

    async fn simple(&self, run_id: &str, event: RunEvent) -> Result<Run> {
        self.existing(run_id).await?;
        self.state
            .transition(run_id, event, "", RunPatch::default())
            .await
    }

    async fn stop(&self, p: &Principal, run_id: &str) -> Result<Run> {
        self.existing(run_id).await?;
        let note = format!("stopped by {}", p.login);
        let run = self
            .state
            .transition(run_id, RunEvent::Stop, &note, RunPatch::default())
            .await?;
        cancel_run_jobs(&self.state, run_id, &note).await;
        self.state.system_log(run_id, note).await;
        Ok(run)
    }

    async fn replan(&self, r: pb::ReplanRunRequest) -> Result<Run> {
        let run = self.existing(&r.run_id).await?;
        // Without targets a deployment run plans again in full: how a plan of a newer
        // configuration version is re-run after another version was applied.
        if r.targets.is_empty() && !run.is_deployment_run() {
            return Err(ServerError::invalid("targets", "at least one address"));
        }
        if r.targets.len() > 1000 {
            return Err(ServerError::invalid("targets", "at most 1000 addresses"));
        }
        let targets = r.targets;
        self.state
            .mutate_run(&r.run_id, |run, now| {
                // The state comes first: a run that cannot be replanned is a precondition
                // failure whatever the targets say.
                if next_state(run.state, RunEvent::Replan).is_none() {
                    return Err(CoreError::IllegalTransition {
                        state: run.state,
                        event: RunEvent::Replan,
                    });
                }
                let known = run.changed_addresses();
                for (i, t) in targets.iter().enumerate() {
                    if !known.contains(&t.as_str()) {
                        return Err(CoreError::invalid(
                            format!("targets[{i}]"),
                            format!("{t:?} is not one of the run's changed resources"),
                        ));
                    }
                }
                let patch = RunPatch {
                    targets: Some(targets.clone()),
                    ..Default::default()
                };
                run.apply(RunEvent::Replan, "", patch, now).map(|_| ())
            })
            .await
    }

    async fn review(&self, c: &Caller, r: pb::ReviewRunRequest) -> Result<Run> {
        self.existing(&r.run_id).await?;
        validate::max_len("note", &r.note, 4096)?;
        crate::policies::approval::review(
            &self.state,
            &c.principal,
            &c.ip,
            &r.run_id,
            r.approve,
            &r.note,
        )
        .await
    }

    async fn logs(&self, r: pb::GetRunLogsRequest) -> Result<Vec<pb::LogLine>> {
        self.existing(&r.run_id).await?;
        if r.after_seq < 0 {
            return Err(ServerError::invalid("after_seq", "must not be negative"));
        }
        let limit = match r.limit {
            0 => 1000,
            n if n < 0 || n as u32 > MAX_LOG_PAGE => {
                return Err(ServerError::invalid(
                    "limit",
                    format!("must be between 0 and {MAX_LOG_PAGE}"),
                ))
            }
            n => n as u32,
        };
        let lines = self
            .state
            .store
            .read_logs(&r.run_id, r.after_seq, limit)
            .await?;
        Ok(lines.iter().map(convert::log_line).collect())
    }
}

fn reply(run: &Run) -> Option<pb::Run> {
    Some(convert::run(run))
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchRunResponse, Status>> + Send>>;

fn watch_run_msg(run: &Run) -> pb::WatchRunResponse {
    pb::WatchRunResponse {
        event: Some(pb::watch_run_response::Event::Run(convert::run(run))),
    }
}

fn watch_log_msg(l: &cairn_core::LogLine) -> pb::WatchRunResponse {
    pb::WatchRunResponse {
        event: Some(pb::watch_run_response::Event::Log(convert::log_line(l))),
    }
}

/// Follows a run: current state, stored log lines after `after_seq`, then live events until
/// the run ends. Subscribes before reading the store so nothing falls between the two.
// The final catch-up after the channel closed sets `last_version` like every other one.
#[allow(unused_assignments)]
async fn watch(
    state: Arc<AppState>,
    run_id: String,
    after_seq: i64,
    tx: mpsc::Sender<Result<pb::WatchRunResponse, Status>>,
) -> Result<()> {
    let mut rx = state.hub.subscribe(&run_id);
    let mut last_seq = after_seq;
    let mut last_version;
    let send = |m| {
        let tx = tx.clone();
        async move { tx.send(Ok(m)).await.is_ok() }
    };
    // Re-reads the store: the starting point, and the way back after falling behind.
    macro_rules! catch_up {
        () => {{
            let run = state.store.get_run(&run_id).await?;
            last_version = run.version;
            if !send(watch_run_msg(&run)).await {
                return Ok(());
            }
            loop {
                let lines = state.store.read_logs(&run_id, last_seq, 1000).await?;
                if lines.is_empty() {
                    break;
                }
                for l in &lines {
                    last_seq = l.seq;
                    if !send(watch_log_msg(l)).await {
                        return Ok(());
                    }
                }
            }
            run.state.is_terminal()
        }};
    }
    if catch_up!() {
        return Ok(());
    }
    loop {
        let ev = tokio::select! {
            ev = rx.recv() => ev,
            _ = state.shutdown.cancelled() => return Ok(()),
            _ = tx.closed() => return Ok(()),
        };
        match ev {
            Ok(WatchEvent::Log(l)) => {
                if l.seq > last_seq {
                    last_seq = l.seq;
                    if !send(watch_log_msg(&l)).await {
                        return Ok(());
                    }
                }
            }
            Ok(WatchEvent::Run(run)) => {
                if run.version > last_version {
                    last_version = run.version;
                    if !send(watch_run_msg(&run)).await {
                        return Ok(());
                    }
                }
                if run.state.is_terminal() {
                    return Ok(());
                }
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {
                if catch_up!() {
                    return Ok(());
                }
            }
            Err(broadcast::error::RecvError::Closed) => {
                // The run ended (the hub drops a finished run's channel): send what remains.
                catch_up!();
                return Ok(());
            }
        }
    }
}

#[tonic::async_trait]
impl RunService for RunSvc {
    async fn trigger_run(
        &self,
        req: Request<pb::TriggerRunRequest>,
    ) -> Result<Response<pb::TriggerRunResponse>, Status> {
        let c = caller(&req)?.clone();
        let run = self.trigger(&c, req.into_inner()).await?;
        Ok(Response::new(pb::TriggerRunResponse { run: reply(&run) }))
    }

    async fn get_run(
        &self,
        req: Request<pb::GetRunRequest>,
    ) -> Result<Response<pb::GetRunResponse>, Status> {
        let run = self.existing(&req.into_inner().run_id).await?;
        Ok(Response::new(pb::GetRunResponse { run: reply(&run) }))
    }

    async fn list_runs(
        &self,
        req: Request<pb::ListRunsRequest>,
    ) -> Result<Response<pb::ListRunsResponse>, Status> {
        let r = req.into_inner();
        let page = page(r.page)?;
        validate::stack_id("stack_id", &r.stack_id).map_err(ServerError::from)?;
        self.state
            .store
            .get_stack(&r.stack_id)
            .await
            .map_err(ServerError::from)?;
        let out = self
            .state
            .store
            .list_runs(&r.stack_id, &page)
            .await
            .map_err(ServerError::from)?;
        Ok(Response::new(pb::ListRunsResponse {
            runs: out.items.iter().map(convert::run).collect(),
            next_page_token: out.next.unwrap_or_default(),
        }))
    }

    async fn confirm_run(
        &self,
        req: Request<pb::ConfirmRunRequest>,
    ) -> Result<Response<pb::ConfirmRunResponse>, Status> {
        let run_id = req.into_inner().run_id;
        let current = self.existing(&run_id).await?;
        crate::policies::approval::check_confirm(&self.state, &current).await?;
        let run = self.simple(&run_id, RunEvent::Confirm).await?;
        Ok(Response::new(pb::ConfirmRunResponse { run: reply(&run) }))
    }

    async fn discard_run(
        &self,
        req: Request<pb::DiscardRunRequest>,
    ) -> Result<Response<pb::DiscardRunResponse>, Status> {
        let run = self
            .simple(&req.into_inner().run_id, RunEvent::Discard)
            .await?;
        self.state
            .artifacts
            .delete_run(&run.id, &run.artifact_id)
            .await;
        Ok(Response::new(pb::DiscardRunResponse { run: reply(&run) }))
    }

    async fn cancel_run(
        &self,
        req: Request<pb::CancelRunRequest>,
    ) -> Result<Response<pb::CancelRunResponse>, Status> {
        let run = self
            .simple(&req.into_inner().run_id, RunEvent::Cancel)
            .await?;
        self.state
            .artifacts
            .delete_run(&run.id, &run.artifact_id)
            .await;
        Ok(Response::new(pb::CancelRunResponse { run: reply(&run) }))
    }

    async fn stop_run(
        &self,
        req: Request<pb::StopRunRequest>,
    ) -> Result<Response<pb::StopRunResponse>, Status> {
        let p = caller(&req)?.principal.clone();
        let run = self.stop(&p, &req.into_inner().run_id).await?;
        Ok(Response::new(pb::StopRunResponse { run: reply(&run) }))
    }

    async fn replan_run(
        &self,
        req: Request<pb::ReplanRunRequest>,
    ) -> Result<Response<pb::ReplanRunResponse>, Status> {
        let run = self.replan(req.into_inner()).await?;
        Ok(Response::new(pb::ReplanRunResponse { run: reply(&run) }))
    }

    async fn review_run(
        &self,
        req: Request<pb::ReviewRunRequest>,
    ) -> Result<Response<pb::ReviewRunResponse>, Status> {
        let c = caller(&req)?.clone();
        let run = self.review(&c, req.into_inner()).await?;
        Ok(Response::new(pb::ReviewRunResponse { run: reply(&run) }))
    }

    type WatchRunStream = WatchStream;

    async fn watch_run(
        &self,
        req: Request<pb::WatchRunRequest>,
    ) -> Result<Response<Self::WatchRunStream>, Status> {
        let r = req.into_inner();
        self.existing(&r.run_id).await?;
        if r.after_seq < 0 {
            return Err(ServerError::invalid("after_seq", "must not be negative").into());
        }
        let (tx, rx) = mpsc::channel(256);
        let state = self.state.clone();
        tokio::spawn(async move {
            let run_id = r.run_id.clone();
            if let Err(e) = watch(state.clone(), r.run_id, r.after_seq, tx.clone()).await {
                let _ = tx.send(Err(e.into())).await;
            }
            state.hub.release(&run_id);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_run_logs(
        &self,
        req: Request<pb::GetRunLogsRequest>,
    ) -> Result<Response<pb::GetRunLogsResponse>, Status> {
        let lines = self.logs(req.into_inner()).await?;
        Ok(Response::new(pb::GetRunLogsResponse { lines }))
    }
}
