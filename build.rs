//! Compiles ferry's wire definitions in `proto/` with prost. The `.proto` files are parsed by
//! protox (a protobuf compiler in Rust), so building ferry needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/workload.proto", "proto/authorization.proto", "proto/zds.proto", "proto/citadel.proto", "proto/xds.proto"];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
