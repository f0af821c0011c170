//! The real agent against an in-test control plane, real git repositories and a real plugin
//! process (`cairn-runner-testecho`).

mod support;

use std::time::Duration;

use cairn_proto::agent::v1::{job_event, JobKind};
use cairn_proto::v1::Phase;
use support::{config, lease, make_repo, wait_until, Agent, Plane, Tamper};

fn phases(events: &[job_event::Event]) -> Vec<Phase> {
    events
        .iter()
        .filter_map(|e| match e {
            job_event::Event::Phase(p) => Phase::try_from(p.phase).ok(),
            _ => None,
        })
        .collect()
}

fn position(events: &[job_event::Event], pred: impl Fn(&job_event::Event) -> bool) -> usize {
    events.iter().position(pred).expect("event present")
}

#[tokio::test]
async fn plan_upload_then_apply_restores_the_planned_workspace() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, sha) = make_repo(tmp.path());
    let plane = Plane::start(None).await;
    let work = tmp.path().join("work");
    let agent = Agent::spawn(config(&plane, &work));

    let mut plan = lease("plan-1", "run-1", JobKind::Plan, &repo, &sha);
    plan.upload_workspace = true;
    plane.send_lease(plan).await;
    let job_event::Event::PlanResult(result) = plane.wait_end("plan-1", JobKind::Plan).await else {
        panic!("plan failed: {:?}", plane.events("plan-1"));
    };
    assert!(result.success, "{result:?}");
    assert!(!result.no_op);
    assert_eq!(result.delta.unwrap().added_resources, 2);
    let addresses: Vec<_> = result
        .changes
        .iter()
        .map(|c| c.entity.as_ref().unwrap().address.clone())
        .collect();
    assert_eq!(
        addresses,
        ["testecho_file.main.tf", "testecho_file.variables.tf"]
    );

    let events = plane.events("plan-1");
    assert_eq!(
        phases(&events),
        [Phase::Preparing, Phase::Initializing, Phase::Planning]
    );
    let stored_at = position(&events, |e| {
        matches!(e, job_event::Event::WorkspaceStored(_))
    });
    let result_at = position(&events, |e| matches!(e, job_event::Event::PlanResult(_)));
    assert!(
        stored_at < result_at,
        "workspace stored before the plan result"
    );
    let job_event::Event::WorkspaceStored(stored) = &events[stored_at] else {
        unreachable!()
    };
    let logs = plane.logs("plan-1");
    let seqs: Vec<i64> = logs.iter().map(|l| l.seq).collect();
    assert_eq!(seqs, (1..=logs.len() as i64).collect::<Vec<_>>());
    assert!(logs
        .iter()
        .any(|l| l.message.contains(&format!("Checked out commit {sha}"))));
    // The plugin's Describe runs beside the checkout and the plan; its answer is logged once.
    let described: Vec<&str> = logs
        .iter()
        .filter(|l| l.message.starts_with("Runner plugin "))
        .map(|l| l.message.as_str())
        .collect();
    assert_eq!(
        described,
        [format!(
            "Runner plugin testecho {}",
            env!("CARGO_PKG_VERSION")
        )]
    );
    assert!(logs
        .iter()
        .any(|l| l.message.starts_with("+ testecho_file.main.tf (")));

    {
        let state = plane.state.lock().unwrap();
        let blob = &state.artifacts[&stored.artifact_id];
        // Sealed: nothing of the work tree is readable by the control plane.
        assert!(!blob.windows(8).any(|w| w == b"resource"));
        assert_eq!(state.registrations[0].name, "test-agent");
        assert_eq!(state.registrations[0].max_jobs, 2);
        assert!(state.registrations[0]
            .vendors
            .contains(&"testecho".to_owned()));
    }

    let mut apply = lease("apply-1", "run-1", JobKind::Apply, &repo, &sha);
    apply.artifact_id = stored.artifact_id.clone();
    plane.send_lease(apply).await;
    let job_event::Event::ApplyResult(applied) = plane.wait_end("apply-1", JobKind::Apply).await
    else {
        panic!("apply failed: {:?}", plane.events("apply-1"));
    };
    assert!(applied.success, "{applied:?}");
    assert_eq!(applied.outputs_json, r#"{"applied":2}"#);
    assert_eq!(
        phases(&plane.events("apply-1")),
        [Phase::Preparing, Phase::Applying]
    );
    assert!(plane
        .logs("apply-1")
        .iter()
        .any(|l| l.message == "applied testecho_file.variables.tf"));
    assert_eq!(
        plane
            .logs("apply-1")
            .iter()
            .filter(|l| l.message.starts_with("Runner plugin testecho"))
            .count(),
        1
    );
    // The restored tree holds the plan file written while planning, next to the code.
    let restored = work.join("jobs/apply-1/tree/infra");
    assert_eq!(
        std::fs::read_to_string(restored.join(".testecho-plan")).unwrap(),
        "main.tf\nvariables.tf\n"
    );
    assert!(restored.join(".testecho-applied").exists());

    // A workspace changed in storage never reaches the plugin.
    plane.state.lock().unwrap().tamper = Tamper::Bytes;
    let mut apply = lease("apply-2", "run-1", JobKind::Apply, &repo, &sha);
    apply.artifact_id = stored.artifact_id.clone();
    plane.send_lease(apply).await;
    let reason = plane.wait_failed("apply-2").await;
    assert!(reason.contains("is corrupt: sha256"), "{reason}");

    plane.state.lock().unwrap().tamper = Tamper::BytesAndDigest;
    let mut apply = lease("apply-3", "run-1", JobKind::Apply, &repo, &sha);
    apply.artifact_id = stored.artifact_id.clone();
    plane.send_lease(apply).await;
    let reason = plane.wait_failed("apply-3").await;
    assert!(reason.contains("failed authentication"), "{reason}");

    // The key is bound to its run: another run cannot restore this workspace.
    plane.state.lock().unwrap().tamper = Tamper::None;
    let mut apply = lease("apply-4", "run-other", JobKind::Apply, &repo, &sha);
    apply.artifact_id = stored.artifact_id.clone();
    plane.send_lease(apply).await;
    let reason = plane.wait_failed("apply-4").await;
    assert!(reason.contains("failed authentication"), "{reason}");

    agent.shutdown().await;
}

