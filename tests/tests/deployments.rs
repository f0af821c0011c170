//! End to end: HCP Terraform-style deployments with a real server, a real `cairn agent`, the
//! Terraform plugin and real Terraform 1.0.3 with the cairntest provider, on a real git
//! repository whose `cairn.toml` declares the deployments.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_tests::{
    log_text, pb, stack_spec, state_of, wait_until, AgentOptions, AgentProcess, Error, GitRepo,
    Result, ServerOptions, TestServer, WAIT,
};
use pb::RunState as S;

/// Two files per deployment under `dir`: `b` reads whether `a` exists when it is planned, so
/// the first apply (which creates `a`) changes what the next plan wants for `b`: a deployment
/// needs a second plan/apply cycle before a plan comes out empty.
const MULTI_CYCLE: &str = r#"terraform {
  required_providers {
    cairntest = { source = "cairn.local/test/cairntest" }
  }
}

variable "dir" {
  type = string
}

variable "label" {
  type = string
}

resource "cairntest_file" "a" {
  path    = "${var.dir}/a.txt"
  content = var.label
}

resource "cairntest_file" "b" {
  path    = "${var.dir}/b.txt"
  content = fileexists("${var.dir}/a.txt") ? "converged" : "pending"
}

output "label" {
  value = var.label
}
"#;

/// Never converges: every plan wants a new timestamp.
const NEVER_CONVERGES: &str = r#"terraform {
  required_providers {
    cairntest = { source = "cairn.local/test/cairntest" }
  }
}

variable "dir" {
  type = string
}

resource "cairntest_file" "t" {
  path    = "${var.dir}/t.txt"
  content = timestamp()
}
"#;

