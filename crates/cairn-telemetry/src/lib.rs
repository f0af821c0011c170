//! Tracing subscriber, OTLP exporter, W3C trace-context propagation.