#[tokio::test]
async fn plan_and_apply_runs_in_one_work_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, sha) = make_repo(tmp.path());
    let plane = Plane::start(None).await;
    let agent = Agent::spawn(config(&plane, &tmp.path().join("work")));

    // Without a commit the branch head is used.
    plane
        .send_lease(lease("both-1", "run-2", JobKind::PlanAndApply, &repo, ""))
        .await;
    plane
        .wait_event("both-1", "the plan result", |e| match e {
            job_event::Event::PlanResult(r) => Some(r.success),
            _ => None,
        })
        .await;
    plane
        .wait_event("both-1", "the wait for the decision", |e| match e {
            job_event::Event::Log(l) if l.message.starts_with("Waiting for the control plane") => {
                Some(())
            }
            _ => None,
        })
        .await;
    // Without the control plane's decision nothing is applied.
    assert_eq!(
        phases(&plane.events("both-1")),
        [Phase::Preparing, Phase::Initializing, Phase::Planning]
    );
    plane.proceed("both-1", true, false).await;
    let end = plane.wait_end("both-1", JobKind::PlanAndApply).await;
    let job_event::Event::ApplyResult(applied) = end else {
        panic!("{:?}", plane.events("both-1"));
    };
    assert!(applied.success);
    let events = plane.events("both-1");
    assert_eq!(
        phases(&events),
        [
            Phase::Preparing,
            Phase::Initializing,
            Phase::Planning,
            Phase::Applying
        ]
    );
    assert!(events
        .iter()
        .any(|e| matches!(e, job_event::Event::PlanResult(r) if r.success)));
    assert!(!events
        .iter()
        .any(|e| matches!(e, job_event::Event::WorkspaceStored(_))));
    assert!(plane
        .logs("both-1")
        .iter()
        .any(|l| l.message.contains(&sha)));
    agent.shutdown().await;
}

