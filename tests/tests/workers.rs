//! Workers that crash or are told to stop, and a plugin written in Python: a real server, real
//! `cairn agent` processes and the example `shell` runner (examples/python-runner), whose
//! plan and apply are shell scripts in the repository.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_tests::{
    delta_tuple, history, log_text, pb, stack_spec, wait_until, AgentOptions, AgentProcess, Error,
    GitRepo, Result, ServerOptions, TestServer,
};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pb::RunState as S;

struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Result<Self> {
        Ok(Scratch {
            dir: tempfile::tempdir().map_err(|e| Error::Setup(e.to_string()))?,
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn sh_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

/// plan.sh: while `slow` exists, records its pid in `pid_file` and sleeps (the process stays
/// the same: `exec`); otherwise reports one added resource. apply.sh writes `applied`.
fn shell_project(repo: &GitRepo, slow: &Path, pid_file: &Path, applied: &Path) -> Result<String> {
    repo.write(
        "svc/plan.sh",
        &format!(
            "set -e\necho planning the web service\nif [ -e {slow} ]; then\n  echo $$ > {pid}.tmp\n  mv {pid}.tmp {pid}\n  exec sleep 600\nfi\nmkdir -p .cairn\nprintf '%s' '[{{\"action\": \"added\", \"address\": \"svc.web\", \"type\": \"service\"}}]' > .cairn/changes.json\n",
            slow = sh_quote(slow),
            pid = sh_quote(pid_file),
        ),
    )?;
    repo.write(
        "svc/apply.sh",
        &format!(
            "set -e\necho applying the web service\nprintf 'web is up' > {}\n",
            sh_quote(applied)
        ),
    )?;
    repo.commit_and_push("shell project")
}

fn read_pid(path: &Path) -> Option<Pid> {
    std::fs::read_to_string(path)
        .ok()?
        .trim()
        .parse()
        .ok()
        .map(Pid::from_raw)
}

fn alive(pid: Pid) -> bool {
    kill(pid, None).is_ok()
}

/// Waits for the sleeping plan script to write its pid.
async fn planning_pid(pid_file: &Path) -> Result<Pid> {
    wait_until("the plan script to start", cairn_tests::WAIT, || async {
        Ok(read_pid(pid_file))
    })
    .await
}

/// Kills a leftover plan script (a process this test started through the agent).
struct Reap(PathBuf);

impl Drop for Reap {
    fn drop(&mut self) {
        if let Some(pid) = read_pid(&self.0) {
            let _ = kill(pid, Signal::SIGKILL);
        }
    }
}

/// A worker SIGKILLed mid-plan: its lease expires, the run fails as "worker lost", and the
/// stack's next run goes to another worker and finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_worker_fails_its_run_and_the_next_run_goes_elsewhere() -> Result<()> {
    let server =
        TestServer::start(ServerOptions::with_lease_timeout(Duration::from_secs(2))).await?;
    let mut first = AgentProcess::start(&server, AgentOptions::named("crash-first")).await?;
    let scratch = Scratch::new()?;
    let (slow, pid_file, applied) = (
        scratch.path("slow"),
        scratch.path("plan.pid"),
        scratch.path("applied.txt"),
    );
    let _reap = Reap(pid_file.clone());
    std::fs::write(&slow, "").map_err(|e| Error::Setup(e.to_string()))?;
    let repo = GitRepo::new()?;
    let sha = shell_project(&repo, &slow, &pid_file, &applied)?;
    server
        .create_stack(
            stack_spec("svc", &repo.url(), "svc", "shell", true),
            vec![],
            &sha,
        )
        .await?;

    let lost = server.trigger("svc", pb::RunType::Tracked, "").await?;
    planning_pid(&pid_file).await?;
    // Queued behind the planning run: tracked runs of one stack go one at a time.
    let next = server.trigger("svc", pb::RunType::Tracked, "").await?;
    first.kill()?;
    std::fs::remove_file(&slow).map_err(|e| Error::Setup(e.to_string()))?;

    let lost = server.wait(&lost.id, &[S::Failed]).await?;
    let notes: Vec<&str> = lost
        .states_history
        .iter()
        .map(|t| t.note.as_str())
        .collect();
    assert!(
        notes.iter().any(|n| n.contains("worker lost")) || lost.error.contains("worker lost"),
        "the failure says why: {notes:?} / {:?}",
        lost.error
    );
    assert_eq!(
        server.get_run(&next.id).await?.state,
        S::Queued as i32,
        "no worker is left to take the next run"
    );

    let _second = AgentProcess::start(&server, AgentOptions::named("crash-second")).await?;
    let next = server.wait(&next.id, &[S::Finished]).await?;
    assert!(history(&next).contains(&S::Applying));
    assert_eq!(
        std::fs::read_to_string(&applied).ok().as_deref(),
        Some("web is up")
    );
    let logs = log_text(&server, &next.id).await?;
    assert!(
        logs.contains("crash-second"),
        "the next run was leased to the second worker:\n{logs}"
    );
    Ok(())
}

/// StopRun during planning: the run is STOPPED and the vendor process is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_during_planning_ends_the_vendor_process() -> Result<()> {
    let server = TestServer::start(ServerOptions::default()).await?;
    let _agent = AgentProcess::start(&server, AgentOptions::named("stopper")).await?;
    let scratch = Scratch::new()?;
    let (slow, pid_file, applied) = (
        scratch.path("slow"),
        scratch.path("plan.pid"),
        scratch.path("applied.txt"),
    );
    let _reap = Reap(pid_file.clone());
    std::fs::write(&slow, "").map_err(|e| Error::Setup(e.to_string()))?;
    let repo = GitRepo::new()?;
    let sha = shell_project(&repo, &slow, &pid_file, &applied)?;
    server
        .create_stack(
            stack_spec("svc", &repo.url(), "svc", "shell", false),
            vec![],
            &sha,
        )
        .await?;

    let run = server.trigger("svc", pb::RunType::Tracked, "").await?;
    let pid = planning_pid(&pid_file).await?;
    assert!(alive(pid));
    server
        .runs()
        .stop_run(pb::StopRunRequest {
            run_id: run.id.clone(),
        })
        .await?;
    let run = server.wait(&run.id, &[S::Stopped]).await?;
    assert!(history(&run).contains(&S::Planning));
    wait_until(
        "the plan script to be stopped",
        cairn_tests::WAIT,
        || async { Ok((!alive(pid)).then_some(())) },
    )
    .await?;
    assert!(!applied.exists());
    Ok(())
}

/// The contract is language-neutral: the Python plugin plans, waits for confirmation and
/// applies through the same agent and server as the Rust ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_plugin_end_to_end() -> Result<()> {
    let server = TestServer::start(ServerOptions::default()).await?;
    let _agent = AgentProcess::start(&server, AgentOptions::named("python")).await?;
    let scratch = Scratch::new()?;
    let (slow, pid_file, applied) = (
        scratch.path("never-created"),
        scratch.path("plan.pid"),
        scratch.path("applied.txt"),
    );
    let repo = GitRepo::new()?;
    let sha = shell_project(&repo, &slow, &pid_file, &applied)?;
    server
        .create_stack(
            stack_spec("svc", &repo.url(), "svc", "shell", false),
            vec![],
            &sha,
        )
        .await?;
    let run = server.trigger("svc", pb::RunType::Tracked, "").await?;
    let run = server.wait(&run.id, &[S::Unconfirmed]).await?;
    assert_eq!(delta_tuple(run.delta.as_ref()), (1, 0, 0));
    assert_eq!(
        run.changes
            .iter()
            .filter_map(|c| c.entity.as_ref())
            .map(|e| (e.address.as_str(), e.entity_vendor.as_str()))
            .collect::<Vec<_>>(),
        vec![("svc.web", "shell")]
    );
    assert!(!applied.exists());
    server
        .runs()
        .confirm_run(pb::ConfirmRunRequest {
            run_id: run.id.clone(),
        })
        .await?;
    let run = server.wait(&run.id, &[S::Finished]).await?;
    assert_eq!(
        std::fs::read_to_string(&applied).ok().as_deref(),
        Some("web is up")
    );
    let logs = log_text(&server, &run.id).await?;
    assert!(logs.contains("planning the web service"), "{logs}");
    assert!(logs.contains("applying the web service"), "{logs}");
    Ok(())
}
