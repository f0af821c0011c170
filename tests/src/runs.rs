//! Stacks, runs and waiting for them, over the public gRPC API.

use std::future::Future;
use std::time::{Duration, Instant};

use cairn_proto::v1::run_service_client::RunServiceClient;
use cairn_proto::v1::stack_service_client::StackServiceClient;

use crate::{pb, Authed, Error, Result, TestServer};

pub type RunClient = RunServiceClient<Authed>;
pub type StackClient = StackServiceClient<Authed>;

/// A stack of `vendor` on `repository` (branch `main`).
pub fn stack_spec(
    id: &str,
    repository: &str,
    project_root: &str,
    vendor: &str,
    autodeploy: bool,
) -> pb::Stack {
    pb::Stack {
        id: id.into(),
        name: id.into(),
        repository: repository.into(),
        branch: "main".into(),
        project_root: project_root.into(),
        vendor: vendor.into(),
        autodeploy,
        ..Default::default()
    }
}

pub fn state_of(run: &pb::Run) -> pb::RunState {
    pb::RunState::try_from(run.state).unwrap_or(pb::RunState::Unspecified)
}

/// The states a run went through, in order.
pub fn history(run: &pb::Run) -> Vec<pb::RunState> {
    run.states_history
        .iter()
        .map(|t| pb::RunState::try_from(t.state).unwrap_or(pb::RunState::Unspecified))
        .collect()
}

/// (added, changed, deleted) resources of a delta.
pub fn delta_tuple(delta: Option<&pb::Delta>) -> (i32, i32, i32) {
    delta.map_or((0, 0, 0), |d| {
        (d.added_resources, d.changed_resources, d.deleted_resources)
    })
}

fn is_terminal(s: pb::RunState) -> bool {
    matches!(
        s,
        pb::RunState::Finished
            | pb::RunState::Failed
            | pb::RunState::Discarded
            | pb::RunState::Canceled
            | pb::RunState::Stopped
    )
}

/// Every stored log line of a run, page by page.
pub async fn log_lines(server: &TestServer, run_id: &str) -> Result<Vec<pb::LogLine>> {
    let mut runs = server.runs();
    let mut out = Vec::new();
    loop {
        let lines = runs
            .get_run_logs(pb::GetRunLogsRequest {
                run_id: run_id.into(),
                after_seq: out.last().map_or(0, |l: &pb::LogLine| l.seq),
                limit: 1000,
            })
            .await?
            .into_inner()
            .lines;
        if lines.is_empty() {
            return Ok(out);
        }
        out.extend(lines);
    }
}

/// Every stored log line of a run, one per line.
pub async fn log_text(server: &TestServer, run_id: &str) -> Result<String> {
    Ok(log_lines(server, run_id)
        .await?
        .iter()
        .map(|l| format!("{}\n", l.message))
        .collect())
}

fn describe(run: &pb::Run) -> String {
    let notes: Vec<String> = run
        .states_history
        .iter()
        .map(|t| {
            let s = pb::RunState::try_from(t.state).unwrap_or(pb::RunState::Unspecified);
            if t.note.is_empty() {
                s.as_str_name().to_string()
            } else {
                format!("{} ({})", s.as_str_name(), t.note)
            }
        })
        .collect();
    format!(
        "run {} is {} (history: {}; error: {:?})",
        run.id,
        state_of(run).as_str_name(),
        notes.join(" -> "),
        run.error
    )
}

/// Follows `run_id` with WatchRun until it is in one of `states`. A run that ends in another
/// terminal state, or does not get there within `timeout`, is an error that shows the run's
/// history and logs.
pub async fn wait_for_state(
    server: &TestServer,
    run_id: &str,
    states: &[pb::RunState],
    timeout: Duration,
) -> Result<pb::Run> {
    let wanted = |r: &pb::Run| states.contains(&state_of(r));
    let watch = async {
        let mut stream = server
            .runs()
            .watch_run(pb::WatchRunRequest {
                run_id: run_id.into(),
                after_seq: i64::MAX,
            })
            .await?
            .into_inner();
        while let Some(ev) = stream.message().await? {
            if let Some(pb::watch_run_response::Event::Run(run)) = ev.event {
                if wanted(&run) || is_terminal(state_of(&run)) {
                    return Ok::<Option<pb::Run>, Error>(Some(run));
                }
            }
        }
        Ok(None)
    };
    let seen = match tokio::time::timeout(timeout, watch).await {
        Ok(r) => r?,
        Err(_) => None,
    };
    // The stream may end (server shutdown, terminal run) without the run we want: the stored
    // run is the truth either way.
    let run = match seen {
        Some(run) => run,
        None => get_run(server, run_id).await?,
    };
    if wanted(&run) {
        return Ok(run);
    }
    let logs = log_text(server, run_id).await.unwrap_or_default();
    let what = format!(
        "{} to reach {:?}; {}\nlogs:\n{logs}",
        run_id,
        states.iter().map(|s| s.as_str_name()).collect::<Vec<_>>(),
        describe(&run)
    );
    if is_terminal(state_of(&run)) {
        Err(Error::Check(format!("expected {what}")))
    } else {
        Err(Error::Timeout {
            what,
            after: timeout,
        })
    }
}

pub async fn get_run(server: &TestServer, run_id: &str) -> Result<pb::Run> {
    server
        .runs()
        .get_run(pb::GetRunRequest {
            run_id: run_id.into(),
        })
        .await?
        .into_inner()
        .run
        .ok_or_else(|| Error::Check("GetRun answered without a run".into()))
}

/// Polls `check` until it yields a value.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let started = Instant::now();
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if started.elapsed() > timeout {
            return Err(Error::Timeout {
                what: what.to_string(),
                after: timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl TestServer {
    /// Creates a stack with `env` and moves its tracked commit to `commit`.
    pub async fn create_stack(
        &self,
        stack: pb::Stack,
        env: Vec<pb::EnvVar>,
        commit: &str,
    ) -> Result<pb::Stack> {
        let id = stack.id.clone();
        self.stacks()
            .create_stack(pb::CreateStackRequest {
                stack: Some(stack),
                env,
            })
            .await?;
        self.sync(&id, commit).await
    }

    /// Moves a stack's tracked commit, as a push to its branch would.
    pub async fn sync(&self, stack_id: &str, commit: &str) -> Result<pb::Stack> {
        self.stacks()
            .sync_stack(pb::SyncStackRequest {
                stack_id: stack_id.into(),
                commit: Some(pb::Commit {
                    hash: commit.into(),
                    branch: "main".into(),
                    ..Default::default()
                }),
            })
            .await?
            .into_inner()
            .stack
            .ok_or_else(|| Error::Check("SyncStack answered without a stack".into()))
    }

    /// Triggers a run; an empty `commit` means the stack's tracked commit.
    pub async fn trigger(
        &self,
        stack_id: &str,
        run_type: pb::RunType,
        commit: &str,
    ) -> Result<pb::Run> {
        self.runs()
            .trigger_run(pb::TriggerRunRequest {
                stack_id: stack_id.into(),
                r#type: run_type as i32,
                commit_sha: commit.into(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .run
            .ok_or_else(|| Error::Check("TriggerRun answered without a run".into()))
    }

    pub async fn get_run(&self, run_id: &str) -> Result<pb::Run> {
        get_run(self, run_id).await
    }

    pub async fn wait(&self, run_id: &str, states: &[pb::RunState]) -> Result<pb::Run> {
        wait_for_state(self, run_id, states, crate::WAIT).await
    }
}
