//! meshwork's artifacts in OCI registries.
//!
//! - [`wasm`]: a Wasm filter in the layouts Istio's and Envoy Gateway's pullers accept (solo's
//!   `compat` image and its two-layer `oci` artifact) and CNCF TAG-Runtime's `application/wasm`,
//!   and the module found again in any of them, in Istio's order.
//! - [`artifact`]: eBPF programs as bpfman bytecode images, patterns and policies as bundles.
//! - [`registry`]: push and pull through `oci-client` (basic and bearer auth, docker
//!   `config.json` credentials, plain HTTP for loopback registries).
//! - [`sign`]: cosign-compatible signatures (`sha256-<digest>.sig`, simple signing, ECDSA P-256).
//! - [`fetch`]: what `meshwork run` does with an `oci://` or `https://` module: pull, check the
//!   digest as Istio does, verify the signature when asked, cache by digest, start offline.

pub mod artifact;
pub mod cache;
pub mod fetch;
pub mod media;
pub mod registry;
pub mod sign;
mod tarball;
pub mod wasm;

pub use artifact::Artifact;
pub use registry::{Auth, Registry, RegistryOptions};

use sha2::{Digest as _, Sha256};

/// `sha256:<hex>` of `bytes`, the form OCI descriptors use.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The hex part of `sha256:<hex>`, checked.
pub fn digest_hex(digest: &str) -> anyhow::Result<&str> {
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| anyhow::anyhow!("digest {digest:?} is not sha256:<64 hex digits>"))?;
    anyhow::ensure!(
        hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "digest {digest:?} is not sha256:<64 lower-case hex digits>"
    );
    Ok(hex)
}

/// rustls needs one crypto provider per process; meshwork uses ring everywhere (its
/// post-quantum key exchange is aws-lc-rs only, which needs cmake and a C toolchain).
#[allow(deprecated)]
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
