//! Tracing subscriber, OTLP exporter, W3C trace-context propagation.
//!
//! [`init`] installs, once per process:
//! - a `tracing` subscriber with an env filter and a fmt layer on stderr
//!   (text or JSON),
//! - a `tracing-opentelemetry` layer, always, so every span has W3C trace
//!   and span ids and an incoming `traceparent` continues the caller's
//!   trace even when this process exports nothing,
//! - an OTLP/gRPC batch exporter when [`TelemetryConfig::otlp_endpoint`]
//!   is set (off by default),
//! - the W3C [`TraceContextPropagator`] as the global text-map propagator.
//!
//! [`propagation`] moves trace context through tonic metadata, HTTP headers
//! and plain `traceparent` strings; [`grpc`] has a tower layer giving every
//! served RPC a span parented to the caller and a client interceptor that
//! sends the current span's context. With the `testing` feature, `testing`
//! provides an in-process OTLP collector for tests.

pub mod grpc;
pub mod propagation;
#[cfg(feature = "testing")]
pub mod testing;

use std::io::IsTerminal as _;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing::Subscriber;
use tracing_subscriber::filter::{filter_fn, EnvFilter};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::Layer as _;

pub use opentelemetry::Context as OtelContext;
pub use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid log filter `{filter}`: {source}")]
    Filter {
        filter: String,
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    #[error("building the OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("starting the OTLP exporter runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("a global tracing subscriber is already installed: {0}")]
    AlreadyInitialized(#[from] tracing::subscriber::SetGlobalDefaultError),
    #[error("flushing spans: {0}")]
    Flush(#[from] opentelemetry_sdk::error::OTelSdkError),
    #[error("setting the span's parent: {0}")]
    SetParent(#[from] tracing_opentelemetry::SetParentError),
    #[error("invalid traceparent `{0}`")]
    InvalidTraceparent(String),
    #[cfg(feature = "testing")]
    #[error("collector: {0}")]
    Collector(String),
    #[cfg(feature = "testing")]
    #[error("timed out after {timeout:?} waiting for {what}")]
    Timeout { what: String, timeout: Duration },
}

/// How telemetry is set up. `Default` gives: service `cairn`, filter from
/// `RUST_LOG` or `info`, text logs, no OTLP export.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// `service.name` resource attribute of exported spans.
    pub service_name: String,
    /// `EnvFilter` directives; `None` reads `RUST_LOG`, falling back to `info`.
    pub log_filter: Option<String>,
    /// One JSON object per line on stderr instead of human-readable text.
    pub json_logs: bool,
    /// OTLP/gRPC collector endpoint such as `http://127.0.0.1:4317`;
    /// `None` disables export.
    pub otlp_endpoint: Option<String>,
    /// Longest time a finished span waits in the batch before export.
    pub export_interval: Duration,
    /// Deadline of one export call.
    pub export_timeout: Duration,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            service_name: "cairn".to_string(),
            log_filter: None,
            json_logs: false,
            otlp_endpoint: None,
            export_interval: Duration::from_secs(5),
            export_timeout: Duration::from_secs(10),
        }
    }
}

impl TelemetryConfig {
    pub fn new(service_name: impl Into<String>) -> Self {
        Self {
            service_name: service_name.into(),
            ..Self::default()
        }
    }

    pub fn with_otlp_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.otlp_endpoint = Some(endpoint.into());
        self
    }

    pub fn with_log_filter(mut self, filter: impl Into<String>) -> Self {
        self.log_filter = Some(filter.into());
        self
    }

    pub fn with_json_logs(mut self, json: bool) -> Self {
        self.json_logs = json;
        self
    }

    pub fn with_export_interval(mut self, interval: Duration) -> Self {
        self.export_interval = interval;
        self
    }
}

/// Keeps the tracer provider (and the exporter's runtime) alive. Dropping
/// it flushes pending spans and shuts the exporter down, so hold it until
/// the end of `main`.
pub struct Guard {
    provider: SdkTracerProvider,
    exporter_runtime: Option<tokio::runtime::Runtime>,
}

impl Guard {
    /// Exports every finished span now, blocking until the collector
    /// answered (or the export timed out).
    pub fn flush(&self) -> Result<(), Error> {
        self.provider.force_flush().map_err(Error::from)
    }

    pub fn tracer_provider(&self) -> &SdkTracerProvider {
        &self.provider
    }