#[tokio::test]
async fn a_saved_plan_applies_as_soon_as_the_control_plane_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, sha) = make_repo(tmp.path());
    let plane = Plane::start(None).await;
    let agent = Agent::spawn(config(&plane, &tmp.path().join("work")));

    // The plugin holds its result back until the apply has begun: only an agent that applies
    // beside the rest of the plan gets through.
    let mut both = lease("early-1", "run-e", JobKind::PlanAndApply, &repo, &sha);
    both.env.insert("TESTECHO_SAVED".into(), "wait".into());
    plane.send_lease(both).await;
    plane
        .wait_event("early-1", "the saved plan", |e| {
            matches!(e, job_event::Event::PlanSaved(_)).then_some(())
        })
        .await;
    plane.proceed("early-1", true, false).await;
    let job_event::Event::ApplyResult(applied) =
        plane.wait_end("early-1", JobKind::PlanAndApply).await
    else {
        panic!("{:?}", plane.events("early-1"));
    };
    assert!(applied.success, "{applied:?}");
    let events = plane.events("early-1");
    let saved = position(&events, |e| matches!(e, job_event::Event::PlanSaved(_)));
    let applying = position(
        &events,
        |e| matches!(e, job_event::Event::Phase(p) if p.phase == Phase::Applying as i32),
    );
    let planned = position(
        &events,
        |e| matches!(e, job_event::Event::PlanResult(r) if r.success),
    );
    let result = position(&events, |e| matches!(e, job_event::Event::ApplyResult(_)));
    // The run applies from the decision on; the plan result still comes before anything the
    // apply reports.
    assert!(
        saved < applying && applying < planned && planned < result,
        "{events:?}"
    );
    assert!(plane
        .logs("early-1")
        .iter()
        .any(|l| l.message == "Applying the plan while its details are read (decided by a test)"));
    assert!(!plane
        .logs("early-1")
        .iter()
        .any(|l| l.message.starts_with("Waiting for the control plane")));

    // Without a decision before the result, the job waits for it as usual.
    let mut both = lease("early-2", "run-f", JobKind::PlanAndApply, &repo, &sha);
    both.env.insert("TESTECHO_SAVED".into(), "send".into());
    plane.send_lease(both).await;
    plane
        .wait_event("early-2", "the wait for the decision", |e| match e {
            job_event::Event::Log(l) if l.message.starts_with("Waiting for the control plane") => {
                Some(())
            }
            _ => None,
        })
        .await;
    plane.proceed("early-2", false, false).await;
    plane.wait_released("early-2").await;
    assert!(!plane
        .events("early-2")
        .iter()
        .any(|e| matches!(e, job_event::Event::ApplyResult(_))));
    agent.shutdown().await;
}

#[tokio::test]
async fn a_plan_that_fails_after_its_apply_began_stops_the_apply() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, sha) = make_repo(tmp.path());
    let plane = Plane::start(None).await;
    let work = tmp.path().join("work");
    let agent = Agent::spawn(config(&plane, &work));

    let mut both = lease("late-1", "run-g", JobKind::PlanAndApply, &repo, &sha);
    both.env.insert("TESTECHO_SAVED".into(), "fail".into());
    plane.send_lease(both).await;
    plane
        .wait_event("late-1", "the saved plan", |e| {
            matches!(e, job_event::Event::PlanSaved(_)).then_some(())
        })
        .await;
    plane.proceed("late-1", true, false).await;
    let failed = plane
        .wait_event("late-1", "the plan result", |e| match e {
            job_event::Event::PlanResult(r) => Some(r.clone()),
            _ => None,
        })
        .await;
    assert!(!failed.success);
    assert_eq!(failed.error, "the plan's details could not be read");
    plane.wait_released("late-1").await;
    assert!(plane
        .logs("late-1")
        .iter()
        .any(|l| l.message.contains("stopping the apply")));
    // The apply's vendor process is gone.
    let pid_file = work.join("jobs/late-1/tree/infra/.testecho-apply-pid");
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let proc_dir = std::path::PathBuf::from(format!("/proc/{}", pid.trim()));
    wait_until("the apply's vendor process to end", || async {
        (!proc_dir.exists()).then_some(())
    })
    .await;
    assert!(!plane
        .events("late-1")
        .iter()
        .any(|e| matches!(e, job_event::Event::ApplyResult(_))));
    agent.shutdown().await;
}

