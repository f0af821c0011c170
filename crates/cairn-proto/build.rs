//! Compiles proto/ with protox (pure Rust) so that building Cairn needs no system protoc.
use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "cairn/v1/common.proto",
        "cairn/v1/stack.proto",
        "cairn/v1/run.proto",
        "cairn/v1/policy.proto",
        "cairn/v1/worker_pool.proto",
        "cairn/v1/vcs.proto",
        "cairn/v1/system.proto",
        "cairn/v1/notification.proto",
        "cairn/v1/deployment.proto",
        "cairn/v1/state.proto",
        "cairn/agent/v1/agent.proto",
        "cairn/runner/v1/runner.proto",
    ];
    let fds = protox::compile(files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    // Served by tonic-reflection so grpcurl and friends work without local proto files.
    std::fs::write(out.join("cairn_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    println!("cargo:rerun-if-changed={}", root.display());
    Ok(())
}