fn toml_str(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// cairn.toml with one `[deployments.<name>]` per entry: (name, dir, label, auto_approve).
fn cairn_toml(deployments: &[(&str, &Path, &str, bool)]) -> String {
    let mut out = String::new();
    for (name, dir, label, auto) in deployments {
        out.push_str(&format!(
            "[deployments.{name}]\ninputs = {{ dir = {}, label = {} }}\nauto_approve = {auto}\n\n",
            toml_str(&dir.display().to_string()),
            toml_str(label)
        ));
    }
    out
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// Runs of the stack built from configuration version `seq`, by deployment name.
async fn runs_at(server: &TestServer, stack: &str, seq: i64) -> Result<Vec<pb::Run>> {
    let mut runs: Vec<pb::Run> = server
        .runs()
        .list_runs(pb::ListRunsRequest {
            stack_id: stack.into(),
            page: Some(pb::PageRequest {
                page_size: 200,
                page_token: String::new(),
            }),
        })
        .await?
        .into_inner()
        .runs
        .into_iter()
        .filter(|r| r.config_version == seq)
        .collect();
    runs.sort_by(|a, b| a.deployment.cmp(&b.deployment));
    Ok(runs)
}

async fn versions(server: &TestServer, stack: &str) -> Result<Vec<pb::ConfigurationVersion>> {
    Ok(server
        .deployments()
        .list_configuration_versions(pb::ListConfigurationVersionsRequest {
            stack_id: stack.into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .configuration_versions)
}

/// Waits until configuration version `seq` exists and has one run per deployment in `names`
/// (plus destroy runs); returns its runs by deployment name.
async fn version_runs(
    server: &TestServer,
    stack: &str,
    seq: i64,
    names: &[&str],
) -> Result<Vec<pb::Run>> {
    wait_until(
        &format!("configuration version {seq} with runs for {names:?}"),
        WAIT,
        || async {
            let ok = versions(server, stack).await?.iter().any(|v| v.seq == seq);
            let runs = runs_at(server, stack, seq).await?;
            let got: Vec<&str> = runs.iter().map(|r| r.deployment.as_str()).collect();
            Ok((ok && got == names).then_some(runs))
        },
    )
    .await
}

/// Polls the run until `check` holds; fails early when it ends otherwise.
async fn wait_run(
    server: &TestServer,
    run_id: &str,
    what: &str,
    check: impl Fn(&pb::Run) -> bool,
) -> Result<pb::Run> {
    let check = &check;
    let res = wait_until(what, WAIT, || async move {
        let run = server.get_run(run_id).await?;
        if check(&run) {
            return Ok(Some(run));
        }
        let terminal = matches!(
            state_of(&run),
            S::Finished | S::Failed | S::Discarded | S::Canceled | S::Stopped
        );
        if terminal {
            return Err(Error::Check(format!(
                "run {run_id} ended {:?} (error {:?}) instead of: {what}",
                state_of(&run),
                run.error
            )));
        }
        Ok(None)
    })
    .await;
    if res.is_err() {
        dump_run(server, run_id).await?;
    }
    res
}

/// Prints the run's cycle, steps, state history and stored log: what a timed-out wait needs
/// to tell which transition never came.
async fn dump_run(server: &TestServer, run_id: &str) -> Result<()> {
    let logs = log_text(server, run_id).await.unwrap_or_default();
    let run = server.get_run(run_id).await?;
    let history: Vec<String> = run
        .states_history
        .iter()
        .map(|t| {
            format!(
                "{:?} {}",
                S::try_from(t.state).unwrap_or(S::Unspecified),
                t.note
            )
        })
        .collect();
    eprintln!(
        "run {run_id}: cycle {}, steps {:?}, history {history:?}\nlogs:\n{logs}",
        run.cycle,
        steps(&run)
    );
    Ok(())
}

fn steps(run: &pb::Run) -> Vec<(pb::StepKind, pb::StepState)> {
    run.steps
        .iter()
        .map(|s| {
            (
                pb::StepKind::try_from(s.kind).unwrap_or(pb::StepKind::Unspecified),
                pb::StepState::try_from(s.state).unwrap_or(pb::StepState::Unspecified),
            )
        })
        .collect()
}

fn note_of(run: &pb::Run, state: S) -> String {
    run.states_history
        .iter()
        .rev()
        .find(|t| t.state == state as i32)
        .map(|t| t.note.clone())
        .unwrap_or_default()
}

async fn deployment(server: &TestServer, stack: &str, name: &str) -> Result<pb::Deployment> {
    server
        .deployments()
        .get_deployment(pb::GetDeploymentRequest {
            stack_id: stack.into(),
            name: name.into(),
        })
        .await?
        .into_inner()
        .deployment
        .ok_or_else(|| Error::Check("GetDeployment answered without a deployment".into()))
}

/// Pushes the repository's work tree, moves the stack's tracked commit and asks for a tracked
/// run, as a push noticed by Cairn would (the Git poller may notice it too: one configuration
/// version per commit either way).
async fn push(server: &TestServer, repo: &GitRepo, stack: &str, message: &str) -> Result<String> {
    let sha = repo.commit_and_push(message)?;
    server.sync(stack, &sha).await?;
    server.trigger(stack, pb::RunType::Tracked, &sha).await?;
    Ok(sha)
}

use pb::StepKind as K;
use pb::StepState as T;

/// Deployments `dev` (auto-approved) and `prod` declared in cairn.toml: one run per deployment
/// per configuration version; dev converges over several plan/apply cycles on its own; prod is
/// approved at the newer version while its older plan waits (the older one is dismissed and
/// cannot be revived); prod converges over two confirmed cycles holding its lock throughout;
/// removing dev from cairn.toml destroys it with the configuration that last contained it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_converge_in_approval_order_and_removal_destroys() -> Result<()> {
    let server = TestServer::start(ServerOptions::default()).await?;
    // Room for more jobs than ever run at once: the agent counts a job until its plugin has
    // exited, a little after the control plane has ended the lease.
    let _agent = AgentProcess::start(
        &server,
        AgentOptions {
            max_jobs: 6,
            ..AgentOptions::named("deployments")
        },
    )
    .await?;
    let out = tempfile::tempdir().map_err(|e| Error::Setup(e.to_string()))?;
    let dev_dir: PathBuf = out.path().join("dev");
    let prod_dir: PathBuf = out.path().join("prod");
    let repo = GitRepo::new()?;
    repo.write("infra/main.tf", MULTI_CYCLE)?;
    repo.write(
        "infra/cairn.toml",
        &cairn_toml(&[
            ("dev", &dev_dir, "dev-1", true),
            ("prod", &prod_dir, "prod-1", false),
        ]),
    )?;
    let first = repo.commit_and_push("dev and prod")?;
    server
        .create_stack(
            stack_spec("app", &repo.url(), "infra", "terraform", false),
            vec![],
            &first,
        )
        .await?;
    server.trigger("app", pb::RunType::Tracked, &first).await?;

    // Version 1: one run per deployment.
    let v1 = version_runs(&server, "app", 1, &["dev", "prod"]).await?;
    let (dev1, prod1) = (&v1[0], &v1[1]);
    assert_eq!(
        dev1.commit.as_ref().map(|c| c.hash.as_str()),
        Some(first.as_str())
    );
    let deps = server
        .deployments()
        .list_deployments(pb::ListDeploymentsRequest {
            stack_id: "app".into(),
        })
        .await?
        .into_inner()
        .deployments;
    let names: Vec<(&str, &str)> = deps
        .iter()
        .map(|d| (d.name.as_str(), d.declared_in.as_str()))
        .collect();
    assert_eq!(names, [("dev", "file"), ("prod", "file")]);

    // dev auto-approves: apply, plan again (b now sees a), apply, plan empty: converged.
    let dev1 = wait_run(&server, &dev1.id, "dev v1 FINISHED", |r| {
        state_of(r) == S::Finished
    })
    .await?;
    assert_eq!(dev1.cycle, 3, "two applies, then the empty third plan");
    assert_eq!(
        steps(&dev1),
        [
            (K::Plan, T::Success),
            (K::Apply, T::Success),
            (K::Plan, T::Success),
            (K::Apply, T::Success),
            (K::Plan, T::Success),
        ]
    );
    assert_eq!(read(&dev_dir.join("a.txt")).as_deref(), Some("dev-1"));
    assert_eq!(read(&dev_dir.join("b.txt")).as_deref(), Some("converged"));
    assert!(dev1.approved_at > 0);
    assert!(
        log_text(&server, &dev1.id).await?.contains("auto-approved"),
        "the auto-approval is in the run log"
    );
    // prod waits for a human; its plan took no lock.
    let prod1 = wait_run(&server, &prod1.id, "prod v1 UNCONFIRMED", |r| {
        state_of(r) == S::Unconfirmed
    })
    .await?;
    assert_eq!(
        steps(&prod1),
        [(K::Plan, T::Success), (K::Apply, T::Waiting)]
    );
    assert_eq!(deployment(&server, "app", "prod").await?.lock_holder, "");
    assert_eq!(read(&prod_dir.join("a.txt")), None);

    // A change: version 2, one run per deployment again.
    repo.write(
        "infra/cairn.toml",
        &cairn_toml(&[
            ("dev", &dev_dir, "dev-2", true),
            ("prod", &prod_dir, "prod-2", false),
        ]),
    )?;
    let second = push(&server, &repo, "app", "labels 2").await?;
    let v2 = version_runs(&server, "app", 2, &["dev", "prod"]).await?;
    let (dev2, prod2) = (&v2[0], &v2[1]);
    assert_eq!(
        prod2.commit.as_ref().map(|c| c.hash.as_str()),
        Some(second.as_str())
    );
    let version2 = server
        .deployments()
        .get_configuration_version(pb::GetConfigurationVersionRequest {
            stack_id: "app".into(),
            seq: 2,
        })
        .await?
        .into_inner()
        .configuration_version
        .unwrap_or_default();
    assert_eq!(version2.commit_sha, second);
    assert_eq!(
        version2.content_digest.len(),
        40,
        "the project root's tree hash"
    );
    assert_eq!(
        version2
            .deployments
            .iter()
            .map(|d| d.name.as_str())
            .collect::<Vec<_>>(),
        ["dev", "prod"]
    );
    wait_run(&server, &dev2.id, "dev v2 FINISHED", |r| {
        state_of(r) == S::Finished
    })
    .await?;
    assert_eq!(read(&dev_dir.join("a.txt")).as_deref(), Some("dev-2"));
    let prod2 = wait_run(&server, &prod2.id, "prod v2 UNCONFIRMED", |r| {
        state_of(r) == S::Unconfirmed
    })
    .await?;
    // Both prod plans wait; approving the newer one dismisses the older one for good.
    assert_eq!(state_of(&server.get_run(&prod1.id).await?), S::Unconfirmed);
    server
        .runs()
        .confirm_run(pb::ConfirmRunRequest {
            run_id: prod2.id.clone(),
        })
        .await?;
    let prod1 = server.get_run(&prod1.id).await?;
    assert_eq!(state_of(&prod1), S::Discarded);
    assert_eq!(
        note_of(&prod1, S::Discarded),
        "dismissed: configuration version 2 was approved"
    );
    assert_eq!(
        steps(&prod1),
        [(K::Plan, T::Success), (K::Apply, T::Cancelled)]
    );
    let revive = server
        .runs()
        .confirm_run(pb::ConfirmRunRequest {
            run_id: prod1.id.clone(),
        })
        .await
        .expect_err("a dismissed plan cannot be approved");
    assert_eq!(revive.code(), tonic::Code::FailedPrecondition);

    // prod v2 applies, plans again with changes (b) and waits, holding the lock meanwhile.
    let prod2 = wait_run(&server, &prod2.id, "prod v2 UNCONFIRMED in cycle 2", |r| {
        state_of(r) == S::Unconfirmed && r.cycle == 2
    })
    .await?;
    assert_eq!(read(&prod_dir.join("b.txt")).as_deref(), Some("pending"));
    assert_eq!(
        deployment(&server, "app", "prod").await?.lock_holder,
        prod2.id
    );
    let conv = server
        .deployments()
        .get_convergence(pb::GetConvergenceRequest {
            stack_id: "app".into(),
        })
        .await?
        .into_inner();
    assert!(!conv.converged, "prod is still on its way: {conv:?}");
    server
        .runs()
        .confirm_run(pb::ConfirmRunRequest {
            run_id: prod2.id.clone(),
        })
        .await?;
    let prod2 = wait_run(&server, &prod2.id, "prod v2 FINISHED", |r| {
        state_of(r) == S::Finished
    })
    .await?;
    assert_eq!(prod2.cycle, 3);
    assert_eq!(
        steps(&prod2),
        [
            (K::Plan, T::Success),
            (K::Apply, T::Success),
            (K::Plan, T::Success),
            (K::Apply, T::Success),
            (K::Plan, T::Success),
        ]
    );
    assert_eq!(read(&prod_dir.join("a.txt")).as_deref(), Some("prod-2"));
    assert_eq!(read(&prod_dir.join("b.txt")).as_deref(), Some("converged"));
    lock_released(&server, "app", "prod").await?;
    let conv = server
        .deployments()
        .get_convergence(pb::GetConvergenceRequest {
            stack_id: "app".into(),
        })
        .await?
        .into_inner();
    assert!(conv.converged, "{conv:?}");
    assert_eq!(conv.latest_config_version, 2);

    // Removing dev from cairn.toml: version 3 has prod only; dev is destroyed with version 2.
    repo.write(
        "infra/cairn.toml",
        &cairn_toml(&[("prod", &prod_dir, "prod-2", false)]),
    )?;
    push(&server, &repo, "app", "remove dev").await?;
    let v3 = version_runs(&server, "app", 3, &["prod"]).await?;
    let prod3 = wait_run(&server, &v3[0].id, "prod v3 FINISHED", |r| {
        state_of(r) == S::Finished
    })
    .await?;
    assert!(prod3.no_op, "nothing changed for prod");
    let destroy = wait_until("dev's destroy run", WAIT, || async {
        let runs = runs_at(&server, "app", 2).await?;
        Ok(runs
            .into_iter()
            .find(|r| r.deployment == "dev" && r.mode == pb::RunMode::Destroy as i32))
    })
    .await?;
    assert_eq!(
        destroy.commit.as_ref().map(|c| c.hash.as_str()),
        Some(second.as_str()),
        "planned with the last configuration that contained dev"
    );
    wait_run(&server, &destroy.id, "dev destroy FINISHED", |r| {
        state_of(r) == S::Finished
    })
    .await?;
    assert_eq!(read(&dev_dir.join("a.txt")), None);
    assert_eq!(read(&dev_dir.join("b.txt")), None);
    // The removal is recorded when the server handles the run's end, just after FINISHED.
    let dev = wait_until("dev marked removed", WAIT, || async {
        let dev = deployment(&server, "app", "dev").await?;
        Ok(dev.removed.then_some(dev))
    })
    .await?;
    assert!(dev.deleted && dev.removed, "{dev:?}");
    let conv = server
        .deployments()
        .get_convergence(pb::GetConvergenceRequest {
            stack_id: "app".into(),
        })
        .await?
        .into_inner();
    assert!(conv.converged, "dev is removed, prod is at 3: {conv:?}");
    assert_eq!(conv.latest_config_version, 3);

    read_state(&server, "app", "prod", &[prod2.id.as_str()], "prod-2").await?;
    Ok(())
}

/// State versions and outputs of a deployment over gRPC (StateService).
async fn read_state(
    server: &TestServer,
    stack: &str,
    deployment: &str,
    runs: &[&str],
    label: &str,
) -> Result<()> {
    let key: tonic::metadata::MetadataValue<_> = format!("Bearer {}", server.admin_key)
        .parse()
        .map_err(|_| Error::Setup("the admin key is not a header value".into()))?;
    let mut client = pb::state_service_client::StateServiceClient::with_interceptor(
        server.channel.clone(),
        move |mut req: tonic::Request<()>| {
            req.metadata_mut().insert("authorization", key.clone());
            Ok(req)
        },
    );
    let versions = client
        .list_state_versions(pb::ListStateVersionsRequest {
            stack_id: stack.into(),
            deployment: deployment.into(),
            page: None,
        })
        .await?
        .into_inner()
        .versions;
    // Every apply of the deployment's runs wrote a version, newest first.
    let writers: Vec<&str> = versions.iter().map(|v| v.created_by_run.as_str()).collect();
    for run in runs {
        assert!(
            writers.contains(run),
            "{run} wrote no state version: {writers:?}"
        );
    }
    let serials: Vec<i64> = versions.iter().map(|v| v.serial).collect();
    assert!(serials.windows(2).all(|w| w[0] > w[1]), "{serials:?}");
    let outputs = client
        .get_outputs(pb::GetOutputsRequest {
            stack_id: stack.into(),
            deployment: deployment.into(),
        })
        .await?
        .into_inner();
    assert_eq!(outputs.serial, serials[0]);
    let label_out = outputs
        .outputs
        .iter()
        .find(|o| o.name == "label")
        .ok_or_else(|| Error::Check(format!("no output label: {:?}", outputs.outputs)))?;
    assert_eq!(label_out.value_json, toml_str(label));
    Ok(())
}

/// A configuration whose plans always change fails its run once the cycle cap is reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_never_converges_fails_at_the_cycle_cap() -> Result<()> {
    let server = TestServer::start(ServerOptions {
        deployment_max_cycles: 2,
        ..Default::default()
    })
    .await?;
    let agent = AgentProcess::start(&server, AgentOptions::named("cap")).await?;
    let out = tempfile::tempdir().map_err(|e| Error::Setup(e.to_string()))?;
    let repo = GitRepo::new()?;
    repo.write("main.tf", NEVER_CONVERGES)?;
    repo.write(
        "cairn.toml",
        &format!(
            "[deployments.default]\ninputs = {{ dir = {} }}\nauto_approve = true\n",
            toml_str(&out.path().display().to_string())
        ),
    )?;
    let sha = repo.commit_and_push("timestamps")?;
    server
        .create_stack(
            stack_spec("clock", &repo.url(), "", "terraform", false),
            vec![],
            &sha,
        )
        .await?;
    server.trigger("clock", pb::RunType::Tracked, &sha).await?;
    let runs = version_runs(&server, "clock", 1, &["default"]).await?;
    let run = wait_until(
        "the capped run to end",
        Duration::from_secs(300),
        || async {
            let r = server.get_run(&runs[0].id).await?;
            Ok(matches!(state_of(&r), S::Failed | S::Finished).then_some(r))
        },
    )
    .await;
    let run = match run {
        Ok(run) => run,
        Err(e) => {
            dump_run(&server, &runs[0].id).await?;
            eprintln!("agent log:\n{}", agent.log());
            return Err(e);
        }
    };
    assert_eq!(state_of(&run), S::Failed, "{:?}", run.error);
    assert_eq!(
        run.error,
        "did not converge after 2 cycles: the plan of cycle 3 still has changes"
    );
    assert_eq!(run.cycle, 3);
    assert_eq!(
        steps(&run),
        [
            (K::Plan, T::Success),
            (K::Apply, T::Success),
            (K::Plan, T::Success),
            (K::Apply, T::Success),
            (K::Plan, T::Failed),
        ]
    );
    lock_released(&server, "clock", "default").await?;
    Ok(())
}

/// The server releases the deployment lock when it handles the run's end, just after the run
/// turns terminal.
async fn lock_released(server: &TestServer, stack: &str, name: &str) -> Result<()> {
    wait_until("the deployment lock released", WAIT, || async {
        Ok(deployment(server, stack, name)
            .await?
            .lock_holder
            .is_empty()
            .then_some(()))
    })
    .await
}

fn code_of<T: std::fmt::Debug>(r: std::result::Result<T, tonic::Status>) -> (tonic::Code, String) {
    let e = r.expect_err("the request must be refused");
    (e.code(), e.message().to_string())
}

/// Bad deployment input is refused naming the field and the reason, and nothing is stored;
/// API deployments make a stack a deployment stack; a broken cairn.toml fails the run that
/// would have become deployment runs, naming the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_deployment_input_is_refused_and_nothing_is_stored() -> Result<()> {
    let server = TestServer::start(ServerOptions::default()).await?;
    let repo = GitRepo::new()?;
    repo.write("main.tf", "# nothing\n")?;
    let sha = repo.commit_and_push("empty")?;
    server
        .create_stack(
            stack_spec("api", &repo.url(), "", "terraform", false),
            vec![],
            &sha,
        )
        .await?;
    let create = |name: &str, inputs: &[(&str, &str)]| pb::CreateDeploymentRequest {
        stack_id: "api".into(),
        name: name.into(),
        inputs: inputs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    };
    let mut d = server.deployments();
    for bad in ["Prod", "1st", "", "prod.eu", "-x"] {
        let (code, msg) = code_of(d.create_deployment(create(bad, &[])).await);
        assert_eq!(code, tonic::Code::InvalidArgument, "{bad:?}: {msg}");
        assert!(msg.starts_with("invalid name: "), "{msg}");
    }
    let (code, msg) = code_of(
        d.create_deployment(create("dev", &[("region", "eu")]))
            .await,
    );
    assert_eq!(code, tonic::Code::InvalidArgument);
    assert!(msg.starts_with("invalid inputs.region: not JSON"), "{msg}");
    let (code, msg) = code_of(d.create_deployment(create("dev", &[("1x", "1")])).await);
    assert_eq!(code, tonic::Code::InvalidArgument);
    assert!(msg.contains("inputs.1x"), "{msg}");
    let (code, msg) = code_of(
        d.create_deployment(create(
            "dev",
            &[("vpc", r#"{"stack":"","deployment":"prod","output":"id"}"#)],
        ))
        .await,
    );
    assert_eq!(code, tonic::Code::InvalidArgument);
    assert!(msg.contains("inputs.vpc.stack"), "{msg}");
    let listed = |d: pb::ListDeploymentsResponse| d.deployments.len();
    let list = pb::ListDeploymentsRequest {
        stack_id: "api".into(),
    };
    assert_eq!(
        listed(d.list_deployments(list.clone()).await?.into_inner()),
        0
    );

    // A good one, then the same name again: it collides.
    let dev = d
        .create_deployment(create("dev", &[("region", "\"eu\""), ("replicas", "3")]))
        .await?
        .into_inner()
        .deployment
        .unwrap_or_default();
    assert_eq!(dev.inputs["region"], "\"eu\"");
    assert_eq!(dev.declared_in, "api");
    let (code, msg) = code_of(d.create_deployment(create("dev", &[])).await);
    assert_eq!(code, tonic::Code::AlreadyExists, "{msg}");
    assert!(msg.contains("collides"), "{msg}");
    assert_eq!(
        listed(d.list_deployments(list.clone()).await?.into_inner()),
        1
    );
    let (code, _) = code_of(
        d.create_deployment(pb::CreateDeploymentRequest {
            stack_id: "nope".into(),
            name: "dev".into(),
            ..Default::default()
        })
        .await,
    );
    assert_eq!(code, tonic::Code::NotFound);
    let (code, msg) = code_of(
        d.update_deployment(pb::UpdateDeploymentRequest {
            stack_id: "api".into(),
            name: "dev".into(),
            update_mask: vec!["colour".into()],
            ..Default::default()
        })
        .await,
    );
    assert_eq!(code, tonic::Code::InvalidArgument);
    assert!(msg.starts_with("invalid update_mask[0]"), "{msg}");

    // The stack now uses deployment runs: a manual fetch makes version 1 with a run for dev.
    let made = d
        .create_configuration_version(pb::CreateConfigurationVersionRequest {
            stack_id: "api".into(),
            commit_sha: String::new(),
            archive: Vec::new(),
        })
        .await?
        .into_inner();
    let v1 = made.configuration_version.unwrap_or_default();
    assert_eq!((v1.seq, v1.commit_sha.as_str()), (1, sha.as_str()));
    assert_eq!(v1.source, pb::ConfigSource::Manual as i32);
    assert_eq!(made.run_ids.len(), 1);
    let run = server.get_run(&made.run_ids[0]).await?;
    assert_eq!((run.deployment.as_str(), run.config_version), ("dev", 1));

    // Changing inputs is a new version (source INPUTS) with one run per deployment.
    let updated = d
        .update_deployment(pb::UpdateDeploymentRequest {
            stack_id: "api".into(),
            name: "dev".into(),
            inputs: [("region".to_string(), "\"us\"".to_string())].into(),
            update_mask: vec!["inputs".into()],
            ..Default::default()
        })
        .await?
        .into_inner();
    let v2 = updated.configuration_version.unwrap_or_default();
    assert_eq!((v2.seq, v2.source), (2, pb::ConfigSource::Inputs as i32));
    assert_eq!(v2.deployments[0].inputs["region"], "\"us\"");
    assert_eq!(updated.run_ids.len(), 1);

    // A malformed cairn.toml: the tracked run that would have become deployment runs fails,
    // naming the file; no version is made.
    repo.write("cairn.toml", "[deployments.Dev]\n")?;
    let bad = repo.commit_and_push("bad cairn.toml")?;
    server.sync("api", &bad).await?;
    let run = server.trigger("api", pb::RunType::Tracked, &bad).await?;
    let run = wait_until("the run to fail", WAIT, || async {
        let r = server.get_run(&run.id).await?;
        Ok((state_of(&r) == S::Failed).then_some(r))
    })
    .await?;
    assert!(
        run.error.contains("cairn.toml: deployments.Dev"),
        "the error names the file and the table: {:?}",
        run.error
    );
    assert_eq!(versions(&server, "api").await?.len(), 2, "no version made");
    Ok(())
}

/// Approving the older of two pending plans keeps the newer one: once the older version is
/// applied, the newer plan is re-run in full (ReplanRun without targets), approved and applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_plans_stay_rerunnable_after_an_older_one_is_approved() -> Result<()> {
    let server = TestServer::start(ServerOptions::default()).await?;
    let _agent = AgentProcess::start(
        &server,
        AgentOptions {
            max_jobs: 6,
            ..AgentOptions::named("rerun")
        },
    )
    .await?;
    let out = tempfile::tempdir().map_err(|e| Error::Setup(e.to_string()))?;
    let file = out.path().join("f.txt");
    let repo = GitRepo::new()?;
    let config = |content: &str| {
        cairn_tests::cairntest_config(
            None,
            &[cairn_tests::FileResource {
                name: "f",
                path: &file,
                content,
            }],
        )
    };
    repo.write("main.tf", &config("one"))?;
    repo.write("cairn.toml", "[deployments.default]\n")?;
    let first = repo.commit_and_push("one")?;
    server
        .create_stack(
            stack_spec("rerun", &repo.url(), "", "terraform", false),
            vec![],
            &first,
        )
        .await?;
    server
        .trigger("rerun", pb::RunType::Tracked, &first)
        .await?;
    let v1 = version_runs(&server, "rerun", 1, &["default"]).await?;
    let v1 = wait_run(&server, &v1[0].id, "v1 UNCONFIRMED", |r| {
        state_of(r) == S::Unconfirmed
    })
    .await?;
    repo.write("main.tf", &config("two"))?;
    push(&server, &repo, "rerun", "two").await?;
    let v2 = version_runs(&server, "rerun", 2, &["default"]).await?;
    let v2 = wait_run(&server, &v2[0].id, "v2 UNCONFIRMED", |r| {
        state_of(r) == S::Unconfirmed
    })
    .await?;

    server
        .runs()
        .confirm_run(pb::ConfirmRunRequest {
            run_id: v1.id.clone(),
        })
        .await?;
    wait_run(&server, &v1.id, "v1 FINISHED", |r| {
        state_of(r) == S::Finished
    })
    .await?;
    assert_eq!(read(&file).as_deref(), Some("one"));
    let v2 = server.get_run(&v2.id).await?;
    assert_eq!(
        state_of(&v2),
        S::Unconfirmed,
        "a newer plan is not dismissed"
    );

    server
        .runs()
        .replan_run(pb::ReplanRunRequest {
            run_id: v2.id.clone(),
            targets: vec![],
        })
        .await?;
    let v2 = wait_run(&server, &v2.id, "v2 planned again", |r| {
        state_of(r) == S::Unconfirmed
            && r.states_history
                .iter()
                .any(|t| t.state == S::ReplanRequested as i32)
    })
    .await?;
    let delta = v2.delta.unwrap_or_default();
    assert_eq!(
        (delta.added_resources, delta.changed_resources),
        (0, 1),
        "the fresh plan updates what v1 created"
    );
    server
        .runs()
        .confirm_run(pb::ConfirmRunRequest {
            run_id: v2.id.clone(),
        })
        .await?;
    wait_run(&server, &v2.id, "v2 FINISHED", |r| {
        state_of(r) == S::Finished
    })
    .await?;
    assert_eq!(read(&file).as_deref(), Some("two"));
    Ok(())
}

/// One `cairntest_file` in `${var.dir}/f.txt` with `content`.
fn one_file(content: &str) -> String {
    format!(
        r#"terraform {{
  required_providers {{
    cairntest = {{ source = "cairn.local/test/cairntest" }}
  }}
}}

variable "dir" {{
  type = string
}}

resource "cairntest_file" "f" {{
  path    = "${{var.dir}}/f.txt"
  content = {}
}}
"#,
        toml_str(content)
    )
}

