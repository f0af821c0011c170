//! End to end: a stack's outputs as another stack's deployment inputs (HCP Terraform's
//! `upstream_input`), with a real server, a real `cairn agent`, the Terraform plugin and real
//! Terraform 1.0.3 keeping its state in Cairn.

use std::path::Path;

use cairn_tests::{
    log_text, pb, stack_spec, state_of, wait_until, AgentOptions, AgentProcess, Error, GitRepo,
    Result, ServerOptions, TestServer, WAIT,
};
use pb::RunState as S;

/// `net`: one file standing for a network, its id as output `vpc_id`.
fn net_tf(out: &Path, vpc: &str) -> String {
    format!(
        r#"terraform {{
  required_providers {{
    cairntest = {{ source = "cairn.local/test/cairntest" }}
  }}
}}

resource "cairntest_file" "vpc" {{
  path    = "{}/vpc.txt"
  content = "{vpc}"
}}

output "vpc_id" {{
  value = cairntest_file.vpc.content
}}
"#,
        out.display()
    )
}

/// `app`: writes the network it was given (input `vpc_id`) into a file.
fn app_tf(out: &Path, name: &str) -> String {
    format!(
        r#"terraform {{
  required_providers {{
    cairntest = {{ source = "cairn.local/test/cairntest" }}
  }}
}}

variable "vpc_id" {{
  type = string
}}

resource "cairntest_file" "app" {{
  path    = "{}/{name}.txt"
  content = "app in ${{var.vpc_id}}"
}}
"#,
        out.display()
    )
}

fn consumer_toml(output: &str) -> String {
    format!(
        "[deployments.default]\n\
         inputs = {{ vpc_id = {{ stack = \"net\", deployment = \"default\", output = \"{output}\" }} }}\n"
    )
}

async fn wait_state(server: &TestServer, run_id: &str, want: S) -> Result<pb::Run> {
    let res = wait_until(&format!("run {run_id} {want:?}"), WAIT, || async {
        let run = server.get_run(run_id).await?;
        let s = state_of(&run);
        if s == want {
            return Ok(Some(run));
        }
        if matches!(
            s,
            S::Finished | S::Failed | S::Discarded | S::Canceled | S::Stopped
        ) {
            return Err(Error::Check(format!(
                "run {run_id} ended {s:?} (error {:?}) instead of {want:?}",
                run.error
            )));
        }
        Ok(None)
    })
    .await;
    if res.is_err() {
        eprintln!(
            "logs of {run_id}:\n{}",
            log_text(server, run_id).await.unwrap_or_default()
        );
    }
    res
}

