//! A listener's TLS: certificates chosen by SNI, ALPN, and client certificates verified against
//! a CA (mTLS), rebuilt when the files change.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use meshwork_wasm_host::CertInfo;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;

use super::{TlsError, TlsVersion, files, info};

/// What a listener's `tls:` section says (paths already resolved).
#[derive(Clone, Debug, PartialEq)]
pub struct ServerTlsSpec {
    /// The first is served when the client sends no SNI or one no certificate matches.
    pub certificates: Vec<CertificateSpec>,
    /// Clients must (or, without `require_client_certificate`, may) present a certificate
    /// signed by one of these.
    pub client_ca: Option<PathBuf>,
    pub require_client_certificate: bool,
    /// Offered in this order; empty offers none.
    pub alpn: Vec<String>,
    pub min_version: Option<TlsVersion>,
    pub max_version: Option<TlsVersion>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct CertificateSpec {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// SNI names this certificate answers (`*.example.com` matches one label); empty: the
    /// certificate's own DNS SANs.
    pub server_names: Vec<String>,
}

/// One loaded certificate and the names it answers.
struct Served {
    key: Arc<CertifiedKey>,
    names: Vec<String>,
    info: Arc<CertInfo>,
}

/// Chooses the certificate for a ClientHello's SNI: an exact name, then a wildcard, then the
/// first certificate.
struct SniResolver {
    served: Vec<Served>,
}

impl std::fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SniResolver").field("certificates", &self.served.len()).finish()
    }
}

fn matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            name.split_once('.').is_some_and(|(label, rest)| !label.is_empty() && rest.eq_ignore_ascii_case(suffix))
        }
        None => pattern.eq_ignore_ascii_case(name),
    }
}

impl SniResolver {
    fn choose(&self, sni: Option<&str>) -> Option<&Served> {
        let by_name = sni.and_then(|name| {
            let exact = self.served.iter().find(|s| s.names.iter().any(|n| !n.starts_with("*.") && matches(n, name)));
            exact.or_else(|| self.served.iter().find(|s| s.names.iter().any(|n| matches(n, name))))
        });
        by_name.or_else(|| self.served.first())
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.choose(hello.server_name()).map(|s| s.key.clone())
    }
}

/// A configuration in force: rustls's, and the certificates for `connection.*_local_*`.
pub struct Loaded {
    pub config: Arc<ServerConfig>,
    resolver: Arc<SniResolver>,
}

impl Loaded {
    /// The certificate served to a client that sent `sni`.
    pub fn local_certificate(&self, sni: Option<&str>) -> Option<Arc<CertInfo>> {
        self.resolver.choose(sni).map(|s| s.info.clone())
    }
}

/// A listener's TLS, swapped whole when its files change.
pub struct ServerTls {
    pub spec: ServerTlsSpec,
    current: ArcSwap<Loaded>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").field("spec", &self.spec).finish()
    }
}

impl ServerTls {
    /// Loads every file now (errors name the file) and watches them for changes.
    pub fn load(spec: ServerTlsSpec) -> Result<Arc<ServerTls>, TlsError> {
        let loaded = build(&spec)?;
        let tls = Arc::new(ServerTls { spec, current: ArcSwap::from_pointee(loaded) });
        super::watch::register(tls.clone());
        Ok(tls)
    }

    /// The configuration for the next handshake.
    pub fn current(&self) -> Arc<Loaded> {
        self.current.load_full()
    }
}

impl super::watch::Watched for ServerTls {
    fn describe(&self) -> String {
        format!(
            "listener certificate {}",
            self.spec.certificates.first().map_or_else(String::new, |c| c.cert.display().to_string())
        )
    }

    fn files(&self) -> Vec<PathBuf> {
        let s = &self.spec;
        s.certificates.iter().flat_map(|c| [c.cert.clone(), c.key.clone()]).chain(s.client_ca.clone()).collect()
    }

    fn reload(&self) -> Result<(), TlsError> {
        self.current.store(Arc::new(build(&self.spec)?));
        Ok(())
    }
}

fn build(spec: &ServerTlsSpec) -> Result<Loaded, TlsError> {
    if spec.certificates.is_empty() {
        return Err(TlsError::Config {
            what: "tls.certificates".into(),
            reason: "at least one certificate is needed".into(),
        });
    }
    let provider = super::provider();
    let mut served = Vec::new();
    for c in &spec.certificates {
        let chain = files::certificates(&c.cert)?;
        let key = files::private_key(&c.key)?;
        let info = info::certificate(&chain[0]).ok_or_else(|| TlsError::File {
            path: c.cert.clone(),
            reason: "its first certificate is not valid X.509".into(),
        })?;
        let key = CertifiedKey::from_der(chain, key, &provider).map_err(|e| TlsError::KeyPair {
            cert: c.cert.clone(),
            key: c.key.clone(),
            reason: e.to_string(),
        })?;
        let names = if c.server_names.is_empty() { info.dns_sans.clone() } else { c.server_names.clone() };
        served.push(Served { key: Arc::new(key), names, info: Arc::new(info) });
    }
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&super::versions(spec.min_version, spec.max_version)?)
        .map_err(|e| TlsError::Config { what: "tls versions".into(), reason: e.to_string() })?;
    let builder = match &spec.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let roots = Arc::new(files::roots(ca)?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider);
            let verifier = if spec.require_client_certificate { verifier } else { verifier.allow_unauthenticated() };
            let verifier = verifier.build().map_err(|e| TlsError::File {
                path: ca.clone(),
                reason: format!("cannot verify clients with it: {e}"),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let resolver = Arc::new(SniResolver { served });
    let mut config = builder.with_cert_resolver(resolver.clone());
    config.alpn_protocols = super::alpn(&spec.alpn);
    Ok(Loaded { config: Arc::new(config), resolver })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_match_exactly_or_by_one_wildcard_label() {
        assert!(matches("api.example.com", "API.example.com"));
        assert!(matches("*.example.com", "api.example.com"));
        assert!(!matches("*.example.com", "a.b.example.com"));
        assert!(!matches("*.example.com", "example.com"));
        assert!(!matches("api.example.com", "web.example.com"));
    }
}
