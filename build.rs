//! Compiles ferry's own wire definitions with protox (no system `protoc`): the ZDS messages
//! (node agent <-> node proxy) with prost, and the gRPC services of the delta xDS API and the
//! CA API with tonic, whose messages are ferry-core's (`ferry_core::proto`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let all = ["proto/workload.proto", "proto/authorization.proto", "proto/zds.proto", "proto/citadel.proto", "proto/xds.proto"];
    for p in &all {
        println!("cargo:rerun-if-changed={p}");
    }
    let zds = protox::compile(["proto/zds.proto"], ["proto"])?;
    prost_build::Config::new().compile_fds(zds)?;
    let services = protox::compile(["proto/xds.proto", "proto/citadel.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .extern_path(".envoy.service.discovery.v3", "::ferry_core::proto::xds")
        .extern_path(".istio.v1.auth", "::ferry_core::proto::ca")
        .compile_fds(services)?;
    Ok(())
}
