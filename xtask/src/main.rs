//! cargo xtask test | bench | lint
fn main() {}
