//! Generated code for every Cairn protobuf package.
#![allow(clippy::all, clippy::pedantic, missing_docs)]

/// The encoded FileDescriptorSet of all Cairn protos, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/cairn_descriptor.bin"));

pub mod v1 {
    tonic::include_proto!("cairn.v1");
}

pub mod agent {
    pub mod v1 {
        tonic::include_proto!("cairn.agent.v1");
    }
}

pub mod runner {
    pub mod v1 {
        tonic::include_proto!("cairn.runner.v1");
    }
}