    /// Whether spans are exported over OTLP.
    pub fn exporting(&self) -> bool {
        self.exporter_runtime.is_some()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown() {
            // Logging through tracing here could recurse into the very
            // provider being shut down.
            if self.exporter_runtime.is_some() {
                eprintln!("cairn-telemetry: shutting down the OTLP exporter: {e}");
            }
        }
        if let Some(runtime) = self.exporter_runtime.take() {
            // Non-blocking, so the guard may be dropped inside async code.
            runtime.shutdown_background();
        }
    }
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("exporting", &self.exporting())
            .finish()
    }
}

/// Installs the global subscriber and propagator; see the crate docs.
pub fn init(config: TelemetryConfig) -> Result<Guard, Error> {
    let (subscriber, guard) = subscriber(&config)?;
    tracing::subscriber::set_global_default(subscriber)?;
    install_propagator();
    opentelemetry::global::set_tracer_provider(guard.provider.clone());
    Ok(guard)
}

/// Installs the W3C trace-context propagator globally. [`init`] does this;
/// call it directly only when a process propagates context without
/// installing the subscriber.
pub fn install_propagator() {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
}

/// The subscriber [`init`] would install, without installing it, for
/// callers that scope it with `tracing::subscriber::set_default`.
pub fn subscriber(
    config: &TelemetryConfig,
) -> Result<(Box<dyn Subscriber + Send + Sync>, Guard), Error> {
    let filter = build_filter(config.log_filter.as_deref())?;
    let guard = build_provider(config)?;
    let tracer = guard.provider.tracer("cairn");

    let otel_layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(filter_fn(|meta| !is_export_machinery(meta.target())));
    let json = config.json_logs;
    let text_layer = (!json).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_target(true)
    });
    let json_layer = json.then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_current_span(true)
    });
    let subscriber = tracing_subscriber::registry()
        .with(filter)
        .with(otel_layer)
        .with(text_layer)
        .with(json_layer);
    Ok((Box::new(subscriber), guard))
}

fn build_filter(directives: Option<&str>) -> Result<EnvFilter, Error> {
    let mut directives = match directives {
        Some(d) => d.to_string(),
        None => std::env::var("RUST_LOG")
            .ok()
            .filter(|v| !v.trim().is_empty())
            .unwrap_or_else(|| "info".to_string()),
    };
    // The SDK logs its own lifecycle at info ("global tracer provider is
    // set"), which is noise in every process; an explicit directive wins.
    if !directives.contains("opentelemetry") {
        directives.push_str(",opentelemetry=warn");
    }
    EnvFilter::builder()
        .parse(&directives)
        .map_err(|source| Error::Filter {
            filter: directives,
            source,
        })
}

/// Spans and events of the exporter's own transport and of the SDK: fed
/// back into the OpenTelemetry layer they would be exported, producing
/// more transport spans, without end.
fn is_export_machinery(target: &str) -> bool {
    const PREFIXES: &[&str] = &["h2", "hyper", "hyper_util", "tonic", "tower", "tower_http"];
    target.starts_with("opentelemetry")
        || PREFIXES.iter().any(|p| {
            target == *p
                || target
                    .strip_prefix(p)
                    .is_some_and(|rest| rest.starts_with("::"))
        })
}

fn build_provider(config: &TelemetryConfig) -> Result<Guard, Error> {
    let resource = Resource::builder()
        .with_service_name(config.service_name.clone())
        .build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    let mut exporter_runtime = None;
    if let Some(endpoint) = &config.otlp_endpoint {
        // The exporter's tonic channel lives on a runtime of its own: the
        // batch processor exports from its own thread and shutdown blocks
        // the dropping thread, which would deadlock a current-thread
        // application runtime that also had to drive the channel.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("cairn-otlp")
            .enable_all()
            .build()
            .map_err(Error::Runtime)?;
        let exporter = {
            let _entered = runtime.enter();
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .with_timeout(config.export_timeout)
                .build()?
        };
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_scheduled_delay(config.export_interval)
                    .build(),
            )
            .build();
        builder = builder.with_span_processor(processor);
        exporter_runtime = Some(runtime);
    }
    Ok(Guard {
        provider: builder.build(),
        exporter_runtime,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_machinery_targets_are_recognised() {
        for target in [
            "h2",
            "h2::proto",
            "hyper_util::client",
            "tonic::transport",
            "opentelemetry_sdk",
            "opentelemetry-otlp",
        ] {
            assert!(is_export_machinery(target), "{target}");
        }
        for target in ["cairn_server", "cairn_telemetry::grpc", "h2o", "towering"] {
            assert!(!is_export_machinery(target), "{target}");
        }
    }

    #[test]
    fn bad_filters_are_reported() {
        let err = build_filter(Some("info,=[")).unwrap_err();
        assert!(err.to_string().contains("invalid log filter"), "{err}");
        assert!(build_filter(Some("warn,cairn=debug")).is_ok());
    }
}