/// A tar.gz of `entries` (path, type, content, link target). Names are written raw into the
/// header, as a hostile client would: the tar crate's own setters refuse `..`.
fn targz(entries: &[(&str, tar::EntryType, &[u8], &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::default(),
    ));
    for (path, kind, data, link) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        if let Some(gnu) = h.as_gnu_mut() {
            gnu.name[..path.len()].copy_from_slice(path.as_bytes());
        }
        if !link.is_empty() {
            h.set_link_name(link).expect("a short link name");
        }
        h.set_cksum();
        b.append(&h, *data)
            .expect("appending to an in-memory archive");
    }
    b.into_inner()
        .and_then(|e| e.finish())
        .expect("finishing an in-memory archive")
}

fn upload(stack: &str, archive: Vec<u8>) -> pb::CreateConfigurationVersionRequest {
    pb::CreateConfigurationVersionRequest {
        stack_id: stack.into(),
        commit_sha: String::new(),
        archive,
    }
}

/// An uploaded configuration (a tar.gz of the project root) makes a configuration version of
/// source UPLOAD whose deployments are its cairn.toml's merged with the API's; its runs plan
/// and apply the uploaded files, not the tracked commit's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploaded_configuration_plans_and_applies_the_uploaded_files() -> Result<()> {
    let server = TestServer::start(ServerOptions::default()).await?;
    let _agent = AgentProcess::start(
        &server,
        AgentOptions {
            max_jobs: 4,
            ..AgentOptions::named("uploads")
        },
    )
    .await?;
    let out = tempfile::tempdir().map_err(|e| Error::Setup(e.to_string()))?;
    let (api_dir, file_dir) = (out.path().join("api"), out.path().join("file"));
    let repo = GitRepo::new()?;
    repo.write("infra/main.tf", &one_file("from git"))?;
    let sha = repo.commit_and_push("git configuration")?;
    server
        .create_stack(
            stack_spec("up", &repo.url(), "infra", "terraform", false),
            vec![],
            &sha,
        )
        .await?;
    let mut d = server.deployments();
    d.create_deployment(pb::CreateDeploymentRequest {
        stack_id: "up".into(),
        name: "api".into(),
        inputs: [("dir".to_string(), toml_str(&api_dir.display().to_string()))].into(),
        auto_approve: true,
        ..Default::default()
    })
    .await?;
    let toml = format!(
        "[deployments.file]\ninputs = {{ dir = {} }}\nauto_approve = true\n",
        toml_str(&file_dir.display().to_string())
    );
    let main = one_file("uploaded");
    let made = d
        .create_configuration_version(upload(
            "up",
            targz(&[
                ("main.tf", tar::EntryType::Regular, main.as_bytes(), ""),
                ("cairn.toml", tar::EntryType::Regular, toml.as_bytes(), ""),
            ]),
        ))
        .await?
        .into_inner();
    let v1 = made.configuration_version.unwrap_or_default();
    assert_eq!(v1.seq, 1);
    assert_eq!(v1.source, pb::ConfigSource::Upload as i32);
    assert_eq!(v1.commit_sha, "", "an upload has no commit");
    assert_eq!(
        v1.content_digest.len(),
        64,
        "sha256 of the normalized archive"
    );
    assert_eq!(
        v1.deployments
            .iter()
            .map(|d| d.name.as_str())
            .collect::<Vec<_>>(),
        ["api", "file"]
    );
    assert_eq!(made.run_ids.len(), 2);

    let runs = version_runs(&server, "up", 1, &["api", "file"]).await?;
    for run in &runs {
        let done = wait_run(&server, &run.id, "uploaded run FINISHED", |r| {
            state_of(r) == S::Finished
        })
        .await?;
        assert_eq!(
            steps(&done),
            [
                (K::Plan, T::Success),
                (K::Apply, T::Success),
                (K::Plan, T::Success),
            ],
            "plan, apply, then the empty plan of the same upload"
        );
        let logs = log_text(&server, &run.id).await?;
        assert!(
            logs.contains("Restoring the uploaded configuration"),
            "{logs}"
        );
        assert!(!logs.contains("Checking out"), "{logs}");
    }
    assert_eq!(read(&api_dir.join("f.txt")).as_deref(), Some("uploaded"));
    assert_eq!(read(&file_dir.join("f.txt")).as_deref(), Some("uploaded"));

    // The same files in another order and with other metadata: the same content digest.
    let again = d
        .create_configuration_version(upload(
            "up",
            targz(&[
                ("./cairn.toml", tar::EntryType::Regular, toml.as_bytes(), ""),
                ("./main.tf", tar::EntryType::Regular, main.as_bytes(), ""),
            ]),
        ))
        .await?
        .into_inner()
        .configuration_version
        .unwrap_or_default();
    assert_eq!(again.seq, 2);
    assert_eq!(again.content_digest, v1.content_digest);
    Ok(())
}

