//! End to end: a real server, a real `cairn agent` process, the real runner plugins and real
//! vendor CLIs (Terraform with the cairntest provider, ansible-playbook), on real git
//! repositories.

use std::path::{Path, PathBuf};

use cairn_tests::{
    cairntest_config, delta_tuple, history, log_text, pb, stack_spec, state_of, AgentOptions,
    AgentProcess, Error, FileResource, GitRepo, Result, ServerOptions, TestServer,
};
use pb::RunState as S;

/// A temporary directory for the files the vendors manage, outside every checkout.
struct Outside {
    dir: tempfile::TempDir,
}

impl Outside {
    fn new() -> Result<Self> {
        Ok(Outside {
            dir: tempfile::tempdir().map_err(|e| Error::Setup(e.to_string()))?,
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

fn addresses(run: &pb::Run) -> Vec<String> {
    let mut a: Vec<String> = run
        .changes
        .iter()
        .filter_map(|c| c.entity.as_ref().map(|e| e.address.clone()))
        .collect();
    a.sort();
    a
}

fn env(name: &str, value: &str) -> pb::EnvVar {
    pb::EnvVar {
        name: name.into(),
        value: value.into(),
        secret: false,
    }
}

async fn setup(agent: &str) -> Result<(TestServer, AgentProcess)> {
    let server = TestServer::start(ServerOptions::default()).await?;
    let agent = AgentProcess::start(&server, AgentOptions::named(agent)).await?;
    Ok((server, agent))
}

/// Plan with changes → UNCONFIRMED → targeted replan → UNCONFIRMED with the narrower delta →
/// confirm → FINISHED. The repository moves on between plan and confirm; the apply still
/// writes what was planned, because it applies the saved plan of the reviewed workspace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracked_run_applies_exactly_the_reviewed_plan() -> Result<()> {
    let (server, _agent) = setup("tracked").await?;
    let out = Outside::new()?;
    let (a, b) = (out.path("a.txt"), out.path("b.txt"));
    let repo = GitRepo::new()?;
    let config = |content_a: &str| {
        cairntest_config(
            None,
            &[
                FileResource {
                    name: "a",
                    path: &a,
                    content: content_a,
                },
                FileResource {
                    name: "b",
                    path: &b,
                    content: "b-one",
                },
            ],
        )
    };
    repo.write("infra/main.tf", &config("a-one"))?;
    let first = repo.commit_and_push("two files")?;
    server
        .create_stack(
            stack_spec("files", &repo.url(), "infra", "terraform", false),
            vec![],
            &first,
        )
        .await?;

    let run = server.trigger("files", pb::RunType::Tracked, "").await?;
    let run = server.wait(&run.id, &[S::Unconfirmed]).await?;
    assert_eq!(delta_tuple(run.delta.as_ref()), (2, 0, 0));
    assert_eq!(
        addresses(&run),
        vec![
            "cairntest_file.a".to_string(),
            "cairntest_file.b".to_string()
        ]
    );
    assert_eq!(read(&a), None, "planning must not write anything");

    let replanned = server
        .runs()
        .replan_run(pb::ReplanRunRequest {
            run_id: run.id.clone(),
            targets: vec!["cairntest_file.a".into()],
        })
        .await?
        .into_inner()
        .run
        .unwrap_or_default();
    assert_eq!(state_of(&replanned), S::ReplanRequested);
    let run = server.wait(&run.id, &[S::Unconfirmed]).await?;
    assert_eq!(delta_tuple(run.delta.as_ref()), (1, 0, 0));
    assert_eq!(addresses(&run), vec!["cairntest_file.a".to_string()]);

    // A new commit lands on the tracked branch while the plan waits for confirmation.
    repo.write("infra/main.tf", &config("a-two"))?;
    let second = repo.commit_and_push("change a")?;
    server.sync("files", &second).await?;

    server
        .runs()
        .confirm_run(pb::ConfirmRunRequest {
            run_id: run.id.clone(),
        })
        .await?;
    let run = server.wait(&run.id, &[S::Finished]).await?;
    assert_eq!(read(&a).as_deref(), Some("a-one"), "the reviewed plan");
    assert_eq!(read(&b), None, "b was not targeted");
    assert_eq!(
        run.commit.as_ref().map(|c| c.hash.as_str()),
        Some(first.as_str())
    );
    let states = history(&run);
    for s in [
        S::Queued,
        S::Planning,
        S::Unconfirmed,
        S::ReplanRequested,
        S::Confirmed,
        S::Applying,
        S::Finished,
    ] {
        assert!(states.contains(&s), "{s:?} missing from {states:?}");
    }

    let logs = log_text(&server, &run.id).await?;
    assert!(
        logs.contains("cairntest_file.a"),
        "terraform output in the run logs:\n{logs}"
    );
    assert!(logs.contains("Apply complete"), "apply output:\n{logs}");
    Ok(())
}

/// An autodeploy stack applies without confirmation; a second tracked run at the same commit is
/// a no-op that finishes straight after planning; a proposed run for a feature-branch commit
/// finishes after planning and applies nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autodeploy_then_no_op_then_proposed() -> Result<()> {
    let (server, _agent) = setup("autodeploy").await?;
    let out = Outside::new()?;
    let file = out.path("hello.txt");
    let repo = GitRepo::new()?;
    let config = |content: &str| {
        cairntest_config(
            None,
            &[FileResource {
                name: "hello",
                path: &file,
                content,
            }],
        )
    };
    repo.write("main.tf", &config("hello"))?;
    let sha = repo.commit_and_push("hello")?;
    server
        .create_stack(
            stack_spec("auto", &repo.url(), "", "terraform", true),
            vec![],
            &sha,
        )
        .await?;

    let run = server.trigger("auto", pb::RunType::Tracked, "").await?;
    let run = server.wait(&run.id, &[S::Finished]).await?;
    let states = history(&run);
    assert!(!states.contains(&S::Unconfirmed), "{states:?}");
    assert!(!states.contains(&S::Confirmed), "{states:?}");
    assert!(states.contains(&S::Applying), "{states:?}");
    assert_eq!(delta_tuple(run.delta.as_ref()), (1, 0, 0));
    assert_eq!(read(&file).as_deref(), Some("hello"));
    // No plan policy: the apply started as soon as the plan was saved, and the plan's details
    // (read by `show` meanwhile) still reached the run.
    assert!(
        run.states_history
            .iter()
            .any(|h| h.note.contains("saved plan has changes")),
        "{:?}",
        run.states_history
    );
    assert!(log_text(&server, &run.id)
        .await?
        .contains("Applying the plan while its details are read (autodeploy)"));
    let planned: Vec<_> = run
        .changes
        .iter()
        .filter(|c| c.phase() == pb::ChangePhase::Plan)
        .filter_map(|c| c.entity.as_ref())
        .map(|e| e.address.as_str())
        .collect();
    assert_eq!(planned, ["cairntest_file.hello"]);

    let again = server.trigger("auto", pb::RunType::Tracked, &sha).await?;
    let again = server.wait(&again.id, &[S::Finished]).await?;
    let states = history(&again);
    assert!(again.no_op, "same commit, same state: nothing to do");
    assert!(!states.contains(&S::Unconfirmed), "{states:?}");
    assert!(!states.contains(&S::Applying), "{states:?}");
    assert!(states.contains(&S::Planning), "{states:?}");

    repo.branch("feature")?;
    repo.write("main.tf", &config("from a feature branch"))?;
    let feature = repo.commit_and_push("feature")?;
    let proposed = server
        .trigger("auto", pb::RunType::Proposed, &feature)
        .await?;
    let proposed = server.wait(&proposed.id, &[S::Finished]).await?;
    let states = history(&proposed);
    assert!(!states.contains(&S::Applying), "{states:?}");
    assert_eq!(delta_tuple(proposed.delta.as_ref()), (0, 1, 0));
    assert_eq!(
        read(&file).as_deref(),
        Some("hello"),
        "a proposed run applies nothing"
    );
    Ok(())
}

/// A one-file stack "gate" that waits for confirmation; returns the managed file.
/// Returns the managed file's path and the repository, which must outlive the run (dropping it
/// deletes the remote the agent fetches from).
async fn gate_stack(
    server: &TestServer,
    out: &Outside,
    env: Vec<pb::EnvVar>,
) -> Result<(PathBuf, GitRepo)> {
    let file = out.path("kept-out.txt");
    let repo = GitRepo::new()?;
    repo.write(
        "main.tf",
        &cairntest_config(
            None,
            &[FileResource {
                name: "f",
                path: &file,
                content: "never",
            }],
        ),
    )?;
    let sha = repo.commit_and_push("one file")?;
    server
        .create_stack(
            stack_spec("gate", &repo.url(), "", "terraform", false),
            env,
            &sha,
        )
        .await?;
    Ok((file, repo))
}

/// Discarding an unconfirmed run applies nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discarded_run_applies_nothing() -> Result<()> {
    let (server, _agent) = setup("discard").await?;
    let out = Outside::new()?;
    let (file, _repo) = gate_stack(&server, &out, vec![]).await?;
    let run = server.trigger("gate", pb::RunType::Tracked, "").await?;
    let run = server.wait(&run.id, &[S::Unconfirmed]).await?;
    server
        .runs()
        .discard_run(pb::DiscardRunRequest {
            run_id: run.id.clone(),
        })
        .await?;
    let run = server.wait(&run.id, &[S::Discarded]).await?;
    assert!(!history(&run).contains(&S::Applying));
    assert_eq!(read(&file), None, "a discarded run applies nothing");
    Ok(())
}

/// With CAIRN_SKIP_APPLYING=true in the stack's environment (Spacelift's
/// SPACELIFT_SKIP_APPLYING), a confirmed run finishes without applying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_applying_flag_finishes_without_applying() -> Result<()> {
    let (server, _agent) = setup("skipper").await?;
    let out = Outside::new()?;
    let (file, _repo) = gate_stack(&server, &out, vec![env("CAIRN_SKIP_APPLYING", "true")]).await?;
    let run = server.trigger("gate", pb::RunType::Tracked, "").await?;
    let run = server.wait(&run.id, &[S::Unconfirmed]).await?;
    server
        .runs()
        .confirm_run(pb::ConfirmRunRequest {
            run_id: run.id.clone(),
        })
        .await?;
    let run = server.wait(&run.id, &[S::Finished]).await?;
    let states = history(&run);
    assert!(states.contains(&S::Confirmed), "{states:?}");
    assert!(
        run.states_history
            .iter()
            .any(|t| t.note.contains("applying skipped")),
        "the skip shows in the run's history: {:?}",
        run.states_history
    );
    assert_eq!(read(&file), None, "applying was skipped");
    let logs = log_text(&server, &run.id).await?;
    assert!(
        !logs.contains("Apply complete"),
        "terraform apply must not run:\n{logs}"
    );
    Ok(())
}