#[tokio::test]
async fn plan_and_apply_without_apply_uploads_when_asked_and_the_workspace_applies_later() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, sha) = make_repo(tmp.path());
    let plane = Plane::start(None).await;
    let work = tmp.path().join("work");
    let agent = Agent::spawn(config(&plane, &work));

    // The run now needs confirmation: upload, report workspace_stored, end without applying.
    let mut both = lease("hold-1", "run-h", JobKind::PlanAndApply, &repo, &sha);
    both.upload_workspace = true;
    plane.send_lease(both).await;
    plane
        .wait_event("hold-1", "the plan result", |e| match e {
            job_event::Event::PlanResult(r) if r.success => Some(()),
            _ => None,
        })
        .await;
    plane.proceed("hold-1", false, true).await;
    let stored = plane
        .wait_event("hold-1", "the stored workspace", |e| match e {
            job_event::Event::WorkspaceStored(w) => Some(w.clone()),
            _ => None,
        })
        .await;
    plane.wait_released("hold-1").await;
    let events = plane.events("hold-1");
    assert!(
        !events.iter().any(|e| matches!(
            e,
            job_event::Event::ApplyResult(_) | job_event::Event::Failed(_)
        )),
        "{events:?}"
    );
    assert_eq!(
        phases(&events),
        [Phase::Preparing, Phase::Initializing, Phase::Planning]
    );
    let result_at = position(&events, |e| matches!(e, job_event::Event::PlanResult(_)));
    let stored_at = position(&events, |e| {
        matches!(e, job_event::Event::WorkspaceStored(_))
    });
    assert!(
        result_at < stored_at,
        "the decision follows the plan result"
    );
    assert!(!work
        .join("jobs/hold-1/tree/infra/.testecho-applied")
        .exists());

    // Confirmed later: an APPLY lease restores that workspace and applies the same plan.
    let mut apply = lease("hold-apply", "run-h", JobKind::Apply, &repo, &sha);
    apply.artifact_id = stored.artifact_id;
    plane.send_lease(apply).await;
    let job_event::Event::ApplyResult(applied) = plane.wait_end("hold-apply", JobKind::Apply).await
    else {
        panic!("{:?}", plane.events("hold-apply"));
    };
    assert!(applied.success, "{applied:?}");
    assert_eq!(applied.outputs_json, r#"{"applied":2}"#);

    // Not applying and nothing to keep (denied, stopped): the job just ends.
    plane
        .send_lease(lease("drop-1", "run-d", JobKind::PlanAndApply, &repo, &sha))
        .await;
    plane
        .wait_event("drop-1", "the plan result", |e| match e {
            job_event::Event::PlanResult(r) if r.success => Some(()),
            _ => None,
        })
        .await;
    plane.proceed("drop-1", false, false).await;
    plane.wait_released("drop-1").await;
    let events = plane.events("drop-1");
    assert!(
        !events.iter().any(|e| matches!(
            e,
            job_event::Event::ApplyResult(_)
                | job_event::Event::WorkspaceStored(_)
                | job_event::Event::Failed(_)
        )),
        "{events:?}"
    );
    assert!(plane
        .logs("drop-1")
        .iter()
        .any(|l| l.message == "Not applying (decided by a test)"));
    assert!(!work
        .join("jobs/drop-1/tree/infra/.testecho-applied")
        .exists());
    agent.shutdown().await;
}