/// Bad archives are refused naming the field and the reason, and nothing is stored: no
/// configuration version, no run, no upload in the artifact directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_uploads_are_refused_and_nothing_is_stored() -> Result<()> {
    let server = TestServer::start(ServerOptions {
        deployment_upload_max_bytes: 4096,
        ..ServerOptions::default()
    })
    .await?;
    let repo = GitRepo::new()?;
    repo.write("main.tf", "# nothing\n")?;
    let sha = repo.commit_and_push("empty")?;
    server
        .create_stack(
            stack_spec("bad", &repo.url(), "", "terraform", false),
            vec![],
            &sha,
        )
        .await?;
    let mut d = server.deployments();
    d.create_deployment(pb::CreateDeploymentRequest {
        stack_id: "bad".into(),
        name: "dev".into(),
        ..Default::default()
    })
    .await?;
    let file = |path: &'static str| (path, tar::EntryType::Regular, &b"x"[..], "");
    let link = |path: &'static str, to: &'static str| (path, tar::EntryType::Symlink, &b""[..], to);
    // Incompressible: its tar.gz stays over the 4096-byte limit.
    let mut noise = Vec::with_capacity(8192);
    let mut x: u32 = 0x9e37_79b9;
    for _ in 0..8192 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        noise.push(x as u8);
    }
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "not gzip",
            b"main.tf".to_vec(),
            "invalid archive: is not gzip-compressed",
        ),
        (
            "gzip but not tar",
            {
                use std::io::Write;
                let mut e =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                e.write_all(&[7u8; 2048]).expect("in memory");
                e.finish().expect("in memory")
            },
            "invalid archive: is not a tar.gz",
        ),
        (
            "parent path",
            targz(&[file("main.tf"), file("../escape.tf")]),
            "invalid archive: entry ../escape.tf leaves the tree (..)",
        ),
        (
            "absolute path",
            targz(&[file("/etc/cron.d/x")]),
            "invalid archive: entry /etc/cron.d/x is absolute",
        ),
        (
            "symlink out of the tree",
            targz(&[file("main.tf"), link("modules/m", "../../outside")]),
            "invalid archive: symlink modules/m points out of the tree (../../outside)",
        ),
        (
            "absolute symlink",
            targz(&[link("passwd", "/etc/passwd")]),
            "invalid archive: symlink passwd points out of the tree (/etc/passwd)",
        ),
        (
            "too large",
            targz(&[("main.tf", tar::EntryType::Regular, &noise, "")]),
            "invalid archive: is ",
        ),
    ];
    for (what, archive, expected) in cases {
        let size = archive.len();
        let (code, msg) = code_of(d.create_configuration_version(upload("bad", archive)).await);
        assert_eq!(code, tonic::Code::InvalidArgument, "{what}: {msg}");
        assert!(msg.starts_with(expected), "{what}: {msg}");
        if what == "too large" {
            assert!(
                msg.ends_with(&format!("{size} bytes, more than the limit of 4096")),
                "{msg}"
            );
        }
    }
    let (code, msg) = code_of(
        d.create_configuration_version(pb::CreateConfigurationVersionRequest {
            commit_sha: sha.clone(),
            ..upload("bad", targz(&[file("main.tf")]))
        })
        .await,
    );
    assert_eq!(code, tonic::Code::InvalidArgument);
    assert_eq!(
        msg,
        "invalid commit_sha: must be empty when an archive is uploaded"
    );
    let (code, msg) = code_of(
        d.create_configuration_version(upload(
            "bad",
            targz(&[
                file("main.tf"),
                ("cairn.toml", tar::EntryType::Regular, b"[deployments", ""),
            ]),
        ))
        .await,
    );
    assert_eq!(code, tonic::Code::InvalidArgument, "{msg}");
    assert!(msg.contains("cairn.toml"), "{msg}");

    assert!(versions(&server, "bad").await?.is_empty());
    assert!(runs_at(&server, "bad", 1).await?.is_empty());
    let artifacts = server.data_dir.join("artifacts");
    let stored: Vec<String> = std::fs::read_dir(&artifacts)
        .map_err(|e| Error::Setup(format!("{}: {e}", artifacts.display())))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(stored.is_empty(), "nothing stored: {stored:?}");

    // A good archive is taken after all that.
    let v = d
        .create_configuration_version(upload("bad", targz(&[file("main.tf")])))
        .await?
        .into_inner();
    let version = v.configuration_version.unwrap_or_default();
    assert_eq!(
        (version.seq, version.source),
        (1, pb::ConfigSource::Upload as i32)
    );
    assert_eq!(v.run_ids.len(), 1);
    Ok(())
}