/// The OpenTofu plugin, driven end to end; `CAIRN_TOFU_BIN` points it at the Terraform binary
/// (OpenTofu speaks the same CLI and plan formats).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opentofu_plugin_end_to_end() -> Result<()> {
    let server = TestServer::start(ServerOptions::default()).await?;
    let terraform = cairn_tests::paths::tool("terraform")?;
    let _agent = AgentProcess::start(
        &server,
        AgentOptions::named("tofu").env("CAIRN_TOFU_BIN", terraform),
    )
    .await?;
    let out = Outside::new()?;
    let file = out.path("tofu.txt");
    let repo = GitRepo::new()?;
    repo.write(
        "main.tf",
        &cairntest_config(
            None,
            &[FileResource {
                name: "tofu",
                path: &file,
                content: "planted by the opentofu plugin",
            }],
        ),
    )?;
    let sha = repo.commit_and_push("tofu")?;
    server
        .create_stack(
            stack_spec("tofu", &repo.url(), "", "opentofu", false),
            vec![],
            &sha,
        )
        .await?;
    let run = server.trigger("tofu", pb::RunType::Tracked, "").await?;
    let run = server.wait(&run.id, &[S::Unconfirmed]).await?;
    assert_eq!(addresses(&run), vec!["cairntest_file.tofu".to_string()]);
    server
        .runs()
        .confirm_run(pb::ConfirmRunRequest {
            run_id: run.id.clone(),
        })
        .await?;
    server.wait(&run.id, &[S::Finished]).await?;
    assert_eq!(
        read(&file).as_deref(),
        Some("planted by the opentofu plugin")
    );
    Ok(())
}

