//! A cluster's TLS: which server certificates to trust (a CA file, Mozilla's roots, or —
//! Envoy's behaviour without a validation context — any), which names they must carry (the
//! SNI, or SANs listed explicitly as Envoy's `match_typed_subject_alt_names` does for SPIFFE
//! identities), a client certificate for mTLS, and ALPN.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use meshwork_wasm_host::CertInfo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::{TlsError, TlsVersion, files, info};

/// Which server certificates a cluster trusts.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Trust {
    /// Certificates chaining to one in this PEM file.
    Ca(PathBuf),
    /// Mozilla's root program (the `webpki-roots` bundle).
    PublicRoots,
    /// Any certificate: Envoy's behaviour for an UpstreamTlsContext without a validation
    /// context. The handshake still proves the server holds the certificate's key.
    Any,
}

/// What a cluster's `tls:` section says (paths already resolved).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClientTlsSpec {
    pub trust: Trust,
    /// Sent as SNI, and the name the certificate must carry unless `verify_san` is given;
    /// without it, the endpoint's address.
    pub sni: Option<String>,
    /// Accept the server if any of its URI or DNS SANs is one of these.
    pub verify_san: Vec<String>,
    /// A client certificate for mTLS.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub alpn: Vec<String>,
    pub min_version: Option<TlsVersion>,
    pub max_version: Option<TlsVersion>,
}

/// A cluster's TLS configuration in force.
pub struct LoadedClient {
    pub config: Arc<ClientConfig>,
    pub local: Option<Arc<CertInfo>>,
}

pub struct ClientTls {
    pub spec: ClientTlsSpec,
    current: ArcSwap<LoadedClient>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls").field("spec", &self.spec).finish()
    }
}

impl ClientTls {
    pub fn load(spec: ClientTlsSpec) -> Result<Arc<ClientTls>, TlsError> {
        let loaded = build(&spec)?;
        let tls = Arc::new(ClientTls { spec, current: ArcSwap::from_pointee(loaded) });
        super::watch::register(tls.clone());
        Ok(tls)
    }

    /// The configuration for `spec`, shared by every cluster that asks for the same one while
    /// any holds it (across reloads too): a proxy importing thousands of federated services
    /// from one owner reads that owner's files and builds its trust store once.
    pub fn shared(spec: ClientTlsSpec) -> Result<Arc<ClientTls>, TlsError> {
        static LOADED: std::sync::Mutex<Option<std::collections::HashMap<ClientTlsSpec, std::sync::Weak<ClientTls>>>> =
            std::sync::Mutex::new(None);
        let mut loaded = LOADED.lock().unwrap_or_else(|p| p.into_inner());
        let loaded = loaded.get_or_insert_with(Default::default);
        if let Some(tls) = loaded.get(&spec).and_then(std::sync::Weak::upgrade) {
            return Ok(tls);
        }
        let tls = ClientTls::load(spec.clone())?;
        loaded.retain(|_, held| held.strong_count() > 0);
        loaded.insert(spec, Arc::downgrade(&tls));
        Ok(tls)
    }

    pub fn current(&self) -> Arc<LoadedClient> {
        self.current.load_full()
    }

    /// The name to send as SNI and check: the configured one, else the endpoint's address.
    pub fn server_name(&self, endpoint: IpAddr) -> ServerName<'static> {
        self.spec
            .sni
            .as_deref()
            .and_then(|s| ServerName::try_from(s.to_owned()).ok())
            .unwrap_or(ServerName::IpAddress(endpoint.into()))
    }
}

impl super::watch::Watched for ClientTls {
    fn describe(&self) -> String {
        "cluster TLS".into()
    }

    fn files(&self) -> Vec<PathBuf> {
        let s = &self.spec;
        let ca = match &s.trust {
            Trust::Ca(p) => Some(p.clone()),
            _ => None,
        };
        ca.into_iter().chain(s.cert.clone()).chain(s.key.clone()).collect()
    }

    fn reload(&self) -> Result<(), TlsError> {
        self.current.store(Arc::new(build(&self.spec)?));
        Ok(())
    }
}

fn build(spec: &ClientTlsSpec) -> Result<LoadedClient, TlsError> {
    let provider = super::provider();
    let roots = match &spec.trust {
        Trust::Ca(path) => Some(files::roots(path)?),
        Trust::PublicRoots => Some(RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() }),
        Trust::Any => None,
    };
    let verifier = Arc::new(Verifier { roots, sans: spec.verify_san.clone(), provider: provider.clone() });
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&super::versions(spec.min_version, spec.max_version)?)
        .map_err(|e| TlsError::Config { what: "tls versions".into(), reason: e.to_string() })?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let (mut config, local) = match (&spec.cert, &spec.key) {
        (Some(cert), Some(key)) => {
            let chain = files::certificates(cert)?;
            let local = info::certificate(&chain[0]).map(Arc::new);
            let config = builder
                .with_client_auth_cert(chain, files::private_key(key)?)
                .map_err(|e| TlsError::KeyPair { cert: cert.clone(), key: key.clone(), reason: e.to_string() })?;
            (config, local)
        }
        (None, None) => (builder.with_no_client_auth(), None),
        _ => {
            return Err(TlsError::Config {
                what: "cluster tls".into(),
                reason: "a client certificate needs both cert and key".into(),
            });
        }
    };
    config.alpn_protocols = super::alpn(&spec.alpn);
    Ok(LoadedClient { config: Arc::new(config), local })
}

/// Checks the chain against the roots (unless trusting any), then the name: the SNI by
/// default, or one of the configured SANs.
#[derive(Debug)]
struct Verifier {
    roots: Option<RootCertStore>,
    sans: Vec<String>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(roots) = &self.roots else {
            return Ok(ServerCertVerified::assertion());
        };
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        if self.sans.is_empty() {
            rustls::client::verify_server_name(&cert, server_name)?;
        } else {
            let info = info::certificate(end_entity)
                .ok_or(rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding))?;
            if !info.uri_sans.iter().chain(&info.dns_sans).any(|san| self.sans.contains(san)) {
                return Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
                    Arc::new(SanMismatch { wanted: self.sans.clone(), found: [info.uri_sans, info.dns_sans].concat() }),
                ))));
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// The server's certificate carries none of the SANs the cluster accepts.
#[derive(Debug)]
struct SanMismatch {
    wanted: Vec<String>,
    found: Vec<String>,
}

impl std::fmt::Display for SanMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the certificate's SANs {:?} include none of {:?}", self.found, self.wanted)
    }
}

impl std::error::Error for SanMismatch {}
