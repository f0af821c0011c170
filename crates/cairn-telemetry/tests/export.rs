//! Spans emitted through the subscriber installed by `init` reach a real
//! OTLP/gRPC collector with their names, attributes, events, resource and
//! parent links.

use std::time::Duration;

use cairn_telemetry::propagation::{span_id_of, trace_id_of};
use cairn_telemetry::testing::Collector;
use cairn_telemetry::TelemetryConfig;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_the_collector_with_attributes_and_parent_links() {
    let collector = Collector::start().await.expect("collector starts");
    let guard = cairn_telemetry::init(
        TelemetryConfig::new("telemetry-export-test")
            .with_otlp_endpoint(collector.endpoint())
            .with_log_filter("info")
            .with_export_interval(Duration::from_millis(100)),
    )
    .expect("telemetry initialises");
    assert!(guard.exporting());

    let (root_trace, root_id, child_id) = {
        let root = tracing::info_span!("run.plan", run.id = "run-42", stack = "networking");
        let _entered = root.enter();
        let child = tracing::info_span!("vendor.terraform", resources = 3_i64, destroy = false);
        child.in_scope(|| tracing::info!("plan computed"));
        (
            trace_id_of(&root).expect("root has a trace id"),
            span_id_of(&root).expect("root has a span id"),
            span_id_of(&child).expect("child has a span id"),
        )
    };
    // Spans below the filter level never exist, so they cannot be exported.
    tracing::debug_span!("filtered.out").in_scope(|| {});

    // Flushing is not required (the batch interval exports too) but proves
    // the guard's flush reaches the collector.
    let guard = tokio::task::spawn_blocking(move || {
        guard.flush().expect("flush succeeds");
        guard
    })
    .await
    .expect("flush task");

    let root = collector.wait_for_span("run.plan", WAIT).await.unwrap();
    let child = collector
        .wait_for_span("vendor.terraform", WAIT)
        .await
        .unwrap();

    assert_eq!(root.trace_id, root_trace);
    assert_eq!(root.span_id, root_id);
    assert_eq!(root.parent_span_id, None);
    assert_eq!(root.attr("run.id"), Some("run-42"));
    assert_eq!(root.attr("stack"), Some("networking"));
    assert_eq!(root.service_name(), Some("telemetry-export-test"));

    assert_eq!(child.span_id, child_id);
    assert!(
        child.is_child_of(&root),
        "{child:?} is not a child of {root:?}"
    );
    assert_eq!(child.attr("resources"), Some("3"));
    assert_eq!(child.attr("destroy"), Some("false"));
    assert!(
        child.events.iter().any(|e| e == "plan computed"),
        "events: {:?}",
        child.events
    );

    assert!(collector.spans_named("filtered.out").is_empty());
    // The exporter's own transport must not trace itself.
    for span in collector.spans() {
        assert!(
            !span.name.starts_with("h2") && !span.name.starts_with("hyper"),
            "transport span exported: {span:?}"
        );
    }
    drop(guard);
}