#[tokio::test]
async fn plan_and_apply_fails_when_no_decision_arrives_within_the_lease_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, sha) = make_repo(tmp.path());
    let plane = Plane::start(None).await;
    plane.state.lock().unwrap().lease_timeout_ms = 300;
    let work = tmp.path().join("work");
    let agent = Agent::spawn(config(&plane, &work));

    plane
        .send_lease(lease(
            "silent-1",
            "run-q",
            JobKind::PlanAndApply,
            &repo,
            &sha,
        ))
        .await;
    let job_event::Event::Failed(failed) = plane.wait_end("silent-1", JobKind::PlanAndApply).await
    else {
        panic!("{:?}", plane.events("silent-1"));
    };
    let reason = failed.reason;
    assert!(
        reason.contains("no decision from the control plane within 300ms after the plan"),
        "{reason}"
    );
    let events = plane.events("silent-1");
    assert!(events
        .iter()
        .any(|e| matches!(e, job_event::Event::PlanResult(r) if r.success)));
    assert!(!events
        .iter()
        .any(|e| matches!(e, job_event::Event::ApplyResult(_))));
    assert!(!work
        .join("jobs/silent-1/tree/infra/.testecho-applied")
        .exists());
    agent.shutdown().await;
}

#[tokio::test]
async fn secrets_are_masked_in_every_forwarded_line() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, sha) = make_repo(tmp.path());
    let plane = Plane::start(None).await;
    let agent = Agent::spawn(config(&plane, &tmp.path().join("work")));

    let mut plan = lease("secret-1", "run-3", JobKind::Plan, &repo, &sha);
    plan.env
        .insert("TF_VAR_password".into(), "hunter2-s3cret".into());
    plan.env.insert("PLAIN".into(), "visible-value".into());
    // The plugin echoes the environment unmasked: only the agent stands in the way.
    plan.env.insert("TESTECHO_NO_REDACT".into(), "1".into());
    plan.secret_names = vec!["TF_VAR_password".into()];
    plane.send_lease(plan).await;
    plane.wait_end("secret-1", JobKind::Plan).await;

    let logs = plane.logs("secret-1");
    assert!(
        logs.iter().any(|l| l.message == "env TF_VAR_password=***"),
        "{logs:?}"
    );
    assert!(logs.iter().any(|l| l.message == "env PLAIN=visible-value"));
    let all = format!("{:?}", plane.events("secret-1"));
    assert!(!all.contains("hunter2-s3cret"), "a secret leaked: {all}");
    agent.shutdown().await;
}

#[tokio::test]
async fn failures_say_what_failed_and_the_agent_keeps_running() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, sha) = make_repo(tmp.path());
    let plane = Plane::start(None).await;
    // A plugin that never prints its handshake.
    let extra = tmp.path().join("plugins");
    std::fs::create_dir_all(&extra).unwrap();
    let mute = extra.join("cairn-runner-mute");
    std::fs::write(&mute, "#!/bin/sh\nexec sleep 300\n").unwrap();
    std::fs::set_permissions(&mute, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut cfg = config(&plane, &tmp.path().join("work"));
    cfg.plugin_path.insert(0, extra);
    cfg.handshake_timeout = Duration::from_secs(1);
    cfg.max_jobs = 16;
    let agent = Agent::spawn(cfg);

    let mut cases = Vec::new();
    let mut add = |id: &str, edit: &dyn Fn(&mut cairn_proto::agent::v1::Lease), expect: &str| {
        let mut l = lease(id, &format!("run-{id}"), JobKind::Plan, &repo, &sha);
        edit(&mut l);
        cases.push((l, expect.to_owned()));
    };
    add(
        "no-plugin",
        &|l| l.vendor = "absent".into(),
        "runner plugin `cairn-runner-absent` not found in plugin path",
    );
    add(
        "mute-plugin",
        &|l| l.vendor = "mute".into(),
        "printed no handshake line within 1s",
    );
    add(
        "crash",
        &|l| {
            l.env.insert("TESTECHO_CRASH".into(), "plan".into());
        },
        "runner plugin `cairn-runner-testecho` failed during plan",
    );
    add(
        "bad-commit",
        &|l| l.commit_sha = "0123456789abcdef0123456789abcdef01234567".into(),
        "commit 0123456789abcdef0123456789abcdef01234567 not found in repository",
    );
    add(
        "no-repo",
        &|l| l.repository = "/nonexistent/repository".into(),
        "repository `/nonexistent/repository` cannot be fetched",
    );
    add(
        "symlink-escape",
        &|l| l.project_root = "escape".into(),
        "project root `escape` is outside the repository",
    );
    add(
        "dotdot-escape",
        &|l| l.project_root = "infra/../../x".into(),
        "project root `infra/../../x` is outside the repository",
    );
    add(
        "missing-root",
        &|l| l.project_root = "nowhere".into(),
        &format!("project root `nowhere` does not exist in the repository at {sha}"),
    );
    add(
        "option-commit",
        &|l| l.commit_sha = "--upload-pack=touch".into(),
        "is not a hexadecimal commit id",
    );
    for (l, _) in &cases {
        plane.send_lease(l.clone()).await;
    }
    for (l, expect) in &cases {
        let reason = plane.wait_failed(&l.lease_id).await;
        assert!(reason.contains(expect.as_str()), "{}: {reason}", l.lease_id);
    }

    // Still alive and still working.
    plane
        .send_lease(lease("after", "run-after", JobKind::Plan, &repo, &sha))
        .await;
    let job_event::Event::PlanResult(r) = plane.wait_end("after", JobKind::Plan).await else {
        panic!("{:?}", plane.events("after"));
    };
    assert!(r.success);
    assert_eq!(plane.registrations(), 1);
    agent.shutdown().await;
}

