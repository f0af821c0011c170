//! Pulumi runner plugin.
fn main() {}
