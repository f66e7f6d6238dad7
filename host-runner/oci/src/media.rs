//! Media types and annotation keys, with where each comes from.

/// OCI image manifest (image-spec v1.1).
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker schema 2 manifest: Istio accepts images pushed by docker too.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_IMAGE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_LAYER_TAR_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// solo-io/wasm spec (the `oci` variant Istio and Envoy Gateway read).
pub const SOLO_WASM_CONFIG: &str = "application/vnd.module.wasm.config.v1+json";
pub const SOLO_WASM_LAYER: &str = "application/vnd.module.wasm.content.layer.v1+wasm";

/// CNCF TAG-Runtime Wasm OCI artifact.
pub const TAG_RUNTIME_WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
pub const TAG_RUNTIME_WASM_LAYER: &str = "application/wasm";

/// cosign's simple-signing layer (sigstore/cosign specs/SIGNATURE_SPEC.md).
pub const COSIGN_SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const COSIGN_SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";

/// meshwork's own bundles (a tar.gz of a pattern's or a policy's directory).
pub const PATTERN_CONFIG: &str = "application/vnd.meshwork.pattern.config.v1+json";
pub const POLICY_CONFIG: &str = "application/vnd.meshwork.policy.config.v1+json";
pub const BUNDLE_LAYER: &str = "application/vnd.meshwork.bundle.v1.tar+gzip";

/// Annotations: OCI's pre-defined keys, solo's runtime hints, meshwork's own.
pub const TITLE: &str = "org.opencontainers.image.title";
pub const VERSION: &str = "org.opencontainers.image.version";
pub const DESCRIPTION: &str = "org.opencontainers.image.description";
pub const LICENSES: &str = "org.opencontainers.image.licenses";
pub const SOURCE: &str = "org.opencontainers.image.source";
pub const WASM_VARIANT: &str = "module.wasm.image/variant";
pub const WASM_RUNTIME_TYPE: &str = "module.wasm.runtime/type";
pub const WASM_ABI_VERSION: &str = "module.wasm.runtime/abi_version";
pub const MESHWORK_KIND: &str = "io.meshwork.catalog.kind";
pub const MESHWORK_ITEM: &str = "io.meshwork.catalog.item";
pub const EBPF_PROGRAM_TYPES: &str = "io.meshwork.ebpf.program-types";
pub const EBPF_ATTACH: &str = "io.meshwork.ebpf.attach";
pub const EBPF_CAPABILITIES: &str = "io.meshwork.ebpf.capabilities";
/// bpfman's bytecode image labels (bpfman docs, "eBPF Bytecode Image Specifications"):
/// JSON maps of program name → type and map name → type, in the image config's labels.
pub const BPFMAN_PROGRAMS: &str = "io.ebpf.programs";
pub const BPFMAN_MAPS: &str = "io.ebpf.maps";