#[tokio::test]
async fn reconnects_after_the_control_plane_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, sha) = make_repo(tmp.path());
    let first = Plane::start(None).await;
    let agent = Agent::spawn(config(&first, &tmp.path().join("work")));
    wait_until("first registration", || async {
        (first.registrations() == 1).then_some(())
    })
    .await;
    wait_until("a heartbeat", || async {
        (!first.state.lock().unwrap().heartbeats.is_empty()).then_some(())
    })
    .await;

    first.kill().await;
    let second = Plane::start(Some(first.addr)).await;
    wait_until("registration with the restarted control plane", || async {
        (second.registrations() == 1).then_some(())
    })
    .await;
    second
        .send_lease(lease("after-restart", "run-r", JobKind::Plan, &repo, &sha))
        .await;
    let job_event::Event::PlanResult(r) = second.wait_end("after-restart", JobKind::Plan).await
    else {
        panic!("{:?}", second.events("after-restart"));
    };
    assert!(r.success);
    agent.shutdown().await;
}

#[tokio::test]
async fn a_job_survives_a_reconnect_and_its_lease_is_listed_first() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, sha) = make_repo(tmp.path());
    let first = Plane::start(None).await;
    let agent = Agent::spawn(config(&first, &tmp.path().join("work")));
    // After its plan the job waits for the decision, so it is running whenever the new
    // session starts, however long the restart takes.
    first
        .send_lease(lease(
            "across-1",
            "run-x",
            JobKind::PlanAndApply,
            &repo,
            &sha,
        ))
        .await;
    first
        .wait_event("across-1", "the plan result", |e| match e {
            job_event::Event::PlanResult(r) if r.success => Some(()),
            _ => None,
        })
        .await;
    first.kill().await;

    let second = Plane::start(Some(first.addr)).await;
    wait_until("registration with the restarted control plane", || async {
        (second.registrations() == 1).then_some(())
    })
    .await;
    wait_until("a heartbeat on the new session", || async {
        (!second.state.lock().unwrap().heartbeats.is_empty()).then_some(())
    })
    .await;
    {
        let state = second.state.lock().unwrap();
        assert_eq!(state.order[0], "register");
        assert_eq!(
            state.order[1], "heartbeat:across-1",
            "the running job's lease comes first: {:?}",
            state.order
        );
    }
    // The decision arrives on the new session; the job applies in its work tree.
    second.proceed("across-1", true, false).await;
    let job_event::Event::ApplyResult(applied) =
        second.wait_end("across-1", JobKind::PlanAndApply).await
    else {
        panic!("{:?}", second.events("across-1"));
    };
    assert!(applied.success, "{applied:?}");
    agent.shutdown().await;
}

