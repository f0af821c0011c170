//! Rego policies with regorus: compile once, evaluate many.
