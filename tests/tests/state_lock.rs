//! End to end: the state lock of a real Terraform apply, run by a real `cairn agent` whose
//! machine dies (SIGKILL) while Terraform holds the lock, is released when the run fails, and
//! showed its holder (run, worker, Terraform's Who) while it was held.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use cairn_proto::v1::state_service_client::StateServiceClient;
use cairn_tests::{
    pb, stack_spec, state_of, wait_until, AgentOptions, AgentProcess, Error, GitRepo, Result,
    ServerOptions, TestServer, WAIT,
};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

type States = StateServiceClient<
    InterceptedService<
        Channel,
        Box<
            dyn FnMut(tonic::Request<()>) -> std::result::Result<tonic::Request<()>, tonic::Status>,
        >,
    >,
>;

fn states(server: &TestServer) -> States {
    let header = format!("Bearer {}", server.admin_key);
    StateServiceClient::with_interceptor(
        server.channel.clone(),
        Box::new(move |mut req: tonic::Request<()>| {
            req.metadata_mut()
                .insert("authorization", header.parse().unwrap());
            Ok(req)
        }),
    )
}

/// A resource whose file is a FIFO nobody reads: its create blocks, and Terraform's apply with
/// it, while the apply holds the state lock.
fn blocking_tf(fifo: &Path) -> String {
    format!(
        r#"terraform {{
  required_providers {{
    cairntest = {{ source = "cairn.local/test/cairntest" }}
  }}
}}

resource "cairntest_file" "stuck" {{
  path    = "{}"
  content = "never written"
}}
"#,
        fifo.display()
    )
}

async fn lock_of(server: &TestServer) -> Result<Option<pb::StateLock>> {
    Ok(states(server)
        .get_state_lock(pb::GetStateLockRequest {
            stack_id: "net".into(),
            deployment: String::new(),
        })
        .await?
        .into_inner()
        .lock)
}

/// Lets a writer still blocked on the FIFO go on (and fail to save its state), without ever
/// blocking the test: a non-blocking reader, read for a while, then closed.
fn drain(fifo: &Path) {
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(fifo)
    {
        let mut buf = [0u8; 256];
        for _ in 0..50 {
            match f.read(&mut buf) {
                Ok(n) if n > 0 => return,
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_held_by_terraform_on_a_killed_worker_is_released_when_the_run_fails() -> Result<()>
{
    let server =
        TestServer::start(ServerOptions::with_lease_timeout(Duration::from_secs(4))).await?;
    let mut agent = AgentProcess::start(&server, AgentOptions::named("doomed")).await?;
    let out = tempfile::tempdir().map_err(|e| Error::Setup(e.to_string()))?;
    let fifo = out.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU)
        .map_err(|e| Error::Setup(format!("mkfifo: {e}")))?;
    let repo = GitRepo::new()?;
    repo.write("net/main.tf", &blocking_tf(&fifo))?;
    let sha = repo.commit_and_push("a resource that blocks")?;
    server
        .create_stack(
            stack_spec("net", &repo.url(), "net", "terraform", true),
            vec![],
            &sha,
        )
        .await?;
    let run = server.trigger("net", pb::RunType::Tracked, &sha).await?;

    // Terraform applies and blocks holding the lock; the lock names its holder.
    let held = wait_until("terraform's apply to hold the state lock", WAIT, || async {
        let lock = lock_of(&server).await?;
        let run_now = server.get_run(&run.id).await?;
        if matches!(
            state_of(&run_now),
            pb::RunState::Failed | pb::RunState::Finished
        ) {
            return Err(Error::Check(format!(
                "run ended {:?} before blocking: {}",
                state_of(&run_now),
                run_now.error
            )));
        }
        Ok(lock.filter(|l| l.operation == "OperationTypeApply"))
    })
    .await;
    let held = match held {
        Ok(l) => l,
        Err(e) => {
            drain(&fifo);
            return Err(e);
        }
    };
    assert_eq!(held.holder_run_id, run.id);
    assert!(!held.holder_worker_id.is_empty());
    assert!(held.who.contains('@'), "Terraform's Who: {:?}", held.who);
    // The agent reports the phase as it starts Apply, on another connection than Terraform's.
    wait_until("the run to be applying", WAIT, || async {
        let r = server.get_run(&run.id).await?;
        Ok((state_of(&r) == pb::RunState::Applying).then_some(()))
    })
    .await?;

    // The worker's machine dies: the lease expires, the run fails, the lock goes.
    agent.kill()?;
    let failed = wait_until("the run to fail", WAIT, || async {
        let r = server.get_run(&run.id).await?;
        Ok((state_of(&r) == pb::RunState::Failed).then_some(r))
    })
    .await?;
    assert!(failed.error.contains("worker lost"), "{}", failed.error);
    wait_until("the lock to be released", WAIT, || async {
        Ok(lock_of(&server).await?.is_none().then_some(()))
    })
    .await?;

    // Whatever of the lost worker still runs cannot write the state any more: the only state is
    // the empty one Terraform saved when its apply started, before the worker was lost.
    drain(&fifo);
    let failed_at = failed
        .states_history
        .iter()
        .find(|t| t.state == pb::RunState::Failed as i32)
        .map(|t| t.timestamp)
        .unwrap_or_default();
    let versions = states(&server)
        .list_state_versions(pb::ListStateVersionsRequest {
            stack_id: "net".into(),
            deployment: String::new(),
            page: None,
        })
        .await?
        .into_inner()
        .versions;
    for v in &versions {
        assert_eq!(v.created_by_run, run.id);
        assert!(
            v.created_at < failed_at,
            "{v:?} written after the run failed"
        );
    }
    if let Some(v) = versions.first() {
        let doc = states(&server)
            .get_state_version(pb::GetStateVersionRequest {
                stack_id: "net".into(),
                deployment: String::new(),
                serial: Some(v.serial),
            })
            .await?
            .into_inner()
            .state;
        let doc: serde_json::Value = serde_json::from_slice(&doc)
            .map_err(|e| Error::Check(format!("state is not JSON: {e}")))?;
        assert_eq!(doc["resources"], serde_json::json!([]), "{doc}");
    }
    Ok(())
}
