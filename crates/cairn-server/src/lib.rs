//! The control plane: gRPC services, auth, scheduler, webhooks.
