//! The agent continues the run's trace from the lease and hands it to the plugin. Own test
//! binary: it installs the process-wide telemetry subscriber.

mod support;

use std::time::Duration;

use cairn_proto::agent::v1::{job_event, JobKind};
use cairn_telemetry::testing::Collector;
use cairn_telemetry::TelemetryConfig;
use support::{config, lease, make_repo, Agent, Plane};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const REMOTE_PARENT: &str = "00f067aa0ba902b7";
const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_spans_continue_the_run_trace_and_reach_the_plugin() {
    let collector = Collector::start().await.expect("collector starts");
    let guard = cairn_telemetry::init(
        TelemetryConfig::new("cairn-agent-test")
            .with_otlp_endpoint(collector.endpoint())
            .with_log_filter("info")
            .with_export_interval(Duration::from_millis(100)),
    )
    .expect("telemetry initialises");

    let tmp = tempfile::tempdir().unwrap();
    let (repo, sha) = make_repo(tmp.path());
    let plane = Plane::start(None).await;
    let agent = Agent::spawn(config(&plane, &tmp.path().join("work")));

    let mut plan = lease("trace-plan", "run-t", JobKind::Plan, &repo, &sha);
    plan.upload_workspace = true;
    plane.send_lease(plan).await;
    let stored = plane
        .wait_event("trace-plan", "workspace_stored", |e| match e {
            job_event::Event::WorkspaceStored(s) => Some(s.clone()),
            _ => None,
        })
        .await;
    let mut apply = lease("trace-apply", "run-t", JobKind::Apply, &repo, &sha);
    apply.artifact_id = stored.artifact_id;
    plane.send_lease(apply).await;
    assert!(matches!(
        plane.wait_end("trace-apply", JobKind::Apply).await,
        job_event::Event::ApplyResult(r) if r.success
    ));
    agent.shutdown().await;
    tokio::task::spawn_blocking(move || guard.flush().expect("flush"))
        .await
        .unwrap();

    let in_trace = |name: &'static str| {
        let collector = &collector;
        async move {
            collector
                .wait_for(name, WAIT, |s| s.name == name && s.trace_id == TRACE_ID)
                .await
                .unwrap_or_else(|e| panic!("{e}"))
        }
    };
    let job = collector
        .wait_for("plan job span", WAIT, |s| {
            s.name == "job" && s.attr("lease.id") == Some("trace-plan")
        })
        .await
        .unwrap();
    assert_eq!(job.trace_id, TRACE_ID);
    assert_eq!(job.parent_span_id.as_deref(), Some(REMOTE_PARENT));
    for name in ["checkout", "init", "plan", "upload", "download", "apply"] {
        let span = in_trace(name).await;
        assert_eq!(span.attr("run.id"), Some("run-t"), "{name}");
        assert_eq!(span.attr("stack.id"), Some("stack-1"), "{name}");
    }
    let checkout = in_trace("checkout").await;
    assert!(checkout.is_child_of(&job));

    // The plugin saw the plan span as its parent.
    let plan_span = in_trace("plan").await;
    let expected = format!("traceparent 00-{TRACE_ID}-{}-01", plan_span.span_id);
    assert!(
        plane
            .logs("trace-plan")
            .iter()
            .any(|l| l.message == expected),
        "{:?}",
        plane.logs("trace-plan")
    );
}
