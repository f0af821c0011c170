//! Terraform and OpenTofu runner plugins.