const LOCAL_INVENTORY: &str =
    "localhost ansible_connection=local ansible_python_interpreter=\"{{ansible_playbook_python}}\"\n";

/// Real ansible-playbook on localhost: the plan is a check run, the apply writes the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ansible_stack_end_to_end() -> Result<()> {
    let (server, _agent) = setup("ansible").await?;
    let out = Outside::new()?;
    let file = out.path("from-ansible.txt");
    let repo = GitRepo::new()?;
    repo.write(
        "site/playbook.yml",
        &format!(
            "- hosts: all\n  gather_facts: false\n  tasks:\n    - name: write the file\n      ansible.builtin.copy:\n        dest: {}\n        content: \"written by ansible\\n\"\n",
            serde_json::Value::String(file.display().to_string())
        ),
    )?;
    repo.write("site/inventory", LOCAL_INVENTORY)?;
    let sha = repo.commit_and_push("playbook")?;
    server
        .create_stack(
            stack_spec("play", &repo.url(), "site", "ansible", false),
            vec![],
            &sha,
        )
        .await?;
    let run = server.trigger("play", pb::RunType::Tracked, "").await?;
    let run = server.wait(&run.id, &[S::Unconfirmed]).await?;
    assert!(!run.no_op);
    assert!(!run.changes.is_empty(), "the check run reports the change");
    assert_eq!(read(&file), None, "check mode writes nothing");
    server
        .runs()
        .confirm_run(pb::ConfirmRunRequest {
            run_id: run.id.clone(),
        })
        .await?;
    server.wait(&run.id, &[S::Finished]).await?;
    assert_eq!(read(&file).as_deref(), Some("written by ansible\n"));
    Ok(())
}

