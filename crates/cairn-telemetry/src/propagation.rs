//! W3C trace context across process boundaries.
//!
//! All helpers go through the global text-map propagator, which [`init`]
//! sets to [`TraceContextPropagator`] (so `traceparent`/`tracestate`).
//! Injection reads the context of a `tracing` span through the
//! OpenTelemetry layer; without that layer there is nothing to inject and
//! the carrier is left unchanged.
//!
//! [`init`]: crate::init
//! [`TraceContextPropagator`]: opentelemetry_sdk::propagation::TraceContextPropagator

use std::collections::HashMap;

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry::Context;
use tonic::metadata::{KeyRef, MetadataKey, MetadataMap, MetadataValue};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::Error;

pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";
/// Environment variable carrying a `traceparent` into a child process (the
/// OpenTelemetry convention for environment carriers).
pub const TRACEPARENT_ENV: &str = "TRACEPARENT";

struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value),
        ) {
            self.0.insert(key, value);
        }
    }
}

struct MetadataExtractor<'a>(&'a MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .map(|k| match k {
                KeyRef::Ascii(k) => k.as_str(),
                KeyRef::Binary(k) => k.as_str(),
            })
            .collect()
    }
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(key, value);
        }
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

fn inject(cx: &Context, injector: &mut dyn Injector) {
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(cx, injector)
    });
}

fn extract(extractor: &dyn Extractor) -> Context {
    opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(extractor))
}

/// Writes `span`'s trace context into gRPC request metadata.
pub fn inject_span_into_metadata(span: &Span, metadata: &mut MetadataMap) {
    inject(&span.context(), &mut MetadataInjector(metadata));
}

/// Writes the current span's trace context into gRPC request metadata.
pub fn inject_metadata(metadata: &mut MetadataMap) {
    inject_span_into_metadata(&Span::current(), metadata);
}

/// Writes the current span's trace context into HTTP headers.
pub fn inject_headers(headers: &mut http::HeaderMap) {
    inject(&Span::current().context(), &mut HeaderInjector(headers));
}

/// The trace context carried by gRPC metadata (an empty context if none).
pub fn extract_metadata(metadata: &MetadataMap) -> Context {
    extract(&MetadataExtractor(metadata))
}

/// The trace context carried by HTTP headers (an empty context if none).
pub fn extract_headers(headers: &http::HeaderMap) -> Context {
    extract(&HeaderExtractor(headers))
}

/// `span`'s context as a `traceparent` value, e.g.
/// `00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01`; `None` when
/// the span has no valid context (disabled, or no OpenTelemetry layer).
pub fn traceparent_of(span: &Span) -> Option<String> {
    let mut carrier = HashMap::new();
    inject(&span.context(), &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// The current span's `traceparent`, for carriers other than gRPC and
/// HTTP: environment variables of child processes, job payloads.
pub fn current_traceparent() -> Option<String> {
    traceparent_of(&Span::current())
}

/// The remote context described by a `traceparent` (and optional
/// `tracestate`) value.
pub fn context_from_traceparent(
    traceparent: &str,
    tracestate: Option<&str>,
) -> Result<Context, Error> {
    let mut carrier = HashMap::new();
    carrier.insert(TRACEPARENT.to_string(), traceparent.trim().to_string());
    if let Some(state) = tracestate {
        carrier.insert(TRACESTATE.to_string(), state.to_string());
    }
    let cx = extract(&carrier);
    if cx.span().span_context().is_valid() {
        Ok(cx)
    } else {
        Err(Error::InvalidTraceparent(traceparent.to_string()))
    }
}

/// Makes `span` a child of the remote span in `cx`. Must happen before the
/// span is first entered; a context without a valid span is ignored, so a
/// request without `traceparent` simply starts a new trace.
pub fn set_parent(span: &Span, cx: Context) -> Result<(), Error> {
    if !cx.span().span_context().is_valid() {
        return Ok(());
    }
    span.set_parent(cx).map_err(Error::from)
}

/// [`set_parent`] from incoming gRPC metadata.
pub fn set_parent_from_metadata(span: &Span, metadata: &MetadataMap) -> Result<(), Error> {
    set_parent(span, extract_metadata(metadata))
}

/// [`set_parent`] from incoming HTTP headers.
pub fn set_parent_from_headers(span: &Span, headers: &http::HeaderMap) -> Result<(), Error> {
    set_parent(span, extract_headers(headers))
}

/// [`set_parent`] from a `traceparent` string.
pub fn set_parent_from_traceparent(span: &Span, traceparent: &str) -> Result<(), Error> {
    set_parent(span, context_from_traceparent(traceparent, None)?)
}

/// Makes `span` a child of the context in the `TRACEPARENT` environment
/// variable, for processes started by a traced parent. Returns whether a
/// parent was found; a malformed value is an error.
pub fn set_parent_from_env(span: &Span) -> Result<bool, Error> {
    match std::env::var(TRACEPARENT_ENV) {
        Ok(value) if !value.trim().is_empty() => {
            set_parent_from_traceparent(span, &value)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// The trace id (32 lowercase hex digits) of `span`, if it has a context.
pub fn trace_id_of(span: &Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// The span id (16 lowercase hex digits) of `span`, if it has a context.
pub fn span_id_of(span: &Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.span_id().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::layer::SubscriberExt as _;

    fn with_otel<R>(f: impl FnOnce() -> R) -> R {
        crate::install_propagator();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, f)
    }

    #[test]
    fn metadata_round_trip_continues_the_trace() {
        with_otel(|| {
            let client = tracing::info_span!("client");
            let mut metadata = MetadataMap::new();
            client.in_scope(|| inject_metadata(&mut metadata));
            let header = metadata.get(TRACEPARENT).expect("traceparent injected");
            let header = header.to_str().unwrap().to_string();
            assert_eq!(Some(header.clone()), traceparent_of(&client));

            let server = tracing::info_span!("server");
            set_parent_from_metadata(&server, &metadata).unwrap();
            assert_eq!(trace_id_of(&server), trace_id_of(&client));
            assert_ne!(span_id_of(&server), span_id_of(&client));
            // version-traceid-parentid-flags
            let parts: Vec<&str> = header.split('-').collect();
            assert_eq!(parts.len(), 4);
            assert_eq!(parts[1], trace_id_of(&client).unwrap());
            assert_eq!(parts[2], span_id_of(&client).unwrap());
        });
    }

    #[test]
    fn headers_and_strings_round_trip() {
        with_otel(|| {
            let outer = tracing::info_span!("outer");
            let mut headers = http::HeaderMap::new();
            outer.in_scope(|| inject_headers(&mut headers));
            let inner = tracing::info_span!("inner");
            set_parent_from_headers(&inner, &headers).unwrap();
            assert_eq!(trace_id_of(&inner), trace_id_of(&outer));

            let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
            let remote = tracing::info_span!("remote child");
            set_parent_from_traceparent(&remote, traceparent).unwrap();
            assert_eq!(
                trace_id_of(&remote).as_deref(),
                Some("4bf92f3577b34da6a3ce929d0e0e4736")
            );
        });
    }

    #[test]
    fn missing_or_bad_context_is_handled() {
        with_otel(|| {
            assert!(matches!(
                context_from_traceparent("not-a-traceparent", None),
                Err(Error::InvalidTraceparent(_))
            ));
            // No traceparent: the span keeps its own new trace.
            let span = tracing::info_span!("fresh");
            set_parent_from_metadata(&span, &MetadataMap::new()).unwrap();
            assert!(trace_id_of(&span).is_some());
        });
    }
}