#[tokio::test]
async fn cancel_stops_the_vendor_and_reports_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, sha) = make_repo(tmp.path());
    let plane = Plane::start(None).await;
    let agent = Agent::spawn(config(&plane, &tmp.path().join("work")));

    let pidfile = tmp.path().join("vendor.pid");
    let mut plan = lease("cancel-1", "run-c", JobKind::Plan, &repo, &sha);
    plan.env.insert("TESTECHO_SLEEP".into(), "600".into());
    plan.env.insert(
        "TESTECHO_PIDFILE".into(),
        pidfile.to_string_lossy().into_owned(),
    );
    plane.send_lease(plan).await;
    plane
        .wait_event("cancel-1", "the vendor process", |e| match e {
            job_event::Event::Log(l) if l.message == "vendor sleeping" => Some(()),
            _ => None,
        })
        .await;
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());

    plane.cancel("cancel-1").await;
    let end = plane.wait_end("cancel-1", JobKind::Plan).await;
    assert!(matches!(end, job_event::Event::Stopped(_)), "{end:?}");
    assert!(!plane
        .events("cancel-1")
        .iter()
        .any(|e| matches!(e, job_event::Event::PlanResult(_))));
    wait_until("the vendor process to go away", || async {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        (status.is_empty() || status.contains("State:\tZ")).then_some(())
    })
    .await;

    plane
        .send_lease(lease("cancel-after", "run-c2", JobKind::Plan, &repo, &sha))
        .await;
    assert!(matches!(
        plane.wait_end("cancel-after", JobKind::Plan).await,
        job_event::Event::PlanResult(r) if r.success
    ));
    agent.shutdown().await;
}

#[tokio::test]
async fn a_rejected_pool_token_ends_run_with_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let plane = Plane::start(None).await;
    let mut cfg = config(&plane, &tmp.path().join("work"));
    cfg.pool_token = Some("wrong".into());
    let result = cairn_agent::run(cfg, std::future::pending()).await;
    assert!(
        matches!(result, Err(cairn_agent::Error::Rejected(ref m)) if m.contains("bad pool token")),
        "{result:?}"
    );
}

#[tokio::test]
async fn shutdown_stops_running_jobs_and_reports_them() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, sha) = make_repo(tmp.path());
    let plane = Plane::start(None).await;
    let agent = Agent::spawn(config(&plane, &tmp.path().join("work")));

    let mut plan = lease("long-1", "run-l", JobKind::Plan, &repo, &sha);
    plan.env.insert("TESTECHO_SLEEP".into(), "600".into());
    plan.env.insert(
        "TESTECHO_PIDFILE".into(),
        tmp.path().join("pid").to_string_lossy().into_owned(),
    );
    plane.send_lease(plan).await;
    plane
        .wait_event("long-1", "the vendor process", |e| match e {
            job_event::Event::Log(l) if l.message == "vendor sleeping" => Some(()),
            _ => None,
        })
        .await;
    agent.shutdown().await;
    // The session is closed only once the control plane has read the job's last event.
    let reason = plane
        .events("long-1")
        .into_iter()
        .find_map(|e| match e {
            job_event::Event::Failed(f) => Some(f.reason),
            _ => None,
        })
        .expect("failure reported before run returned");
    assert_eq!(reason, "the agent shut down while the job was running");
}

#[tokio::test]
async fn skip_flags_reach_the_plugin() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, sha) = make_repo(tmp.path());
    let plane = Plane::start(None).await;
    let agent = Agent::spawn(config(&plane, &tmp.path().join("work")));

    let mut plan = lease("skip-plan", "run-s1", JobKind::Plan, &repo, &sha);
    plan.skip_planning = true;
    plane.send_lease(plan).await;
    assert!(matches!(
        plane.wait_end("skip-plan", JobKind::Plan).await,
        job_event::Event::PlanResult(r) if r.success && r.skipped
    ));

    let mut both = lease("skip-apply", "run-s2", JobKind::PlanAndApply, &repo, &sha);
    both.skip_applying = true;
    plane.send_lease(both).await;
    // The decision may arrive before the job waits for it.
    plane.proceed("skip-apply", true, false).await;
    assert!(matches!(
        plane.wait_end("skip-apply", JobKind::PlanAndApply).await,
        job_event::Event::ApplyResult(r) if r.success && r.skipped
    ));
    agent.shutdown().await;
}

