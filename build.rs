//! Compiles ferry's wire definitions in `proto/` with prost.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/workload.proto", "proto/authorization.proto", "proto/zds.proto", "proto/citadel.proto", "proto/xds.proto"];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    prost_build::Config::new().compile_protos(&protos, &["proto"])?;
    Ok(())
}
