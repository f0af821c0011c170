//! Deployment runs against a scripted agent: approved runs of one deployment take its lock one
//! at a time in approval order, a run keeps the lock through its cycles, and the next approved
//! run starts once the holder ends.

mod common;

use std::path::Path;
use std::time::Duration;

use cairn_proto::agent::v1 as apb;
use cairn_proto::v1 as pb;
use cairn_proto::v1::deployment_service_client::DeploymentServiceClient;
use common::*;
use tonic::service::interceptor::InterceptedService;

/// A repository whose project root declares deployment `prod` in cairn.toml.
fn repository(dir: &Path) -> (String, String) {
    repository_with(
        dir,
        "[deployments.prod]\ninputs = { region = \"eu\", size = 3 }\n",
    )
}

/// A repository whose project root has `cairn_toml` as its cairn.toml.
fn repository_with(dir: &Path, cairn_toml: &str) -> (String, String) {
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    git(&["init", "-q", "-b", "main"]);
    std::fs::create_dir_all(dir.join("network")).unwrap();
    std::fs::write(dir.join("network/main.tf"), "# scripted\n").unwrap();
    std::fs::write(dir.join("network/cairn.toml"), cairn_toml).unwrap();
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "prod"]);
    let sha = git(&["rev-parse", "HEAD"]);
    (dir.to_str().unwrap().to_string(), sha)
}

/// Plans `lease` with one change and stores its workspace, as the agent does.
async fn plan_with_changes(agent: &mut TestAgent, lease: &apb::Lease) {
    agent.phase(lease, pb::Phase::Initializing).await;
    agent.phase(lease, pb::Phase::Planning).await;
    let stored = agent.upload(lease, b"sealed").await.unwrap();
    agent
        .event(
            lease,
            apb::job_event::Event::WorkspaceStored(apb::WorkspaceStored {
                artifact_id: stored.artifact_id,
                sha256: stored.sha256,
            }),
        )
        .await;
    agent.plan(lease, &["aws_vpc.main"]).await;
}

async fn confirm(s: &TestServer, run_id: &str) {
    s.runs(&s.admin)
        .confirm_run(pb::ConfirmRunRequest {
            run_id: run_id.into(),
        })
        .await
        .unwrap();
}

async fn lock_holder(s: &TestServer, stack: &str) -> String {
    s.state
        .store
        .get_deployment(stack, "prod")
        .await
        .unwrap()
        .lock_holder
}

