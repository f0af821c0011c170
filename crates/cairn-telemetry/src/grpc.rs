//! One span per RPC on the server, trace context on every client call.
//!
//! Server: `tonic::transport::Server::builder().layer(GrpcTraceLayer)`
//! wraps every request in a span named after the method
//! (`cairn.v1.StackService/GetStack`, the OpenTelemetry RPC convention)
//! with `rpc.system`, `rpc.service`, `rpc.method` and, when the status is
//! known from the response headers, `rpc.grpc.status_code`; the span's
//! parent is the caller's `traceparent`. Handlers see it as the current
//! span. Servers that prefer interceptors or hand-written code can call
//! [`server_span`] directly.
//!
//! Client: `Client::with_interceptor(channel, TraceContextInterceptor)`
//! sends the current span's context with each call.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use tonic::metadata::MetadataMap;
use tracing::{Instrument as _, Span};

use crate::propagation;

/// `(service, method)` from a gRPC path `/package.Service/Method`.
pub fn split_path(path: &str) -> (&str, &str) {
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    match trimmed.rsplit_once('/') {
        Some((service, method)) => (service, method),
        None => (trimmed, ""),
    }
}

/// A server span for the RPC at `path`, parented to the trace context in
/// `headers` (a fresh trace when there is none).
pub fn server_span(path: &str, headers: &http::HeaderMap) -> Span {
    let span = new_server_span(path);
    // A span disabled by the filter has no context to set, which is fine.
    let _ = propagation::set_parent_from_headers(&span, headers);
    span
}

/// [`server_span`] for code that holds tonic metadata rather than headers.
pub fn server_span_from_metadata(path: &str, metadata: &MetadataMap) -> Span {
    let span = new_server_span(path);
    let _ = propagation::set_parent_from_metadata(&span, metadata);
    span
}

fn new_server_span(path: &str) -> Span {
    let (service, method) = split_path(path);
    let name = if method.is_empty() {
        service.to_string()
    } else {
        format!("{service}/{method}")
    };
    tracing::info_span!(
        "grpc.server",
        otel.name = %name,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
        rpc.grpc.status_code = tracing::field::Empty,
    )
}

/// Records the gRPC status carried in response headers (trailers-only
/// responses, which is how tonic reports handler errors).
fn record_status(span: &Span, headers: &http::HeaderMap) {
    if let Some(code) = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok())
    {
        span.record("rpc.grpc.status_code", code);
        if code != 0 {
            span.record("otel.status_code", "ERROR");
        }
    }
}

/// Tower layer for tonic servers; see the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcTraceLayer;

impl<S> tower::Layer<S> for GrpcTraceLayer {
    type Service = GrpcTraceService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcTraceService { inner }
    }
}

#[derive(Debug, Clone)]
pub struct GrpcTraceService<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for GrpcTraceService<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    ResBody: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let span = server_span(request.uri().path(), request.headers());
        // Calling the inner service inside the span makes it current for
        // work the service does synchronously, not just in its future.
        let future = span.in_scope(|| self.inner.call(request));
        let record_span = span.clone();
        Box::pin(
            async move {
                let result = future.await;
                if let Ok(response) = &result {
                    record_status(&record_span, response.headers());
                }
                result
            }
            .instrument(span),
        )
    }
}

/// Client interceptor injecting the current span's trace context.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceContextInterceptor;

impl tonic::service::Interceptor for TraceContextInterceptor {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        propagation::inject_metadata(request.metadata_mut());
        Ok(request)
    }
}

/// Injects the current span's trace context into one outgoing request, for
/// clients without [`TraceContextInterceptor`].
pub fn inject_request<T>(request: &mut tonic::Request<T>) {
    propagation::inject_metadata(request.metadata_mut());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_service_and_method() {
        assert_eq!(
            split_path("/cairn.v1.StackService/GetStack"),
            ("cairn.v1.StackService", "GetStack")
        );
        assert_eq!(split_path("/grpc.health.v1.Health/Check").1, "Check");
        assert_eq!(split_path("weird"), ("weird", ""));
    }
}
