//! The cairn binary: server, agent, dev and the client verbs.
fn main() {}
