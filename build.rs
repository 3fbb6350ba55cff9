//! Compiles proto/hsmbridge/v1/bridge.proto with protox (no system protoc needed) into
//! tonic/prost code, and keeps the encoded descriptor set for gRPC server reflection.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["hsmbridge/v1/bridge.proto"], ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("hsmbridge_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .codec_path("crate::codec::SmallBuffers")
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