/// Confirms a deployment run waiting for approval and waits for it to finish.
async fn confirm_and_finish(server: &TestServer, run_id: &str) -> Result<pb::Run> {
    wait_state(server, run_id, S::Unconfirmed).await?;
    server
        .runs()
        .confirm_run(pb::ConfirmRunRequest {
            run_id: run_id.into(),
        })
        .await?;
    wait_state(server, run_id, S::Finished).await
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

/// The newest run of the stack built from configuration version `seq`.
async fn run_at(server: &TestServer, stack: &str, seq: i64) -> Result<pb::Run> {
    wait_until(
        &format!("a run of {stack} at configuration version {seq}"),
        WAIT,
        || async {
            Ok(server
                .runs()
                .list_runs(pb::ListRunsRequest {
                    stack_id: stack.into(),
                    page: None,
                })
                .await?
                .into_inner()
                .runs
                .into_iter()
                .find(|r| r.config_version == seq))
        },
    )
    .await
}

/// `net` applies `vpc-1`; `app` (a deployment whose input `vpc_id` is net's output) is built
/// with it; net changes its output to `vpc-2`, which creates configuration version 2 of `app`
/// (source UPSTREAM) and a run whose plan and apply use the new value. A deployment referring
/// to an output net does not have fails before planning, naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_upstream_output_reruns_its_consumers_with_the_new_value() -> Result<()> {
    let server = TestServer::start(ServerOptions::default()).await?;
    let _agent = AgentProcess::start(&server, AgentOptions::named("upstream")).await?;
    let out = tempfile::tempdir().map_err(|e| Error::Setup(e.to_string()))?;
    let repo = GitRepo::new()?;
    repo.write("net/main.tf", &net_tf(out.path(), "vpc-1"))?;
    repo.write("app/main.tf", &app_tf(out.path(), "app"))?;
    repo.write("app/cairn.toml", &consumer_toml("vpc_id"))?;
    repo.write("broken/main.tf", &app_tf(out.path(), "broken"))?;
    repo.write("broken/cairn.toml", &consumer_toml("subnet_id"))?;
    let first = repo.commit_and_push("net, app and broken")?;

    // net applies first (autodeploy): its state, written through Cairn, has vpc_id = vpc-1.
    server
        .create_stack(
            stack_spec("net", &repo.url(), "net", "terraform", true),
            vec![],
            &first,
        )
        .await?;
    let net1 = server.trigger("net", pb::RunType::Tracked, &first).await?;
    wait_state(&server, &net1.id, S::Finished).await?;

    server
        .create_stack(
            stack_spec("app", &repo.url(), "app", "terraform", false),
            vec![],
            &first,
        )
        .await?;
    server.trigger("app", pb::RunType::Tracked, &first).await?;
    let app1 = run_at(&server, "app", 1).await?;
    confirm_and_finish(&server, &app1.id).await?;
    let app_file = out.path().join("app.txt");
    assert_eq!(
        std::fs::read_to_string(&app_file).ok().as_deref(),
        Some("app in vpc-1")
    );

    // net's output changes: app gets a new configuration version from upstream, and a run.
    repo.write("net/main.tf", &net_tf(out.path(), "vpc-2"))?;
    let second = repo.commit_and_push("net: vpc-2")?;
    server.sync("net", &second).await?;
    let net2 = server.trigger("net", pb::RunType::Tracked, &second).await?;
    wait_state(&server, &net2.id, S::Finished).await?;
    let v2 = wait_until("configuration version 2 of app", WAIT, || async {
        Ok(versions(&server, "app")
            .await?
            .into_iter()
            .find(|v| v.seq == 2))
    })
    .await?;
    assert_eq!(v2.source(), pb::ConfigSource::Upstream);
    assert_eq!(v2.commit_sha, first, "app's own configuration is unchanged");
    let app2 = run_at(&server, "app", 2).await?;
    let planned = wait_state(&server, &app2.id, S::Unconfirmed).await?;
    assert_eq!(
        planned.delta.as_ref().map(|d| d.changed_resources),
        Some(1),
        "the plan sees the new value"
    );
    let done = confirm_and_finish(&server, &app2.id).await?;
    assert_eq!(state_of(&done), S::Finished);
    assert_eq!(
        std::fs::read_to_string(&app_file).ok().as_deref(),
        Some("app in vpc-2")
    );
    let logs = log_text(&server, &app2.id).await?;
    assert!(
        logs.contains("input vpc_id of deployment default reads output vpc_id of net/default"),
        "{logs}"
    );
    // Only app consumes net: net itself got no configuration version.
    assert!(versions(&server, "net").await?.is_empty());

    // A reference to an output net does not have: the run fails before planning, naming it.
    server
        .create_stack(
            stack_spec("broken", &repo.url(), "broken", "terraform", false),
            vec![],
            &first,
        )
        .await?;
    server
        .trigger("broken", pb::RunType::Tracked, &first)
        .await?;
    let broken = run_at(&server, "broken", 1).await?;
    let failed = wait_until("broken's run to fail", WAIT, || async {
        let run = server.get_run(&broken.id).await?;
        Ok((state_of(&run) == S::Failed).then_some(run))
    })
    .await?;
    assert!(
        failed.error.contains("\"subnet_id\"")
            && failed.error.contains("stack net")
            && failed.error.contains("deployment default"),
        "{}",
        failed.error
    );
    assert!(!out.path().join("broken.txt").exists());
    Ok(())
}