/// SyncStack on a deployment stack makes a configuration version (source MANUAL) of the
/// commit it moves to, with one run per deployment, as CreateConfigurationVersion does; the
/// same commit again makes none, and a stack without deployments gets none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_stack_makes_a_configuration_version_on_a_deployment_stack() -> Result<()> {
    let server = TestServer::start(ServerOptions::default()).await?;
    let repo = GitRepo::new()?;
    repo.write("main.tf", "# first\n")?;
    let first = repo.commit_and_push("first")?;
    for id in ["plain", "deployed"] {
        server
            .create_stack(
                stack_spec(id, &repo.url(), "", "terraform", false),
                vec![],
                &first,
            )
            .await?;
    }
    let mut d = server.deployments();
    d.create_deployment(pb::CreateDeploymentRequest {
        stack_id: "deployed".into(),
        name: "dev".into(),
        ..Default::default()
    })
    .await?;
    repo.write("main.tf", "# second\n")?;
    let second = repo.commit_and_push("second")?;
    for id in ["plain", "deployed"] {
        server.sync(id, &second).await?;
    }
    assert!(versions(&server, "plain").await?.is_empty());
    let v = versions(&server, "deployed").await?;
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(
        (v[0].seq, v[0].source, v[0].commit_sha.as_str()),
        (1, pb::ConfigSource::Manual as i32, second.as_str())
    );
    let runs = runs_at(&server, "deployed", 1).await?;
    assert_eq!(
        runs.iter()
            .map(|r| (r.deployment.as_str(), r.triggered_by.as_str()))
            .collect::<Vec<_>>(),
        [("dev", "config_version:manual")]
    );
    // Syncing to the same commit again: nothing new.
    server.sync("deployed", &second).await?;
    assert_eq!(versions(&server, "deployed").await?.len(), 1);
    Ok(())
}
