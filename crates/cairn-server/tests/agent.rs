//! The scheduler and the agent protocol, driven by a test agent over real gRPC.

mod common;

use std::time::Duration;

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use cairn_proto::agent::v1 as apb;
use cairn_proto::v1 as pb;
use common::*;
use tonic::Code;

fn encrypt(key: &[u8], plain: &[u8]) -> Vec<u8> {
    let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key));
    let nonce = [7u8; 12];
    let mut out = nonce.to_vec();
    out.extend(cipher.encrypt(Nonce::from_slice(&nonce), plain).unwrap());
    out
}

fn decrypt(key: &[u8], data: &[u8]) -> Vec<u8> {
    let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key));
    let (nonce, ct) = data.split_at(12);
    cipher.decrypt(Nonce::from_slice(nonce), ct).unwrap()
}

fn states(run: &pb::Run) -> Vec<pb::RunState> {
    run.states_history.iter().map(|t| t.state()).collect()
}

#[tokio::test]
async fn tracked_run_plans_waits_for_confirmation_and_applies_the_stored_workspace() {
    let s = TestServer::start().await;
    s.stack("app", false, SHA_A).await;
    s.stacks(&s.admin)
        .set_env_var(pb::SetEnvVarRequest {
            stack_id: "app".into(),
            var: Some(pb::EnvVar {
                name: "TF_VAR_password".into(),
                value: "s3cr3t-value".into(),
                secret: true,
            }),
        })
        .await
        .unwrap();
    let mut agent = TestAgent::connect(&s, 1).await;
    let run = s.trigger("app", pb::RunType::Tracked).await;

    let lease = agent.lease().await;
    assert_eq!(lease.run_id, run.id);
    assert_eq!(lease.kind(), apb::JobKind::Plan);
    assert!(lease.upload_workspace);
    assert_eq!(lease.commit_sha, SHA_A);
    assert_eq!(lease.branch, "main");
    assert_eq!(lease.project_root, "network");
    assert_eq!(lease.workspace_key.len(), 32);
    assert_eq!(lease.env.get("TF_VAR_password").unwrap(), "s3cr3t-value");
    // Terraform stacks also get the state backend's password, secret as well.
    assert_eq!(
        lease.secret_names,
        vec![
            "TF_VAR_password".to_string(),
            "CAIRN_STATE_PASSWORD".to_string()
        ]
    );
    assert_eq!(lease.run_type(), pb::RunType::Tracked);
    s.wait_state(&run.id, pb::RunState::Preparing).await;

    agent.phase(&lease, pb::Phase::Initializing).await;
    agent.log(&lease, "terraform init").await;
    agent.phase(&lease, pb::Phase::Planning).await;
    agent
        .log(&lease, "password is s3cr3t-value, do not print it")
        .await;
    agent
        .plan(&lease, &["aws_s3_bucket.a", "aws_s3_bucket.b"])
        .await;
    let workspace = b"terraform workspace tarball".repeat(100);
    let sealed = encrypt(&lease.workspace_key, &workspace);
    let stored = agent.upload(&lease, &sealed).await.unwrap();
    assert_eq!(stored.size, sealed.len() as i64);
    agent
        .event(
            &lease,
            apb::job_event::Event::WorkspaceStored(apb::WorkspaceStored {
                artifact_id: stored.artifact_id.clone(),
                sha256: stored.sha256.clone(),
            }),
        )
        .await;

    let unconfirmed = s.wait_state(&run.id, pb::RunState::Unconfirmed).await;
    assert_eq!(
        states(&unconfirmed),
        vec![
            pb::RunState::Queued,
            pb::RunState::Preparing,
            pb::RunState::Initializing,
            pb::RunState::Planning,
            pb::RunState::Unconfirmed
        ]
    );
    assert_eq!(unconfirmed.delta.unwrap().added_resources, 2);
    assert_eq!(unconfirmed.changes.len(), 2);
    assert!(!unconfirmed.no_op);
    let stack = s
        .stacks(&s.admin)
        .get_stack(pb::GetStackRequest {
            stack_id: "app".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .stack
        .unwrap();
    assert_eq!(stack.state, "UNCONFIRMED");

    // Logs are stored in order with the secret masked.
    let lines = s
        .runs(&s.admin)
        .get_run_logs(pb::GetRunLogsRequest {
            run_id: run.id.clone(),
            after_seq: 0,
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .lines;
    let text: Vec<_> = lines.iter().map(|l| l.message.as_str()).collect();
    assert!(text.contains(&"terraform init"), "{text:?}");
    assert!(
        text.contains(&"password is ***, do not print it"),
        "{text:?}"
    );
    assert!(!text.iter().any(|t| t.contains("s3cr3t-value")));
    let seqs: Vec<_> = lines.iter().map(|l| l.seq).collect();
    assert_eq!(seqs, (1..=lines.len() as i64).collect::<Vec<_>>());

    // Confirm: the apply lease carries the artifact and the same data key.
    s.runs(&s.admin)
        .confirm_run(pb::ConfirmRunRequest {
            run_id: run.id.clone(),
        })
        .await
        .unwrap();
    let apply = agent.lease().await;
    assert_eq!(apply.kind(), apb::JobKind::Apply);
    assert_eq!(apply.run_id, run.id);
    assert_eq!(apply.artifact_id, stored.artifact_id);
    assert_eq!(apply.workspace_key, lease.workspace_key);
    s.wait_state(&run.id, pb::RunState::PreparingApply).await;
    let (data, sha) = agent.download(&apply).await.unwrap();
    assert_eq!(sha, stored.sha256);
    assert_eq!(decrypt(&apply.workspace_key, &data), workspace);
    // The old plan lease no longer opens the artifact.
    let mut stale = apply.clone();
    stale.lease_id = lease.lease_id.clone();
    assert_eq!(code(agent.download(&stale).await), Code::PermissionDenied);

    agent.apply_ok(&apply).await;
    let done = s.wait_state(&run.id, pb::RunState::Finished).await;
    assert_eq!(
        states(&done)[4..],
        [
            pb::RunState::Unconfirmed,
            pb::RunState::Confirmed,
            pb::RunState::PreparingApply,
            pb::RunState::Applying,
            pb::RunState::Finished
        ]
    );
    // The workspace is removed once applied.
    let artifacts = std::fs::read_dir(s.dir.path().join("artifacts"))
        .unwrap()
        .count();
    assert_eq!(artifacts, 0);
}

#[tokio::test]
async fn a_confirmed_run_whose_workspace_key_is_gone_fails_instead_of_waiting() {
    let s = TestServer::start().await;
    s.stack("app", false, SHA_A).await;
    let mut agent = TestAgent::connect(&s, 1).await;
    let run = s.trigger("app", pb::RunType::Tracked).await;
    let lease = agent.lease().await;
    agent.plan_through(&lease, &["aws_s3_bucket.a"]).await;
    let stored = agent
        .upload(&lease, &encrypt(&lease.workspace_key, b"workspace"))
        .await
        .unwrap();
    agent
        .event(
            &lease,
            apb::job_event::Event::WorkspaceStored(apb::WorkspaceStored {
                artifact_id: stored.artifact_id,
                sha256: stored.sha256,
            }),
        )
        .await;
    s.wait_state(&run.id, pb::RunState::Unconfirmed).await;
    let key = s
        .dir
        .path()
        .join("artifacts")
        .join(format!("{}.key", run.id));
    std::fs::remove_file(&key).unwrap();
    s.runs(&s.admin)
        .confirm_run(pb::ConfirmRunRequest {
            run_id: run.id.clone(),
        })
        .await
        .unwrap();
    let failed = s.wait_state(&run.id, pb::RunState::Failed).await;
    assert!(
        failed.error.contains("workspace key is gone"),
        "{}",
        failed.error
    );
    // The stack takes its next run.
    let next = s.trigger("app", pb::RunType::Tracked).await;
    assert_eq!(agent.lease().await.run_id, next.id);
}

#[tokio::test]
async fn discard_deletes_the_workspace_and_the_next_run_starts() {
    let s = TestServer::start().await;
    s.stack("app", false, SHA_A).await;
    let mut agent = TestAgent::connect(&s, 1).await;
    let run = s.trigger("app", pb::RunType::Tracked).await;
    let lease = agent.lease().await;
    agent.plan_through(&lease, &["aws_s3_bucket.a"]).await;
    let stored = agent.upload(&lease, b"sealed").await.unwrap();
    agent
        .event(
            &lease,
            apb::job_event::Event::WorkspaceStored(apb::WorkspaceStored {
                artifact_id: stored.artifact_id.clone(),
                sha256: stored.sha256,
            }),
        )
        .await;
    s.wait_state(&run.id, pb::RunState::Unconfirmed).await;
    let path = s
        .dir
        .path()
        .join("artifacts")
        .join(format!("{}.bin", stored.artifact_id));
    assert!(path.exists());
    let second = s.trigger("app", pb::RunType::Tracked).await;
    s.runs(&s.admin)
        .discard_run(pb::DiscardRunRequest {
            run_id: run.id.clone(),
        })
        .await
        .unwrap();
    assert!(!path.exists(), "discard deletes the workspace");
    let next = agent.lease().await;
    assert_eq!(next.run_id, second.id);
}

#[tokio::test]
async fn targeted_replan_and_illegal_replans() {
    let s = TestServer::start().await;
    s.stack("app", false, SHA_A).await;
    let mut agent = TestAgent::connect(&s, 1).await;
    let run = s.trigger("app", pb::RunType::Tracked).await;
    let lease = agent.lease().await;
    agent
        .plan_through(&lease, &["aws_s3_bucket.a", "aws_s3_bucket.b"])
        .await;
    let stored = agent.upload(&lease, b"sealed").await.unwrap();
    agent
        .event(
            &lease,
            apb::job_event::Event::WorkspaceStored(apb::WorkspaceStored {
                artifact_id: stored.artifact_id,
                sha256: stored.sha256,
            }),
        )
        .await;
    let before = s.wait_state(&run.id, pb::RunState::Unconfirmed).await;
    let mut rc = s.runs(&s.admin);
    let r = rc
        .replan_run(pb::ReplanRunRequest {
            run_id: run.id.clone(),
            targets: vec!["aws_s3_bucket.zzz".into()],
        })
        .await;
    let st = r.unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument);
    assert!(st.message().contains("targets[0]"));
    assert_eq!(s.get_run(&run.id).await, before, "nothing changed");
    let replanned = rc
        .replan_run(pb::ReplanRunRequest {
            run_id: run.id.clone(),
            targets: vec!["aws_s3_bucket.b".into()],
        })
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    assert_eq!(replanned.state(), pb::RunState::ReplanRequested);
    let again = agent.lease().await;
    assert_eq!(again.run_id, run.id);
    assert_eq!(again.targets, vec!["aws_s3_bucket.b".to_string()]);
    assert_eq!(again.kind(), apb::JobKind::Plan);
}

#[tokio::test]
async fn autodeploy_plans_and_applies_in_one_lease_and_no_ops_finish() {
    let s = TestServer::start().await;
    s.stack("auto", true, SHA_A).await;
    let mut agent = TestAgent::connect(&s, 1).await;
    let run = s.trigger("auto", pb::RunType::Tracked).await;
    let lease = agent.lease().await;
    assert_eq!(lease.kind(), apb::JobKind::PlanAndApply);
    // Should the server decide not to apply, the agent can keep the workspace.
    assert!(lease.upload_workspace);
    assert_eq!(lease.workspace_key.len(), 32);
    agent.plan_through(&lease, &["aws_s3_bucket.a"]).await;
    let decision = agent.proceed().await;
    assert_eq!(decision.lease_id, lease.lease_id);
    assert_eq!(decision.run_id, run.id);
    assert!(decision.apply && !decision.upload_workspace, "{decision:?}");
    assert_eq!(decision.reason, "autodeploy");
    s.wait_state(&run.id, pb::RunState::PreparingApply).await;
    agent.apply_ok(&lease).await;
    let done = s.wait_state(&run.id, pb::RunState::Finished).await;
    assert_eq!(
        states(&done),
        vec![
            pb::RunState::Queued,
            pb::RunState::Preparing,
            pb::RunState::Initializing,
            pb::RunState::Planning,
            pb::RunState::PreparingApply,
            pb::RunState::Applying,
            pb::RunState::Finished
        ]
    );
    // A no-op plan finishes straight from planning.
    let noop = s.trigger("auto", pb::RunType::Tracked).await;
    let lease = agent.lease().await;
    agent.plan_through(&lease, &[]).await;
    let decision = agent.proceed().await;
    assert!(
        !decision.apply && !decision.upload_workspace,
        "{decision:?}"
    );
    assert_eq!(decision.reason, "no changes");
    let done = s.wait_state(&noop.id, pb::RunState::Finished).await;
    assert!(done.no_op);
    assert_eq!(
        states(&done)[3..],
        [pb::RunState::Planning, pb::RunState::Finished]
    );
}

#[tokio::test]
async fn a_saved_plan_of_an_autodeploy_stack_applies_while_its_details_come() {
    let s = TestServer::start().await;
    s.stack("auto", true, SHA_A).await;
    let mut agent = TestAgent::connect(&s, 1).await;
    let run = s.trigger("auto", pb::RunType::Tracked).await;
    let lease = agent.lease().await;
    assert_eq!(lease.kind(), apb::JobKind::PlanAndApply);
    agent.phase(&lease, pb::Phase::Initializing).await;
    agent.phase(&lease, pb::Phase::Planning).await;
    // No plan policy needs the details: applying is decided on the saved plan alone.
    agent.plan_saved(&lease).await;
    let decision = agent.proceed().await;
    assert!(decision.apply && !decision.upload_workspace, "{decision:?}");
    assert_eq!(decision.reason, "autodeploy");
    let preparing = s.wait_state(&run.id, pb::RunState::PreparingApply).await;
    assert!(
        preparing
            .states_history
            .last()
            .is_some_and(|h| h.note.contains("saved plan has changes")),
        "{:?}",
        preparing.states_history
    );
    // As the agent does: the run applies, then the details arrive; they are recorded, and the
    // run stays where it is.
    agent.phase(&lease, pb::Phase::Applying).await;
    s.wait_state(&run.id, pb::RunState::Applying).await;
    agent.plan(&lease, &["aws_s3_bucket.a"]).await;
    let detailed = loop {
        let run = s.get_run(&run.id).await;
        if !run.changes.is_empty() {
            break run;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    assert_eq!(detailed.state(), pb::RunState::Applying);
    assert_eq!(detailed.delta.unwrap().added_resources, 1);
    assert!(!detailed.no_op);
    agent.apply_ok(&lease).await;
    let done = s.wait_state(&run.id, pb::RunState::Finished).await;
    assert_eq!(
        states(&done),
        vec![
            pb::RunState::Queued,
            pb::RunState::Preparing,
            pb::RunState::Initializing,
            pb::RunState::Planning,
            pb::RunState::PreparingApply,
            pb::RunState::Applying,
            pb::RunState::Finished
        ]
    );
    assert_eq!(done.changes.len(), 1);

    // A plan that fails after all fails its run (the agent stops the apply), and the stack
    // moves on.
    let run = s.trigger("auto", pb::RunType::Tracked).await;
    let lease = agent.lease().await;
    agent.phase(&lease, pb::Phase::Planning).await;
    agent.plan_saved(&lease).await;
    assert!(agent.proceed().await.apply);
    agent
        .event(
            &lease,
            apb::job_event::Event::PlanResult(cairn_proto::runner::v1::PlanResult {
                success: false,
                error: "show failed".into(),
                ..Default::default()
            }),
        )
        .await;
    let failed = s.wait_state(&run.id, pb::RunState::Failed).await;
    assert_eq!(failed.error, "planning failed: show failed");
    let next = s.trigger("auto", pb::RunType::Tracked).await;
    let lease = agent.lease().await;
    assert_eq!(lease.run_id, next.id);
    agent.plan_through(&lease, &[]).await;
    assert!(!agent.proceed().await.apply);
    s.wait_state(&next.id, pb::RunState::Finished).await;

    // A proposed run's saved plan is not applied (nor is one of a Plan lease).
    let proposed = s.trigger("auto", pb::RunType::Proposed).await;
    let lease = agent.lease().await;
    assert_eq!(lease.run_id, proposed.id);
    agent.phase(&lease, pb::Phase::Planning).await;
    agent.plan_saved(&lease).await;
    agent.plan(&lease, &["aws_s3_bucket.a"]).await;
    let finished = s.wait_state(&proposed.id, pb::RunState::Finished).await;
    assert!(!states(&finished).contains(&pb::RunState::PreparingApply));
}

#[tokio::test]
async fn proposed_runs_run_in_parallel_and_tracked_runs_one_at_a_time_in_order() {
    let s = TestServer::start().await;
    s.stack("app", false, SHA_A).await;
    let mut agent = TestAgent::connect(&s, 4).await;

    // Two proposed runs are leased together, before either finishes.
    let p1 = s.trigger("app", pb::RunType::Proposed).await;
    let p2 = s.trigger("app", pb::RunType::Proposed).await;
    let l1 = agent.lease().await;
    let l2 = agent.lease().await;
    let mut leased = vec![l1.run_id.clone(), l2.run_id.clone()];
    leased.sort();
    let mut want = vec![p1.id.clone(), p2.id.clone()];
    want.sort();
    assert_eq!(leased, want);
    assert!(!l1.upload_workspace, "proposed runs keep no workspace");
    for l in [&l1, &l2] {
        agent.plan_through(l, &["aws_s3_bucket.a"]).await;
    }
    s.wait_state(&p1.id, pb::RunState::Finished).await;
    s.wait_state(&p2.id, pb::RunState::Finished).await;

    // Tracked runs: the second waits for the first, although the agent has free slots.
    let t1 = s.trigger("app", pb::RunType::Tracked).await;
    let t2 = s.trigger("app", pb::RunType::Tracked).await;
    let first = agent.lease().await;
    assert_eq!(first.run_id, t1.id);
    // A proposed run is dispatched after blocking runs in the same pass; once its lease is
    // here, the scheduler has considered t2 and held it back.
    let p3 = s.trigger("app", pb::RunType::Proposed).await;
    let l3 = agent.lease().await;
    assert_eq!(l3.run_id, p3.id);
    assert_eq!(s.get_run(&t2.id).await.state(), pb::RunState::Queued);
    agent.plan_through(&first, &[]).await;
    s.wait_state(&t1.id, pb::RunState::Finished).await;
    let second = agent.lease().await;
    assert_eq!(second.run_id, t2.id);
}

#[tokio::test]
async fn an_expired_lease_fails_its_run_and_the_stack_moves_on() {
    let s = TestServer::start_with(Duration::from_millis(800)).await;
    s.stack("app", false, SHA_A).await;
    let mut agent = TestAgent::connect(&s, 1).await;
    let r1 = s.trigger("app", pb::RunType::Tracked).await;
    let r2 = s.trigger("app", pb::RunType::Tracked).await;
    let lease = agent.lease().await;
    assert_eq!(lease.run_id, r1.id);
    // The agent goes silent: no heartbeats.
    let failed = s.wait_state(&r1.id, pb::RunState::Failed).await;
    let last = failed.states_history.last().unwrap();
    assert_eq!(last.note, "worker lost: lease expired");
    assert_eq!(failed.error, "worker lost: lease expired");
    match agent.recv().await {
        apb::session_response::Message::Cancel(c) => assert_eq!(c.lease_id, lease.lease_id),
        other => panic!("expected CancelJob, got {other:?}"),
    }
    let next = agent.lease().await;
    assert_eq!(next.run_id, r2.id);
    // Late events of the expired lease are refused with a cancel and change nothing.
    agent.plan_through(&lease, &[]).await;
    match agent.recv().await {
        apb::session_response::Message::Cancel(c) => assert_eq!(c.lease_id, lease.lease_id),
        other => panic!("expected CancelJob, got {other:?}"),
    }
    assert_eq!(s.get_run(&r1.id).await.state(), pb::RunState::Failed);
}

#[tokio::test]
async fn heartbeats_keep_a_lease_alive() {
    let s = TestServer::start_with(Duration::from_secs(1)).await;
    s.stack("app", false, SHA_A).await;
    let mut agent = TestAgent::connect(&s, 1).await;
    let run = s.trigger("app", pb::RunType::Tracked).await;
    let lease = agent.lease().await;
    // Several lease timeouts pass while the agent heartbeats; the run stays with it.
    for _ in 0..25 {
        agent.heartbeat(vec![lease.lease_id.clone()]).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(s.get_run(&run.id).await.state(), pb::RunState::Preparing);
    agent.plan_through(&lease, &[]).await;
    s.wait_state(&run.id, pb::RunState::Finished).await;
}

#[tokio::test]
async fn failed_and_stopped_jobs() {
    let s = TestServer::start().await;
    s.stack("app", false, SHA_A).await;
    let mut agent = TestAgent::connect(&s, 1).await;
    let r1 = s.trigger("app", pb::RunType::Tracked).await;
    let lease = agent.lease().await;
    agent
        .event(
            &lease,
            apb::job_event::Event::Failed(apb::JobFailed {
                reason: "git checkout failed".into(),
            }),
        )
        .await;
    let failed = s.wait_state(&r1.id, pb::RunState::Failed).await;
    assert_eq!(failed.error, "git checkout failed");

    let r2 = s.trigger("app", pb::RunType::Tracked).await;
    let lease = agent.lease().await;
    assert_eq!(lease.run_id, r2.id);
    agent.phase(&lease, pb::Phase::Planning).await;
    s.wait_state(&r2.id, pb::RunState::Planning).await;
    let stopped = s
        .runs(&s.admin)
        .stop_run(pb::StopRunRequest {
            run_id: r2.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    assert_eq!(stopped.state(), pb::RunState::Stopped);
    match agent.recv().await {
        apb::session_response::Message::Cancel(c) => {
            assert_eq!(c.lease_id, lease.lease_id);
            assert_eq!(c.run_id, r2.id);
        }
        other => panic!("expected CancelJob, got {other:?}"),
    }
    agent
        .event(&lease, apb::job_event::Event::Stopped(apb::JobStopped {}))
        .await;
    let r3 = s.trigger("app", pb::RunType::Tracked).await;
    assert_eq!(agent.lease().await.run_id, r3.id);
    assert_eq!(s.get_run(&r2.id).await.state(), pb::RunState::Stopped);
}

#[tokio::test]
async fn watch_run_streams_state_and_logs_until_the_end() {
    let s = TestServer::start().await;
    s.stack("app", false, SHA_A).await;
    let run = s.trigger("app", pb::RunType::Proposed).await;
    let mut stream = s
        .runs(&s.admin)
        .watch_run(pb::WatchRunRequest {
            run_id: run.id.clone(),
            after_seq: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    match first.event {
        Some(pb::watch_run_response::Event::Run(r)) => assert_eq!(r.state(), pb::RunState::Queued),
        other => panic!("expected the run first, got {other:?}"),
    }
    let mut agent = TestAgent::connect(&s, 1).await;
    let lease = agent.lease().await;
    agent.phase(&lease, pb::Phase::Initializing).await;
    agent.log(&lease, "line one").await;
    agent.phase(&lease, pb::Phase::Planning).await;
    agent.log(&lease, "line two").await;
    agent.plan(&lease, &["aws_s3_bucket.a"]).await;

    let mut seen_states = vec![pb::RunState::Queued];
    let mut logs = Vec::new();
    while let Some(m) = stream.message().await.unwrap() {
        match m.event.unwrap() {
            pb::watch_run_response::Event::Run(r) => seen_states.push(r.state()),
            pb::watch_run_response::Event::Log(l) => logs.push(l),
        }
    }
    assert_eq!(
        seen_states,
        vec![
            pb::RunState::Queued,
            pb::RunState::Preparing,
            pb::RunState::Initializing,
            pb::RunState::Planning,
            pb::RunState::Finished
        ]
    );
    let msgs: Vec<_> = logs.iter().map(|l| l.message.as_str()).collect();
    assert!(
        msgs.contains(&"line one") && msgs.contains(&"line two"),
        "{msgs:?}"
    );
    let seqs: Vec<_> = logs.iter().map(|l| l.seq).collect();
    let mut sorted = seqs.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(seqs, sorted, "log lines in order, each once");

    // Watching a finished run replays it and ends.
    let mut again = s
        .runs(&s.admin)
        .watch_run(pb::WatchRunRequest {
            run_id: run.id.clone(),
            after_seq: 1,
        })
        .await
        .unwrap()
        .into_inner();
    let mut n_logs = 0;
    let mut last_state = None;
    while let Some(m) = again.message().await.unwrap() {
        match m.event.unwrap() {
            pb::watch_run_response::Event::Run(r) => last_state = Some(r.state()),
            pb::watch_run_response::Event::Log(l) => {
                assert!(l.seq > 1);
                n_logs += 1;
            }
        }
    }
    assert_eq!(last_state, Some(pb::RunState::Finished));
    assert_eq!(n_logs, logs.len() - 1);
}

#[tokio::test]
async fn workers_are_listed_with_their_runs() {
    let s = TestServer::start().await;
    s.stack("app", false, SHA_A).await;
    let mut agent = TestAgent::connect(&s, 2).await;
    let run = s.trigger("app", pb::RunType::Tracked).await;
    let _lease = agent.lease().await;
    let workers = s
        .pools(&s.admin)
        .list_workers(pb::ListWorkersRequest {
            pool_id: "default".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .workers;
    let w = workers.iter().find(|w| w.id == agent.worker_id).unwrap();
    assert!(w.connected);
    assert_eq!(w.max_jobs, 2);
    assert_eq!(w.run_ids, vec![run.id.clone()]);
    // A second pool, with its own token shown once; its agents do not take default-pool runs.
    let created = s
        .pools(&s.admin)
        .create_worker_pool(pb::CreateWorkerPoolRequest {
            id: "gpu".into(),
            name: "GPU".into(),
            labels: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(created.token.starts_with("cairnpool_"));
    let pools = s
        .pools(&s.admin)
        .list_worker_pools(pb::ListWorkerPoolsRequest { page: None })
        .await
        .unwrap()
        .into_inner()
        .pools;
    let ids: Vec<_> = pools.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, vec!["default", "gpu"]);
    let gpu_agent = TestAgent::try_connect(&s, &created.token, 1).await.unwrap();
    assert!(!gpu_agent.worker_id.is_empty());
}

/// Turns autodeploy off on stack `id` (created by `TestServer::stack`).
async fn set_autodeploy(s: &TestServer, id: &str, autodeploy: bool) {
    s.stacks(&s.admin)
        .update_stack(pb::UpdateStackRequest {
            stack: Some(stack_input(id, autodeploy)),
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn autodeploy_run_that_needs_confirmation_keeps_its_workspace_for_a_later_apply() {
    let s = TestServer::start().await;
    s.stack("auto", true, SHA_A).await;
    let mut agent = TestAgent::connect(&s, 1).await;
    let run = s.trigger("auto", pb::RunType::Tracked).await;
    let lease = agent.lease().await;
    assert_eq!(lease.kind(), apb::JobKind::PlanAndApply);
    agent.phase(&lease, pb::Phase::Planning).await;
    s.wait_state(&run.id, pb::RunState::Planning).await;
    // Decided after the plan, not at leasing: autodeploy is off by the time the plan is in,
    // so a saved plan is not applied before its details either.
    set_autodeploy(&s, "auto", false).await;
    agent.plan_saved(&lease).await;
    agent
        .plan(&lease, &["aws_s3_bucket.a", "aws_s3_bucket.b"])
        .await;
    let decision = agent.proceed().await;
    assert!(!decision.apply, "{decision:?}");
    assert!(decision.upload_workspace, "{decision:?}");
    assert_eq!(decision.reason, "the plan needs confirmation");
    // Not confirmable before its workspace is stored.
    assert_eq!(s.get_run(&run.id).await.state(), pb::RunState::Planning);

    let workspace = b"plan-and-apply work tree".repeat(50);
    let sealed = encrypt(&lease.workspace_key, &workspace);
    let stored = agent.upload(&lease, &sealed).await.unwrap();
    agent
        .event(
            &lease,
            apb::job_event::Event::WorkspaceStored(apb::WorkspaceStored {
                artifact_id: stored.artifact_id.clone(),
                sha256: stored.sha256.clone(),
            }),
        )
        .await;
    let unconfirmed = s.wait_state(&run.id, pb::RunState::Unconfirmed).await;
    assert_eq!(unconfirmed.changes.len(), 2);
    assert!(s
        .dir
        .path()
        .join("artifacts")
        .join(format!("{}.bin", stored.artifact_id))
        .exists());
    assert_eq!(
        states(&unconfirmed),
        vec![
            pb::RunState::Queued,
            pb::RunState::Preparing,
            pb::RunState::Initializing,
            pb::RunState::Planning,
            pb::RunState::Unconfirmed
        ]
    );

    s.runs(&s.admin)
        .confirm_run(pb::ConfirmRunRequest {
            run_id: run.id.clone(),
        })
        .await
        .unwrap();
    let apply = agent.lease().await;
    assert_eq!(apply.kind(), apb::JobKind::Apply);
    assert_eq!(apply.artifact_id, stored.artifact_id);
    assert_eq!(apply.workspace_key, lease.workspace_key);
    let (data, _) = agent.download(&apply).await.unwrap();
    assert_eq!(decrypt(&apply.workspace_key, &data), workspace);
    agent.apply_ok(&apply).await;
    s.wait_state(&run.id, pb::RunState::Finished).await;
}

#[tokio::test]
async fn a_stop_before_the_decision_means_no_apply_and_no_kept_workspace() {
    let s = TestServer::start().await;
    s.stack("auto", true, SHA_A).await;
    let mut agent = TestAgent::connect(&s, 1).await;

    // The user stops the run while its plan result is on the way.
    let run = s.trigger("auto", pb::RunType::Tracked).await;
    let lease = agent.lease().await;
    agent.phase(&lease, pb::Phase::Planning).await;
    s.wait_state(&run.id, pb::RunState::Planning).await;
    s.runs(&s.admin)
        .stop_run(pb::StopRunRequest {
            run_id: run.id.clone(),
        })
        .await
        .unwrap();
    match agent.recv().await {
        apb::session_response::Message::Cancel(c) => assert_eq!(c.lease_id, lease.lease_id),
        other => panic!("expected CancelJob, got {other:?}"),
    }
    agent.plan(&lease, &["aws_s3_bucket.a"]).await;
    let decision = agent.proceed().await;
    assert!(
        !decision.apply && !decision.upload_workspace,
        "{decision:?}"
    );
    assert_eq!(decision.reason, "the run is STOPPED");
    let stopped = s.get_run(&run.id).await;
    assert_eq!(stopped.state(), pb::RunState::Stopped);
    assert!(!states(&stopped).contains(&pb::RunState::PreparingApply));

    // Stopped while the agent keeps the workspace: the upload that still lands is deleted.
    let run = s.trigger("auto", pb::RunType::Tracked).await;
    let lease = agent.lease().await;
    assert_eq!(lease.run_id, run.id, "the stopped run's lease ended");
    agent.phase(&lease, pb::Phase::Planning).await;
    s.wait_state(&run.id, pb::RunState::Planning).await;
    set_autodeploy(&s, "auto", false).await;
    agent.plan(&lease, &["aws_s3_bucket.a"]).await;
    assert!(agent.proceed().await.upload_workspace);
    s.runs(&s.admin)
        .stop_run(pb::StopRunRequest {
            run_id: run.id.clone(),
        })
        .await
        .unwrap();
    let stored = agent.upload(&lease, b"sealed").await.unwrap();
    agent
        .event(
            &lease,
            apb::job_event::Event::WorkspaceStored(apb::WorkspaceStored {
                artifact_id: stored.artifact_id.clone(),
                sha256: stored.sha256,
            }),
        )
        .await;
    // The lease ends with that event: the stack takes its next run.
    let next = s.trigger("auto", pb::RunType::Tracked).await;
    assert!(matches!(
        agent.recv().await,
        apb::session_response::Message::Cancel(c) if c.lease_id == lease.lease_id
    ));
    assert_eq!(agent.lease().await.run_id, next.id);
    assert_eq!(s.get_run(&run.id).await.state(), pb::RunState::Stopped);
    let path = s
        .dir
        .path()
        .join("artifacts")
        .join(format!("{}.bin", stored.artifact_id));
    assert!(!path.exists(), "the workspace of a stopped run is deleted");
}

#[tokio::test]
async fn a_reconnected_agent_re_adopts_its_leases() {
    let s = TestServer::start().await;
    s.stack("app", false, SHA_A).await;
    s.stack("auto", true, SHA_B).await;
    let mut first = TestAgent::connect(&s, 2).await;
    let planned = s.trigger("app", pb::RunType::Tracked).await;
    let plan = first.lease().await;
    let auto = s.trigger("auto", pb::RunType::Tracked).await;
    let both = first.lease().await;
    first.phase(&plan, pb::Phase::Initializing).await;
    // The autodeploy plan is in, but its decision is lost with the stream.
    first.plan_through(&both, &["aws_s3_bucket.a"]).await;
    s.wait_state(&auto.id, pb::RunState::PreparingApply).await;
    s.wait_state(&planned.id, pb::RunState::Initializing).await;
    drop(first);

    // Another worker of the pool cannot take them over.
    let mut other = TestAgent::try_connect_as(&s, &s.pool_token, "other-agent", 2)
        .await
        .unwrap();
    other.heartbeat(vec![plan.lease_id.clone()]).await;
    other.phase(&plan, pb::Phase::Planning).await;
    match other.recv().await {
        apb::session_response::Message::Cancel(c) => {
            assert_eq!(c.lease_id, plan.lease_id);
            assert_eq!(c.reason, "lease unknown or expired");
        }
        other => panic!("expected CancelJob, got {other:?}"),
    }
    assert_eq!(
        s.get_run(&planned.id).await.state(),
        pb::RunState::Initializing
    );

    // The same worker, back on a new session, lists its jobs in its first heartbeat.
    let mut second = TestAgent::connect(&s, 2).await;
    second
        .heartbeat(vec![plan.lease_id.clone(), both.lease_id.clone()])
        .await;
    let decision = second.proceed().await;
    assert_eq!(decision.lease_id, both.lease_id);
    assert!(decision.apply, "the decision is sent again: {decision:?}");
    second.apply_ok(&both).await;
    s.wait_state(&auto.id, pb::RunState::Finished).await;

    second.phase(&plan, pb::Phase::Planning).await;
    second.plan(&plan, &["aws_s3_bucket.a"]).await;
    // The stored lease names the new worker: its pool may upload for it.
    let stored = second.upload(&plan, b"sealed").await.unwrap();
    second
        .event(
            &plan,
            apb::job_event::Event::WorkspaceStored(apb::WorkspaceStored {
                artifact_id: stored.artifact_id.clone(),
                sha256: stored.sha256,
            }),
        )
        .await;
    s.wait_state(&planned.id, pb::RunState::Unconfirmed).await;
    assert!(s
        .dir
        .path()
        .join("artifacts")
        .join(format!("{}.bin", stored.artifact_id))
        .exists());
    let lines = s
        .runs(&s.admin)
        .get_run_logs(pb::GetRunLogsRequest {
            run_id: planned.id.clone(),
            after_seq: 0,
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .lines;
    assert!(
        lines
            .iter()
            .any(|l| l.message == "worker test-agent reconnected and goes on with the job"),
        "{lines:?}"
    );
}

#[tokio::test]
async fn a_lease_nobody_re_adopts_expires_and_is_not_re_adopted_later() {
    let s = TestServer::start_with(Duration::from_millis(800)).await;
    s.stack("app", false, SHA_A).await;
    let first = TestAgent::connect(&s, 1).await;
    let run = s.trigger("app", pb::RunType::Tracked).await;
    let mut first = first;
    let lease = first.lease().await;
    drop(first);
    let failed = s.wait_state(&run.id, pb::RunState::Failed).await;
    assert_eq!(failed.error, "worker lost: lease expired");

    let mut late = TestAgent::connect(&s, 1).await;
    late.heartbeat(vec![lease.lease_id.clone()]).await;
    late.plan_through(&lease, &[]).await;
    match late.recv().await {
        apb::session_response::Message::Cancel(c) => assert_eq!(c.lease_id, lease.lease_id),
        other => panic!("expected CancelJob, got {other:?}"),
    }
    assert_eq!(s.get_run(&run.id).await.state(), pb::RunState::Failed);
}

#[tokio::test]
async fn leases_are_re_adopted_after_a_control_plane_restart() {
    let s = TestServer::start().await;
    s.stack("app", false, SHA_A).await;
    s.stack("auto", true, SHA_B).await;
    let mut first = TestAgent::connect(&s, 2).await;
    let planned = s.trigger("app", pb::RunType::Tracked).await;
    let plan = first.lease().await;
    let auto = s.trigger("auto", pb::RunType::Tracked).await;
    let both = first.lease().await;
    first.phase(&plan, pb::Phase::Initializing).await;
    first.plan_through(&both, &["aws_s3_bucket.a"]).await;
    assert!(first.proceed().await.apply);
    s.wait_state(&auto.id, pb::RunState::PreparingApply).await;
    s.wait_state(&planned.id, pb::RunState::Initializing).await;

    // Nothing of the leases is in the new process's memory; the store still has them.
    let s = s.restart(Duration::from_secs(30)).await;
    drop(first);
    let mut second = TestAgent::connect(&s, 2).await;
    second
        .heartbeat(vec![plan.lease_id.clone(), both.lease_id.clone()])
        .await;
    // The autodeploy run is past its plan: it was told to apply, and is told again.
    let decision = second.proceed().await;
    assert_eq!(decision.lease_id, both.lease_id);
    assert!(decision.apply, "{decision:?}");
    second.apply_ok(&both).await;
    s.wait_state(&auto.id, pb::RunState::Finished).await;

    second.phase(&plan, pb::Phase::Planning).await;
    second.plan(&plan, &["aws_s3_bucket.a"]).await;
    let stored = second.upload(&plan, b"sealed").await.unwrap();
    second
        .event(
            &plan,
            apb::job_event::Event::WorkspaceStored(apb::WorkspaceStored {
                artifact_id: stored.artifact_id.clone(),
                sha256: stored.sha256,
            }),
        )
        .await;
    s.wait_state(&planned.id, pb::RunState::Unconfirmed).await;
}

const PLAN_POLICY: &str = r#"package spacelift
deny["no forbidden buckets"] {
  input.spacelift.run.changes[_].entity.address == "aws_s3_bucket.forbidden"
}
warn["buckets cost money"] {
  input.spacelift.run.changes[_].entity.type == "aws_s3_bucket"
}
"#;

#[tokio::test]
async fn plan_policies_decide_whether_an_autodeploy_plan_is_applied() {
    let s = TestServer::start().await;
    s.stack("auto", true, SHA_A).await;
    s.policies(&s.admin)
        .create_policy(pb::CreatePolicyRequest {
            policy: Some(pb::Policy {
                id: "buckets".into(),
                name: "Buckets".into(),
                r#type: pb::PolicyType::Plan as i32,
                body: PLAN_POLICY.into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    s.policies(&s.admin)
        .attach_policy(pb::AttachPolicyRequest {
            policy_id: "buckets".into(),
            stack_id: "auto".into(),
        })
        .await
        .unwrap();
    let mut agent = TestAgent::connect(&s, 1).await;

    // A warning stops autodeploy: the workspace is kept and the run waits for confirmation.
    // A plan policy needs the plan's details, so a saved plan waits for them.
    let run = s.trigger("auto", pb::RunType::Tracked).await;
    let lease = agent.lease().await;
    assert_eq!(lease.kind(), apb::JobKind::PlanAndApply);
    agent.phase(&lease, pb::Phase::Planning).await;
    agent.plan_saved(&lease).await;
    agent.plan_through(&lease, &["aws_s3_bucket.a"]).await;
    let decision = agent.proceed().await;
    assert!(!decision.apply && decision.upload_workspace, "{decision:?}");
    let stored = agent.upload(&lease, b"sealed").await.unwrap();
    agent
        .event(
            &lease,
            apb::job_event::Event::WorkspaceStored(apb::WorkspaceStored {
                artifact_id: stored.artifact_id.clone(),
                sha256: stored.sha256,
            }),
        )
        .await;
    let waiting = s.wait_state(&run.id, pb::RunState::Unconfirmed).await;
    assert_eq!(
        waiting.policy_warnings,
        vec!["buckets cost money".to_string()]
    );
    assert!(!states(&waiting).contains(&pb::RunState::PreparingApply));
    s.runs(&s.admin)
        .confirm_run(pb::ConfirmRunRequest {
            run_id: run.id.clone(),
        })
        .await
        .unwrap();
    let apply = agent.lease().await;
    assert_eq!(apply.kind(), apb::JobKind::Apply);
    assert_eq!(apply.artifact_id, stored.artifact_id);
    agent.apply_ok(&apply).await;
    s.wait_state(&run.id, pb::RunState::Finished).await;

    // A deny fails the run: nothing is applied or kept.
    let run = s.trigger("auto", pb::RunType::Tracked).await;
    let lease = agent.lease().await;
    agent
        .plan_through(&lease, &["aws_s3_bucket.forbidden"])
        .await;
    let decision = agent.proceed().await;
    assert!(
        !decision.apply && !decision.upload_workspace,
        "{decision:?}"
    );
    assert_eq!(decision.reason, "the run is FAILED");
    let failed = s.wait_state(&run.id, pb::RunState::Failed).await;
    assert_eq!(
        failed.policy_denies,
        vec!["no forbidden buckets".to_string()]
    );
}
