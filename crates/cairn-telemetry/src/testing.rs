//! An in-process OTLP/gRPC collector for tests (feature `testing`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), cairn_telemetry::Error> {
//! use std::time::Duration;
//! let collector = cairn_telemetry::testing::Collector::start().await?;
//! // Point a process at it: TelemetryConfig::with_otlp_endpoint(collector.endpoint())
//! let span = collector.wait_for_span("cairn.v1.RunService/GetRun", Duration::from_secs(30)).await?;
//! assert_eq!(span.attr("rpc.method"), Some("GetRun"));
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use tokio::sync::{oneshot, watch};

use crate::Error;

/// One span as the collector received it, with ids as lowercase hex.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectedSpan {
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    /// `None` for a root span.
    pub parent_span_id: Option<String>,
    /// OTLP `SpanKind` number: 1 internal, 2 server, 3 client, 4 producer, 5 consumer.
    pub kind: i32,
    /// Attribute values rendered as strings (ints, bools and doubles in
    /// their usual text form, arrays as JSON-like lists).
    pub attributes: BTreeMap<String, String>,
    /// Attributes of the exporting process's resource (`service.name`...).
    pub resource: BTreeMap<String, String>,
    /// OTLP status code: 0 unset, 1 ok, 2 error.
    pub status_code: i32,
    pub status_message: String,
    /// Names of the span's events (tracing events inside the span).
    pub events: Vec<String>,
}

impl CollectedSpan {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }

    pub fn service_name(&self) -> Option<&str> {
        self.resource.get("service.name").map(String::as_str)
    }

    pub fn is_child_of(&self, parent: &CollectedSpan) -> bool {
        self.trace_id == parent.trace_id
            && self.parent_span_id.as_deref() == Some(parent.span_id.as_str())
    }
}

#[derive(Default)]
struct Store {
    spans: Mutex<Vec<CollectedSpan>>,
}

struct Service {
    store: Arc<Store>,
    changed: watch::Sender<usize>,
}

#[tonic::async_trait]
impl TraceService for Service {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let resource = resource_spans
                .resource
                .map(|r| attributes(&r.attributes))
                .unwrap_or_default();
            for scope_spans in resource_spans.scope_spans {
                for span in scope_spans.spans {
                    let status = span.status.unwrap_or_default();
                    received.push(CollectedSpan {
                        name: span.name,
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: (!span.parent_span_id.is_empty()
                            && span.parent_span_id.iter().any(|b| *b != 0))
                        .then(|| hex(&span.parent_span_id)),
                        kind: span.kind,
                        attributes: attributes(&span.attributes),
                        resource: resource.clone(),
                        status_code: status.code,
                        status_message: status.message,
                        events: span.events.into_iter().map(|e| e.name).collect(),
                    });
                }
            }
        }
        let total = {
            let mut spans = self.store.spans.lock().unwrap_or_else(|p| p.into_inner());
            spans.extend(received);
            spans.len()
        };
        self.changed.send_replace(total);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), any_value(kv.value.as_ref())))
        .collect()
}

fn any_value(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        None => String::new(),
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(Value::BytesValue(b)) => hex(b),
        Some(Value::ArrayValue(a)) => format!(
            "[{}]",
            a.values
                .iter()
                .map(|v| any_value(Some(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Some(Value::KvlistValue(kv)) => format!("{:?}", attributes(&kv.values)),
    }
}

/// The collector: a tonic server on 127.0.0.1 with an ephemeral port,
/// stopped when dropped. Must be started inside a Tokio runtime that
/// outlives its use.
pub struct Collector {
    addr: SocketAddr,
    store: Arc<Store>,
    changed: watch::Receiver<usize>,
    shutdown: Option<oneshot::Sender<()>>,
}

impl Collector {
    pub async fn start() -> Result<Self, Error> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| Error::Collector(format!("binding 127.0.0.1:0: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::Collector(format!("reading the local address: {e}")))?;
        let store = Arc::new(Store::default());
        let (changed_tx, changed_rx) = watch::channel(0);
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let service = Service {
            store: store.clone(),
            changed: changed_tx,
        };
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(service))
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = shutdown_rx.await;
                })
                .await;
            if let Err(e) = served {
                eprintln!("cairn-telemetry test collector stopped: {e}");
            }
        });
        Ok(Self {
            addr,
            store,
            changed: changed_rx,
            shutdown: Some(shutdown_tx),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`, the form OTLP exporters expect.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<CollectedSpan> {
        self.store
            .spans
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// All received spans named `name`.
    pub fn spans_named(&self, name: &str) -> Vec<CollectedSpan> {
        self.spans()
            .into_iter()
            .filter(|s| s.name == name)
            .collect()
    }

    /// Waits for the first span satisfying `predicate`; `what` names it in
    /// the timeout error. The timeout only bounds a broken test.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut predicate: impl FnMut(&CollectedSpan) -> bool,
    ) -> Result<CollectedSpan, Error> {
        let mut changed = self.changed.clone();
        let search = async {
            loop {
                // Mark the current version seen before looking, so a batch
                // arriving between the look and the wait is not missed.
                changed.borrow_and_update();
                if let Some(span) = self.spans().into_iter().find(|s| predicate(s)) {
                    return Ok(span);
                }
                if changed.changed().await.is_err() {
                    return Err(Error::Collector("collector stopped".into()));
                }
            }
        };
        match tokio::time::timeout(timeout, search).await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout {
                what: format!("{what} (received: {:?})", self.span_names()),
                timeout,
            }),
        }
    }

    /// Waits for a span named `name`.
    pub async fn wait_for_span(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<CollectedSpan, Error> {
        self.wait_for(&format!("span `{name}`"), timeout, |s| s.name == name)
            .await
    }

    /// Waits until `count` spans named `name` have arrived.
    pub async fn wait_for_spans(
        &self,
        name: &str,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<CollectedSpan>, Error> {
        let mut changed = self.changed.clone();
        let search = async {
            loop {
                changed.borrow_and_update();
                let found = self.spans_named(name);
                if found.len() >= count {
                    return Ok(found);
                }
                if changed.changed().await.is_err() {
                    return Err(Error::Collector("collector stopped".into()));
                }
            }
        };
        match tokio::time::timeout(timeout, search).await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout {
                what: format!("{count} spans `{name}` (received: {:?})", self.span_names()),
                timeout,
            }),
        }
    }

    fn span_names(&self) -> Vec<String> {
        self.spans().into_iter().map(|s| s.name).collect()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector")
            .field("addr", &self.addr)
            .finish()
    }
}
