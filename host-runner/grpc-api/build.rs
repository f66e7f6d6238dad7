//! Generates the messages and the tonic clients and servers from proto/ with protoc
//! (`make setup` installs Debian's protobuf-compiler).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/envoy/service/ratelimit/v3/rls.proto",
        "proto/meshwork/test/v1/echo.proto",
        "proto/hamlet/federation/types/v1alpha2/federated_service.proto",
        "proto/hamlet/federation/resourcediscovery/v1alpha2/resource_discovery.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    tonic_prost_build::configure().compile_protos(&protos, &["proto"]).map_err(|e| {
        format!("cannot compile the .proto files ({e}); protoc comes with Debian's protobuf-compiler (make setup)")
    })?;
    Ok(())
}