#[tokio::test]
async fn approved_runs_take_the_deployment_lock_in_approval_order() {
    let s = TestServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let (repo, sha) = repository(tmp.path());
    let mut stack = stack_input("net", false);
    stack.repository = repo;
    s.stacks(&s.admin)
        .create_stack(pb::CreateStackRequest {
            stack: Some(stack),
            env: vec![],
        })
        .await
        .unwrap();
    let mut deployments = DeploymentServiceClient::new(InterceptedService::new(
        s.channel.clone(),
        Bearer(Some(s.admin.clone())),
    ));
    let version = || pb::CreateConfigurationVersionRequest {
        stack_id: "net".into(),
        commit_sha: sha.clone(),
        archive: Vec::new(),
    };
    let v1 = deployments
        .create_configuration_version(version())
        .await
        .unwrap()
        .into_inner();
    let v2 = deployments
        .create_configuration_version(version())
        .await
        .unwrap()
        .into_inner();
    let (r1, r2) = (v1.run_ids[0].clone(), v2.run_ids[0].clone());
    assert_eq!(
        v1.configuration_version.unwrap().deployments[0].inputs["size"],
        "3"
    );

    let mut agent = TestAgent::connect(&s, 4).await;
    // Both first plans run side by side, neither holding the lock (read-only state).
    let a = agent.lease().await;
    let b = agent.lease().await;
    let (l1, l2) = if a.run_id == r1 { (a, b) } else { (b, a) };
    assert_eq!(l2.run_id, r2);
    for l in [&l1, &l2] {
        assert_eq!(
            l.env.get("CAIRN_STATE_READ_ONLY").map(String::as_str),
            Some("1")
        );
        assert_eq!(l.variables["region"], "eu");
        assert_eq!(l.variables["size"], "3");
    }
    plan_with_changes(&mut agent, &l1).await;
    plan_with_changes(&mut agent, &l2).await;
    s.wait_state(&r1, pb::RunState::Unconfirmed).await;
    s.wait_state(&r2, pb::RunState::Unconfirmed).await;

    // r1 approved first: it takes the lock and applies; r2, approved while r1 holds the lock,
    // is not dismissed (it is newer) and waits.
    confirm(&s, &r1).await;
    let apply1 = agent.lease().await;
    assert_eq!(
        (apply1.run_id.as_str(), apply1.kind),
        (r1.as_str(), apb::JobKind::Apply as i32)
    );
    assert_eq!(lock_holder(&s, "net").await, r1);
    confirm(&s, &r2).await;
    agent.apply_ok(&apply1).await;

    // r1 plans its next cycle with the lock (no longer read-only); r2 still waits.
    let cycle2 = agent.lease().await;
    assert_eq!(
        (cycle2.run_id.as_str(), cycle2.kind),
        (r1.as_str(), apb::JobKind::Plan as i32)
    );
    assert_eq!(cycle2.env.get("CAIRN_STATE_READ_ONLY"), None);
    let run1 = s.get_run(&r1).await;
    assert_eq!(run1.cycle, 2);
    assert_eq!(s.get_run(&r2).await.state, pb::RunState::Confirmed as i32);
    assert_eq!(lock_holder(&s, "net").await, r1);

    // An empty plan: r1 converged and lets go; r2 takes the lock and applies.
    agent.plan_through(&cycle2, &[]).await;
    let run1 = s.wait_state(&r1, pb::RunState::Finished).await;
    assert_eq!(run1.steps.len(), 3);
    let apply2 = agent.lease().await;
    assert_eq!(
        (apply2.run_id.as_str(), apply2.kind),
        (r2.as_str(), apb::JobKind::Apply as i32)
    );
    assert_eq!(lock_holder(&s, "net").await, r2);
    let converged = deployments
        .get_convergence(pb::GetConvergenceRequest {
            stack_id: "net".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        !converged.converged,
        "prod is at 1, the newest version is 2"
    );
    assert_eq!(converged.deployments[0].config_version, 1);
    assert_eq!(converged.deployments[0].lock_holder, r2);
}

/// Every cycle of a deployment run gets its apply. The run is dispatchable again the moment an
/// apply moves it to REPLAN_REQUESTED, and the next plan lease stores a new data key under the
/// same run id: the cleanup after an apply must not take that key with it (an apply lease
/// needs it, so the run would wait CONFIRMED forever). Many cycles, so that the scheduler's
/// lease and the apply result's cleanup meet in every order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cycle_of_an_auto_approved_deployment_run_is_applied() {
    const CYCLES: u32 = 25;
    let s = TestServer::start_configured(Duration::from_secs(30), None, |c| {
        c.deployment_max_cycles = CYCLES;
    })
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let (repo, sha) = repository_with(
        tmp.path(),
        "[deployments.prod]\ninputs = { region = \"eu\" }\nauto_approve = true\n",
    );
    let mut stack = stack_input("net", false);
    stack.repository = repo;
    s.stacks(&s.admin)
        .create_stack(pb::CreateStackRequest {
            stack: Some(stack),
            env: vec![],
        })
        .await
        .unwrap();
    let mut deployments = DeploymentServiceClient::new(InterceptedService::new(
        s.channel.clone(),
        Bearer(Some(s.admin.clone())),
    ));
    let run_id = deployments
        .create_configuration_version(pb::CreateConfigurationVersionRequest {
            stack_id: "net".into(),
            commit_sha: sha,
            archive: Vec::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .run_ids[0]
        .clone();

    // Free slots: the next cycle's plan may be leased while the apply's lease still ends.
    let mut agent = TestAgent::connect(&s, 4).await;
    for cycle in 1..=CYCLES {
        let plan = agent.lease().await;
        assert_eq!(
            (plan.run_id.as_str(), plan.kind),
            (run_id.as_str(), apb::JobKind::Plan as i32),
            "cycle {cycle}"
        );
        let workspace = format!("workspace of cycle {cycle}");
        agent.phase(&plan, pb::Phase::Initializing).await;
        agent.phase(&plan, pb::Phase::Planning).await;
        let stored = agent.upload(&plan, workspace.as_bytes()).await.unwrap();
        agent
            .event(
                &plan,
                apb::job_event::Event::WorkspaceStored(apb::WorkspaceStored {
                    artifact_id: stored.artifact_id,
                    sha256: stored.sha256,
                }),
            )
            .await;
        agent.plan(&plan, &["aws_vpc.main"]).await;
        let apply = agent.lease().await;
        assert_eq!(
            (apply.run_id.as_str(), apply.kind),
            (run_id.as_str(), apb::JobKind::Apply as i32),
            "cycle {cycle}"
        );
        assert!(!apply.workspace_key.is_empty(), "cycle {cycle}");
        let (restored, _) = agent.download(&apply).await.unwrap();
        assert_eq!(restored, workspace.as_bytes(), "cycle {cycle}");
        agent.apply_ok(&apply).await;
    }
    let last = agent.lease().await;
    assert_eq!(last.kind, apb::JobKind::Plan as i32);
    agent.plan_through(&last, &[]).await;
    let run = s.wait_state(&run_id, pb::RunState::Finished).await;
    assert_eq!(run.cycle, CYCLES + 1);
    assert_eq!(run.steps.len(), 2 * CYCLES as usize + 1);
    assert_eq!(lock_holder(&s, "net").await, "");
}
