//! Traces: a span per RPC and per run phase, exported over OTLP to an in-process collector; the
//! lease carries the run's trace context.

mod common;

use std::time::Duration;

use cairn_proto::v1 as pb;
use cairn_telemetry::testing::Collector;
use cairn_telemetry::TelemetryConfig;
use common::*;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn rpcs_and_run_phases_are_traced_and_the_lease_joins_the_run_trace() {
    let collector = Collector::start().await.unwrap();
    let _guard = cairn_telemetry::init(
        TelemetryConfig::new("cairn-server-test")
            .with_otlp_endpoint(collector.endpoint())
            .with_export_interval(Duration::from_millis(100)),
    )
    .unwrap();
    let s = TestServer::start().await;
    s.stack("app", false, SHA_A).await;
    let mut agent = TestAgent::connect(&s, 1).await;
    let run = s.trigger("app", pb::RunType::Proposed).await;
    let lease = agent.lease().await;
    agent.plan_through(&lease, &["aws_s3_bucket.a"]).await;
    s.wait_state(&run.id, pb::RunState::Finished).await;

    let trigger = collector
        .wait_for_span("cairn.v1.RunService/TriggerRun", WAIT)
        .await
        .unwrap();
    assert_eq!(trigger.attr("rpc.method"), Some("TriggerRun"));
    assert_eq!(trigger.attr("rpc.service"), Some("cairn.v1.RunService"));
    let planning = collector
        .wait_for("planning phase span", WAIT, |sp| {
            sp.name == "run.phase" && sp.attr("run.phase") == Some("PHASE_PLANNING")
        })
        .await
        .unwrap();
    assert_eq!(planning.attr("run.id"), Some(run.id.as_str()));
    assert_eq!(planning.attr("stack.id"), Some("app"));
    assert_eq!(planning.attr("run.state"), Some("PLANNING"));
    assert_eq!(
        planning.trace_id, trigger.trace_id,
        "phases join the run's trace"
    );
    // traceparent = 00-<trace id>-<span id>-<flags>
    let parts: Vec<_> = lease.traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{}", lease.traceparent);
    assert_eq!(parts[1], trigger.trace_id);
}
