//! State shared by every service: the store, the watch hub, the agent registry, keys.
//!
//! Every run change made by the server goes through [`AppState::transition`] or
//! [`AppState::mutate_run`], which persist through cairn-store (the state machine lives in
//! cairn-core) and then publish to watchers, keep the stack's `state` in step and wake the
//! scheduler. Nothing else writes runs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cairn_core::{CoreError, LogLine, LogStream, Nanos, Phase, Run, RunEvent, RunPatch, Stack};
use cairn_store::{Store, StoreError};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::agents::Registry;
use crate::artifacts::ArtifactStore;
use crate::config::Config;
use crate::crypto::MasterKey;
use crate::error::{Result, ServerError};
use crate::hub::Hub;

pub struct AppState {
    pub store: Arc<dyn Store>,
    pub config: Config,
    pub hub: Hub,
    /// Commit statuses, pull-request comments and webhooks for run changes.
    pub notifier: crate::notify::Notifier,
    pub agents: Registry,
    pub artifacts: ArtifactStore,
    pub master_key: MasterKey,
    /// Compiled policies and the trigger-policy queue.
    pub policies: crate::policies::Policies,
    /// Wakes the scheduler: new runs, confirmations, ended leases, new agents.
    pub wake: Notify,
    pub shutdown: CancellationToken,
    pub state_backend: crate::state_backend::StateBackend,
    /// Changed state outputs on their way to the deployments that consume them.
    pub upstream: crate::upstream::Queue,
    /// Webhook deliveries and the plain-Git poller.
    pub vcs: crate::vcs::Vcs,
    /// Next log seq per active run; lines are numbered here so that agent lines and the
    /// server's own system lines share one sequence.
    log_seq: tokio::sync::Mutex<HashMap<String, i64>>,
    /// The trace each run belongs to (the TriggerRun call that created it), so that its phase
    /// spans and the agent's work join that trace.
    traceparents: Mutex<HashMap<String, String>>,
}

impl AppState {
    pub fn new(
        store: Arc<dyn Store>,
        config: Config,
        artifacts: ArtifactStore,
        master_key: MasterKey,
    ) -> AppState {
        AppState {
            store,
            config,
            hub: Hub::default(),
            notifier: Default::default(),
            agents: Registry::default(),
            artifacts,
            master_key,
            policies: Default::default(),
            wake: Notify::new(),
            shutdown: CancellationToken::new(),
            state_backend: Default::default(),
            upstream: Default::default(),
            vcs: Default::default(),
            log_seq: Default::default(),
            traceparents: Default::default(),
        }
    }

    pub fn wake_scheduler(&self) {
        self.wake.notify_one();
    }

    /// Applies `event` through the state machine and persists it; illegal → FAILED_PRECONDITION
    /// with nothing stored changed.
    pub async fn transition(
        &self,
        run_id: &str,
        event: RunEvent,
        note: &str,
        patch: RunPatch,
    ) -> Result<Run> {
        let run = cairn_store::transition(self.store.as_ref(), run_id, event, note, patch).await?;
        self.changed(&run).await;
        self.policies.run_changed(&run);
        // Boxed: dismissing older plans transitions other runs, which comes back here.
        Box::pin(crate::deployments::after_transition(self, event, &run)).await;
        Ok(run)
    }

    /// Reads, changes and compare-and-swaps a run (retrying lost races), then publishes it.
    pub async fn mutate_run<F>(&self, run_id: &str, f: F) -> Result<Run>
    where
        F: Fn(&mut Run, Nanos) -> std::result::Result<(), CoreError> + Send + Sync,
    {
        let run = cairn_store::mutate_run(self.store.as_ref(), run_id, f).await?;
        self.changed(&run).await;
        Ok(run)
    }

    async fn changed(&self, run: &Run) {
        tracing::info!(run.id = %run.id, stack.id = %run.stack_id, run.state = %run.state, "run changed");
        self.hub.publish_run(run);
        self.notifier.run_changed(run);
        if run.run_type.is_blocking() {
            let state = run.state.as_str().to_string();
            let res = self
                .mutate_stack(&run.stack_id, move |s| {
                    s.state = state.clone();
                    Ok(())
                })
                .await;
            if let Err(e) = res {
                // The stack may have been deleted with its runs; the run itself is stored.
                tracing::debug!(error = %e, "stack state not updated");
            }
        }
        if run.state.is_terminal() {
            self.log_seq.lock().await.remove(&run.id);
            self.traceparents
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&run.id);
            self.wake_scheduler();
        } else if run.state.is_dispatchable() {
            self.wake_scheduler();
        }
    }

    /// Reads, changes and compare-and-swaps a stack, retrying lost races.
    pub async fn mutate_stack<F>(&self, stack_id: &str, f: F) -> Result<Stack>
    where
        F: Fn(&mut Stack) -> Result<()> + Send + Sync,
    {
        for _ in 0..64 {
            let mut stack = self.store.get_stack(stack_id).await?;
            let before = stack.clone();
            f(&mut stack)?;
            if stack == before {
                return Ok(stack);
            }
            stack.updated_at = cairn_core::now_nanos();
            match self.store.update_stack(stack).await {
                Err(StoreError::Conflict { .. }) => {
                    tokio::task::yield_now().await;
                    continue;
                }
                other => return Ok(other?),
            }
        }
        Err(ServerError::Conflict(format!(
            "stack {stack_id:?} keeps changing concurrently"
        )))
    }

    /// Numbers, stores and broadcasts log lines of a run. `message`s must already be masked.
    pub async fn append_logs(
        &self,
        run_id: &str,
        lines: Vec<(Option<Phase>, LogStream, String)>,
    ) -> Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let mut seqs = self.log_seq.lock().await;
        let next = match seqs.get(run_id) {
            Some(n) => *n,
            None => self.store.last_log_seq(run_id).await? + 1,
        };
        let now = cairn_core::now_nanos();
        let numbered: Vec<LogLine> = lines
            .into_iter()
            .enumerate()
            .map(|(i, (phase, stream, message))| LogLine {
                seq: next + i as i64,
                timestamp: now,
                phase,
                stream,
                message,
            })
            .collect();
        self.store.append_logs(run_id, &numbered).await?;
        seqs.insert(run_id.to_string(), next + numbered.len() as i64);
        drop(seqs);
        self.hub.publish_logs(run_id, &numbered);
        Ok(())
    }

    /// A line written by Cairn itself (state changes the agent did not cause).
    pub async fn system_log(&self, run_id: &str, message: impl Into<String>) {
        let res = self
            .append_logs(run_id, vec![(None, LogStream::System, message.into())])
            .await;
        if let Err(e) = res {
            tracing::warn!(run.id = %run_id, error = %e, "system log line not stored");
        }
    }

    pub fn remember_traceparent(&self, run_id: &str, traceparent: String) {
        self.traceparents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(run_id.to_string(), traceparent);
    }

    pub fn traceparent(&self, run_id: &str) -> Option<String> {
        self.traceparents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(run_id)
            .cloned()
    }
}
