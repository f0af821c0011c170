//! One trace per run: a `cairn server` and a `cairn agent` process export to an in-process OTLP
//! collector, and the spans of one Terraform run (plan job, confirmation, apply job) form one
//! trace: the server's, then the agent's under the server's phase spans, then the Terraform
//! plugin's (exporting to the endpoint the agent hands it) under the agent's plugin calls.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use cairn_telemetry::testing::{CollectedSpan, Collector};
use cairn_tests::{
    cairntest_config, pb, stack_spec, AgentOptions, AgentProcess, Error, FileResource, GitRepo,
    Result, ServerOptions, TestServer,
};
use pb::RunState as S;

/// `service.name` of the Terraform plugin's spans: its executable's name.
const PLUGIN: &str = "cairn-runner-terraform";

fn collector_err(e: cairn_telemetry::Error) -> Error {
    Error::Check(format!("collector: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_per_run_across_server_and_agent() -> Result<()> {
    let collector = Collector::start().await.map_err(collector_err)?;
    let server = TestServer::spawn(ServerOptions {
        otlp_endpoint: Some(collector.endpoint()),
        ..Default::default()
    })
    .await?;
    let mut agent = AgentProcess::start(
        &server,
        AgentOptions {
            otlp_endpoint: Some(collector.endpoint()),
            ..AgentOptions::named("traced")
        },
    )
    .await?;

    let out = tempfile::tempdir().map_err(|e| Error::Setup(e.to_string()))?;
    let file = out.path().join("traced.txt");
    let repo = GitRepo::new()?;
    repo.write(
        "main.tf",
        &cairntest_config(
            None,
            &[FileResource {
                name: "traced",
                path: &file,
                content: "traced",
            }],
        ),
    )?;
    let sha = repo.commit_and_push("traced")?;
    server
        .create_stack(
            stack_spec("traced", &repo.url(), "", "terraform", false),
            vec![],
            &sha,
        )
        .await?;
    let run = server.trigger("traced", pb::RunType::Tracked, "").await?;
    server.wait(&run.id, &[S::Unconfirmed]).await?;
    server
        .runs()
        .confirm_run(pb::ConfirmRunRequest {
            run_id: run.id.clone(),
        })
        .await?;
    server.wait(&run.id, &[S::Finished]).await?;

    // A graceful stop flushes each process's pending spans.
    agent.terminate().await?;
    server.stop().await?;

    let wait = Duration::from_secs(60);
    let trigger = collector
        .wait_for("the TriggerRun span", wait, |s| {
            s.name == "cairn.v1.RunService/TriggerRun"
        })
        .await
        .map_err(collector_err)?;
    let spans = collector.spans();
    let of_run: Vec<&CollectedSpan> = spans
        .iter()
        .filter(|s| s.attr("run.id") == Some(run.id.as_str()))
        .collect();
    let services: HashSet<&str> = of_run.iter().filter_map(|s| s.service_name()).collect();
    assert!(
        services.contains("cairn-server")
            && services.contains("cairn-agent")
            && services.contains(PLUGIN),
        "spans of the run come from the server, the agent and the plugin: {services:?}"
    );
    let traces: HashSet<&str> = of_run.iter().map(|s| s.trace_id.as_str()).collect();
    assert_eq!(
        traces,
        HashSet::from([trigger.trace_id.as_str()]),
        "every span about the run is in the trace TriggerRun started"
    );

    let trace: Vec<&CollectedSpan> = spans
        .iter()
        .filter(|s| s.trace_id == trigger.trace_id)
        .collect();
    let by_id: HashMap<&str, &CollectedSpan> =
        trace.iter().map(|s| (s.span_id.as_str(), *s)).collect();
    eprintln!("trace {}:\n{}", trigger.trace_id, render(&trace));
    // Correct parenting: the trace has one root and no span points at a parent that was never
    // exported.
    let roots: Vec<&str> = trace
        .iter()
        .filter(|s| s.parent_span_id.is_none())
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(roots.len(), 1, "one root: {roots:?}");
    for s in &trace {
        if let Some(p) = &s.parent_span_id {
            assert!(
                by_id.contains_key(p.as_str()),
                "{} ({:?}) has a parent outside the trace",
                s.name,
                s.service_name()
            );
        }
    }

    // Both leases (plan, then apply after confirmation) run as agent `job` spans directly under
    // a server `run.phase` span, and the agent's steps nest under its job.
    let jobs: Vec<&&CollectedSpan> = trace
        .iter()
        .filter(|s| s.name == "job" && s.service_name() == Some("cairn-agent"))
        .collect();
    assert_eq!(jobs.len(), 2, "a plan job and an apply job");
    for job in &jobs {
        let parent = job
            .parent_span_id
            .as_deref()
            .and_then(|p| by_id.get(p))
            .ok_or_else(|| Error::Check("job span without parent".into()))?;
        assert_eq!(parent.name, "run.phase");
        assert_eq!(parent.service_name(), Some("cairn-server"));
    }
    let ancestors_include = |s: &CollectedSpan, ancestor: &str| {
        let mut cur = s.parent_span_id.as_deref();
        while let Some(id) = cur {
            if id == ancestor {
                return true;
            }
            cur = by_id.get(id).and_then(|p| p.parent_span_id.as_deref());
        }
        false
    };
    for step in ["checkout", "plan", "apply"] {
        let found = trace
            .iter()
            .find(|s| s.name == step && s.service_name() == Some("cairn-agent"))
            .ok_or_else(|| Error::Check(format!("no agent `{step}` span in the trace")))?;
        assert!(
            jobs.iter().any(|j| ancestors_include(found, &j.span_id)),
            "`{step}` nests under a job span"
        );
    }

    // The plugin continues the trace the agent sends with each call: its Plan and Apply server
    // spans hang directly under the agent's `plan` and `apply` spans, its vendor commands under
    // those, and nothing of the plugin's starts a trace of its own or hangs under another service
    // than the agent.
    let plugin_spans: Vec<&&CollectedSpan> = trace
        .iter()
        .filter(|s| s.service_name() == Some(PLUGIN))
        .collect();
    let mut rpc_spans = Vec::new();
    for (rpc, agent_step) in [
        ("cairn.runner.v1.RunnerService/Plan", "plan"),
        ("cairn.runner.v1.RunnerService/Apply", "apply"),
    ] {
        let served = plugin_spans
            .iter()
            .find(|s| s.name == rpc)
            .ok_or_else(|| Error::Check(format!("no plugin `{rpc}` span in the trace")))?;
        let parent = served
            .parent_span_id
            .as_deref()
            .and_then(|p| by_id.get(p))
            .ok_or_else(|| Error::Check(format!("plugin `{rpc}` span without parent")))?;
        assert_eq!(
            (parent.name.as_str(), parent.service_name()),
            (agent_step, Some("cairn-agent")),
            "plugin `{rpc}` is a child of the agent's `{agent_step}` span"
        );
        assert_eq!(served.attr("rpc.system"), Some("grpc"));
        rpc_spans.push(served.span_id.as_str());
    }
    for step in ["init", "plan", "show", "apply"] {
        let found = plugin_spans
            .iter()
            .find(|s| s.name == step)
            .ok_or_else(|| Error::Check(format!("no plugin `{step}` span in the trace")))?;
        assert_eq!(found.attr("run.id"), Some(run.id.as_str()), "{step}");
        assert!(
            found.attr("stack.id").is_some_and(|id| !id.is_empty()),
            "plugin `{step}` carries the stack id"
        );
        assert!(
            rpc_spans.iter().any(|rpc| ancestors_include(found, rpc)),
            "plugin `{step}` nests under the plugin's Plan or Apply span"
        );
    }
    for s in &plugin_spans {
        let parent = s
            .parent_span_id
            .as_deref()
            .and_then(|p| by_id.get(p))
            .ok_or_else(|| Error::Check(format!("plugin span `{}` is a root", s.name)))?;
        assert!(
            matches!(parent.service_name(), Some(PLUGIN | "cairn-agent")),
            "plugin span `{}` hangs under {:?}",
            s.name,
            parent.service_name()
        );
    }
    assert_eq!(
        std::fs::read_to_string(&file).ok().as_deref(),
        Some("traced")
    );
    Ok(())
}

/// The trace as an indented tree (service: name), printed for whoever reads a failure.
fn render(trace: &[&CollectedSpan]) -> String {
    fn walk(trace: &[&CollectedSpan], parent: Option<&str>, depth: usize, out: &mut String) {
        for s in trace
            .iter()
            .filter(|s| s.parent_span_id.as_deref() == parent)
        {
            out.push_str(&format!(
                "{}{}: {}\n",
                "  ".repeat(depth),
                s.service_name().unwrap_or("?"),
                s.name
            ));
            walk(trace, Some(&s.span_id), depth + 1, out);
        }
    }
    let mut out = String::new();
    walk(trace, None, 0, &mut out);
    out
}
