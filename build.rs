//! Compiles `proto/dataspace/v1/*.proto` with the pure-Rust `protox`
//! compiler (no system `protoc`) and generates tonic services with
//! `tonic-prost-build`. The encoded descriptor set is kept for gRPC
//! reflection and for the role-table completeness test.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from("proto/dataspace/v1");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "proto"))
        .collect();
    files.sort();
    println!("cargo:rerun-if-changed=proto");
    // Checkouts of this repository that share one target dir (git
    // worktrees) share this script's output too: run again when built
    // from another directory, so each gets code from its own protos.
    println!("cargo:rerun-if-env-changed=PWD");

    let fds = protox::compile(&files, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("dataspace_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;

    tonic_prost_build::configure()
        // Unfilled RPCs answer `Unimplemented` until their issue lands.
        .generate_default_stubs(true)
        .compile_fds(fds)?;
    Ok(())
}