/// The control plane frees a slot at a job's result, while the agent still stops the job's
/// plugin: a lease arriving in between waits for the slot instead of being refused.
#[tokio::test]
async fn a_lease_for_a_full_agent_waits_for_a_finishing_job() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, sha) = make_repo(tmp.path());
    let plane = Plane::start(None).await;
    let mut cfg = config(&plane, &tmp.path().join("work"));
    cfg.max_jobs = 1;
    let agent = Agent::spawn(cfg);

    let mut busy = lease("busy", "run-busy", JobKind::Plan, &repo, &sha);
    busy.env.insert("TESTECHO_SLEEP".into(), "600".into());
    busy.env.insert(
        "TESTECHO_PIDFILE".into(),
        tmp.path().join("busy").to_string_lossy().into_owned(),
    );
    plane.send_lease(busy).await;
    plane
        .wait_event("busy", "the vendor process", |e| match e {
            job_event::Event::Log(l) if l.message == "vendor sleeping" => Some(()),
            _ => None,
        })
        .await;
    plane
        .send_lease(lease("next", "run-next", JobKind::Plan, &repo, &sha))
        .await;
    plane.cancel("busy").await;
    assert!(matches!(
        plane.wait_end("busy", JobKind::Plan).await,
        job_event::Event::Stopped(_)
    ));
    assert!(matches!(
        plane.wait_end("next", JobKind::Plan).await,
        job_event::Event::PlanResult(r) if r.success
    ));
    agent.shutdown().await;
}

#[tokio::test]
async fn runs_max_jobs_at_once_and_refuses_more() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, sha) = make_repo(tmp.path());
    let plane = Plane::start(None).await;
    let agent = Agent::spawn(config(&plane, &tmp.path().join("work")));

    for id in ["busy-1", "busy-2"] {
        let mut plan = lease(id, &format!("run-{id}"), JobKind::Plan, &repo, &sha);
        plan.env.insert("TESTECHO_SLEEP".into(), "600".into());
        plan.env.insert(
            "TESTECHO_PIDFILE".into(),
            tmp.path().join(id).to_string_lossy().into_owned(),
        );
        plane.send_lease(plan).await;
    }
    // Both vendors are running at the same time.
    for id in ["busy-1", "busy-2"] {
        plane
            .wait_event(id, "the vendor process", |e| match e {
                job_event::Event::Log(l) if l.message == "vendor sleeping" => Some(()),
                _ => None,
            })
            .await;
    }
    plane
        .send_lease(lease("third", "run-third", JobKind::Plan, &repo, &sha))
        .await;
    let reason = plane.wait_failed("third").await;
    assert_eq!(reason, "the agent already runs its maximum of 2 jobs");

    for id in ["busy-1", "busy-2"] {
        plane.cancel(id).await;
        assert!(matches!(
            plane.wait_end(id, JobKind::Plan).await,
            job_event::Event::Stopped(_)
        ));
    }
    agent.shutdown().await;
}

#[tokio::test]
async fn two_agents_cannot_share_a_work_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let plane = Plane::start(None).await;
    let work = tmp.path().join("work");
    let first = Agent::spawn(config(&plane, &work));
    wait_until("first registration", || async {
        (plane.registrations() == 1).then_some(())
    })
    .await;
    let second = cairn_agent::run(config(&plane, &work), std::future::pending()).await;
    assert!(
        matches!(second, Err(cairn_agent::Error::Config(ref m)) if m.contains("in use by another agent")),
        "{second:?}"
    );
    first.shutdown().await;
}
