//! Compiles `proto/bimip.proto` with protox (pure Rust, no system protoc) and
//! prost-build, and keeps the file descriptor set for prost-reflect, which maps
//! stanzas to and from protobuf's canonical JSON (used by `vectors/` and the CLI).
//! `proto/bimip_admin.proto`, the backend gRPC API, goes through tonic's
//! generator from the same compiler.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["bimip.proto"], ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("bimip_descriptor.bin"), prost::Message::encode_to_vec(&fds))?;
    prost_build::Config::new()
        // Sorted maps: canonical bytes (SPEC ENV-*) need map entries in key order.
        .btree_map(["."])
        .compile_fds(fds)?;
    let admin = protox::compile(["bimip_admin.proto"], ["proto"])?;
    tonic_prost_build::configure().compile_fds(admin)?;
    Ok(())
}
