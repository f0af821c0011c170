//! Trace context crosses a real gRPC hop (client interceptor → server
//! layer) and a plain `traceparent` string, and both sides' spans arrive
//! at the collector in one trace.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_telemetry::grpc::{GrpcTraceLayer, TraceContextInterceptor};
use cairn_telemetry::propagation::{self, span_id_of, trace_id_of};
use cairn_telemetry::testing::Collector;
use cairn_telemetry::TelemetryConfig;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
use tracing::Instrument as _;

const WAIT: Duration = Duration::from_secs(60);
const METHOD: &str = "opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// An application service (it happens to speak the OTLP trace API because
/// that proto is at hand): it records the traceparent its handler sees and
/// rejects requests that carry data, to exercise error statuses.
#[derive(Clone, Default)]
struct Probe {
    seen: Arc<Mutex<Vec<Option<String>>>>,
}

#[tonic::async_trait]
impl TraceService for Probe {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        async {
            tracing::info!("handling");
        }
        .instrument(tracing::info_span!("probe.handler"))
        .await;
        self.seen
            .lock()
            .unwrap()
            .push(propagation::current_traceparent());
        if request.into_inner().resource_spans.is_empty() {
            Ok(tonic::Response::new(ExportTraceServiceResponse {
                partial_success: None,
            }))
        } else {
            Err(tonic::Status::invalid_argument("probe rejects data"))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_context_crosses_grpc_and_traceparent_strings() {
    let collector = Collector::start().await.expect("collector starts");
    let guard = cairn_telemetry::init(
        TelemetryConfig::new("telemetry-propagation-test")
            .with_otlp_endpoint(collector.endpoint())
            .with_log_filter("info")
            .with_export_interval(Duration::from_millis(100)),
    )
    .expect("telemetry initialises");

    // The application server, with the tracing layer.
    let probe = Probe::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .layer(GrpcTraceLayer)
            .add_service(TraceServiceServer::new(probe.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("client connects");
    let mut client = TraceServiceClient::with_interceptor(channel, TraceContextInterceptor);

    // 1. A successful call made inside a client span.
    let call = tracing::info_span!("client.call");
    let (call_trace, call_id) = (trace_id_of(&call).unwrap(), span_id_of(&call).unwrap());
    client
        .export(ExportTraceServiceRequest::default())
        .instrument(call.clone())
        .await
        .expect("call succeeds");
    drop(call);

    // 2. A failing call, in its own trace.
    let failing = tracing::info_span!("client.failing");
    let failing_trace = trace_id_of(&failing).unwrap();
    let status = client
        .export(ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans::default()],
        })
        .instrument(failing.clone())
        .await
        .expect_err("call fails");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    drop(failing);

    // 3. A traceparent string handed from one side to the other (as the
    //    agent does through a plugin's environment).
    let sender = tracing::info_span!("job.sender");
    let traceparent = propagation::traceparent_of(&sender).expect("sender has a context");
    let receiver = tracing::info_span!("job.receiver");
    propagation::set_parent_from_traceparent(&receiver, &traceparent).unwrap();
    receiver.in_scope(|| tracing::info!("received"));
    let (sender_trace, sender_id) = (trace_id_of(&sender).unwrap(), span_id_of(&sender).unwrap());
    drop((sender, receiver));

    let servers = collector.wait_for_spans(METHOD, 2, WAIT).await.unwrap();
    let ok = servers
        .iter()
        .find(|s| s.trace_id == call_trace)
        .expect("server span in the caller's trace");
    assert_eq!(ok.parent_span_id.as_deref(), Some(call_id.as_str()));
    assert_eq!(ok.kind, 2, "server kind");
    assert_eq!(ok.attr("rpc.system"), Some("grpc"));
    assert_eq!(
        ok.attr("rpc.service"),
        Some("opentelemetry.proto.collector.trace.v1.TraceService")
    );
    assert_eq!(ok.attr("rpc.method"), Some("Export"));
    assert_ne!(ok.status_code, 2, "successful call marked as error");

    let handler = collector
        .wait_for("handler span of the successful call", WAIT, |s| {
            s.name == "probe.handler" && s.trace_id == call_trace
        })
        .await
        .unwrap();
    assert!(handler.is_child_of(ok), "{handler:?} not under {ok:?}");

    // The handler saw the server span as current: same trace as the caller.
    let seen = probe.seen.lock().unwrap().clone();
    let first = seen[0].as_deref().expect("handler had a traceparent");
    assert!(
        first.contains(&call_trace),
        "{first} not in trace {call_trace}"
    );
    assert!(first.contains(&ok.span_id), "{first} not the server span");

    let failed = servers
        .iter()
        .find(|s| s.trace_id == failing_trace)
        .expect("server span of the failing call");
    assert_eq!(failed.attr("rpc.grpc.status_code"), Some("3"));
    assert_eq!(failed.status_code, 2, "failed call not marked as error");

    let received = collector.wait_for_span("job.receiver", WAIT).await.unwrap();
    assert_eq!(received.trace_id, sender_trace);
    assert_eq!(received.parent_span_id.as_deref(), Some(sender_id.as_str()));
    let sent = collector.wait_for_span("job.sender", WAIT).await.unwrap();
    assert!(received.is_child_of(&sent));

    server.abort();
    tokio::task::spawn_blocking(move || drop(guard))
        .await
        .unwrap();
}