/// The Pulumi plugin against the fake CLI (the real one cannot be installed here; the fake
/// speaks its JSON formats).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulumi_stack_end_to_end() -> Result<()> {
    let server = TestServer::start(ServerOptions::default()).await?;
    let _agent = AgentProcess::start(
        &server,
        AgentOptions::named("pulumi").env("CAIRN_PULUMI_BIN", cairn_tests::paths::fake_pulumi()),
    )
    .await?;
    let repo = GitRepo::new()?;
    repo.write(
        "program.json",
        r#"{"resources": {"bucket": {"type": "aws:s3/bucket:Bucket", "inputs": {"name": "logs"}}}, "outputs": {"bucket": "logs"}}"#,
    )?;
    let sha = repo.commit_and_push("bucket")?;
    server
        .create_stack(
            stack_spec("pulumi", &repo.url(), "", "pulumi", false),
            vec![],
            &sha,
        )
        .await?;
    let run = server.trigger("pulumi", pb::RunType::Tracked, "").await?;
    let run = server.wait(&run.id, &[S::Unconfirmed]).await?;
    assert_eq!(delta_tuple(run.delta.as_ref()).0, 1, "{:?}", run.delta);
    assert!(
        addresses(&run).iter().any(|a| a.contains("bucket")),
        "{:?}",
        addresses(&run)
    );
    server
        .runs()
        .confirm_run(pb::ConfirmRunRequest {
            run_id: run.id.clone(),
        })
        .await?;
    let run = server.wait(&run.id, &[S::Finished]).await?;
    assert!(history(&run).contains(&S::Applying));
    Ok(())
}
