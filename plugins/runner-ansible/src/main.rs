//! Ansible runner plugin.
fn main() {}
