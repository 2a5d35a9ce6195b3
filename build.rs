//! Compiles the protobuf sources with the pure-Rust `protox` compiler (no
//! system `protoc`):
//!
//! - `proto/dataspace/v1/*.proto`, the RPC package: messages and tonic
//!   services, generated with `tonic-prost-build`. Its encoded descriptor
//!   set is kept for gRPC reflection and for the role-table completeness
//!   test.
//! - `proto/dsnode/payload/v1/payload.proto`, the signed payloads: messages
//!   only (no services, no descriptor set: they are not served), used by
//!   `src/payload/` alone.

use std::path::{Path, PathBuf};

/// The `.proto` files directly in `dir`, sorted.
fn protos(dir: &Path) -> Result<Vec<PathBuf>, Box<dyn std::error::Error>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "proto"))
        .collect();
    files.sort();
    Ok(files)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    // Checkouts of this repository that share one target dir (git
    // worktrees) share this script's output too: run again when built
    // from another directory, so each gets code from its own protos.
    println!("cargo:rerun-if-env-changed=PWD");
    let out = PathBuf::from(std::env::var("OUT_DIR")?);

    let fds = protox::compile(protos(Path::new("proto/dataspace/v1"))?, ["proto"])?;
    std::fs::write(
        out.join("dataspace_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        // Unfilled RPCs answer `Unimplemented` until their issue lands.
        .generate_default_stubs(true)
        // Chunks pass from the blob store to the socket, and from the
        // socket to the verifier, without being copied into new vectors.
        .bytes(".dataspace.v1.FetchResponse.chunk")
        .compile_fds(fds)?;

    let payload = protox::compile(protos(Path::new("proto/dsnode/payload/v1"))?, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .compile_fds(payload)?;
    Ok(())
}
