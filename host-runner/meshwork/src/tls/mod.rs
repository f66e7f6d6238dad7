//! TLS for listeners and clusters, with rustls (ring provider; no OpenSSL).
//!
//! - [`files`]: certificates, keys and CA bundles read from PEM files, errors naming the file;
//! - [`server`]: a listener's TLS — certificates chosen by SNI, ALPN, client certificates
//!   verified against a CA for mTLS;
//! - [`client`]: a cluster's TLS — the CA to trust, the SNI to send, the SANs to accept, a
//!   client certificate for mTLS, ALPN;
//! - [`info`]: what a handshake established, as Envoy's `connection.*` / `upstream.*`
//!   properties describe it (RFC 2253 subjects, first URI/DNS SAN, SHA-256 digest);
//! - [`watch`]: certificate files are read again when they change, without a restart; a
//!   change that does not load is logged and the previous certificates keep serving.

pub mod client;
pub mod files;
pub mod info;
pub mod server;
pub mod watch;

use std::path::PathBuf;
use std::sync::Arc;

pub use client::{ClientTls, ClientTlsSpec};
pub use server::{CertificateSpec, ServerTls, ServerTlsSpec};

/// Why a TLS configuration could not be built. Every variant names the file or setting at
/// fault; none is worth retrying until the file changes.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{path} holds no {what} (expected a PEM block like -----BEGIN {pem}-----)")]
    Empty { path: PathBuf, what: &'static str, pem: &'static str },
    #[error("certificate {cert} and key {key} do not belong together or cannot be used: {reason}")]
    KeyPair { cert: PathBuf, key: PathBuf, reason: String },
    #[error("{what}: {reason}")]
    Config { what: String, reason: String },
}

/// The one crypto provider every TLS configuration uses: ring, which builds with the C
/// compiler alone (aws-lc-rs, rustls's default, needs CMake and minutes more of build here).
/// rustls deprecates it for lacking post-quantum key exchange; X25519 and the NIST curves remain.
#[allow(deprecated, reason = "ring is chosen for its build; see above")]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<rustls::crypto::CryptoProvider>> = std::sync::OnceLock::new();
    PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())).clone()
}

/// TLS versions a configuration may allow, lowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Deserialize)]
pub enum TlsVersion {
    #[serde(rename = "TLSv1_2", alias = "1.2", alias = "TLSv1.2")]
    V1_2,
    #[serde(rename = "TLSv1_3", alias = "1.3", alias = "TLSv1.3")]
    V1_3,
}

/// The rustls versions between `min` and `max` (defaults: 1.2 and 1.3).
pub fn versions(
    min: Option<TlsVersion>,
    max: Option<TlsVersion>,
) -> Result<Vec<&'static rustls::SupportedProtocolVersion>, TlsError> {
    let (min, max) = (min.unwrap_or(TlsVersion::V1_2), max.unwrap_or(TlsVersion::V1_3));
    if min > max {
        return Err(TlsError::Config {
            what: "tls versions".into(),
            reason: format!("the minimum {min:?} is above the maximum {max:?}"),
        });
    }
    let mut out = Vec::new();
    if min <= TlsVersion::V1_2 {
        out.push(&rustls::version::TLS12);
    }
    if max >= TlsVersion::V1_3 {
        out.push(&rustls::version::TLS13);
    }
    Ok(out)
}

/// ALPN protocol names as bytes.
pub fn alpn(names: &[String]) -> Vec<Vec<u8>> {
    names.iter().map(|n| n.as_bytes().to_vec()).collect()
}
