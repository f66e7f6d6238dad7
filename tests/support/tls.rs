//! Test certificates (rcgen) and HTTPS requests (rustls) for the TLS tests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::Reply;

/// A certificate authority whose certificates go to PEM files in one directory.
pub struct Pki {
    pub dir: PathBuf,
    name: String,
    issuer: Issuer<'static, KeyPair>,
    ca_der: CertificateDer<'static>,
}

/// A certificate and its key, as files and DER.
#[derive(Clone, Debug)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: CertificateDer<'static>,
    pub key_der: Vec<u8>,
}

impl Pki {
    pub fn new(dir: &Path, name: &str) -> Pki {
        std::fs::create_dir_all(dir).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, format!("{name} CA"));
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join(format!("{name}-ca.pem")), cert.pem()).unwrap();
        Pki { dir: dir.to_owned(), name: name.to_owned(), ca_der: cert.der().clone(), issuer: Issuer::new(params, key) }
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join(format!("{}-ca.pem", self.name))
    }

    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.ca_der.clone()
    }

    /// A certificate with common name `cn`, DNS SANs `dns` and URI SANs `uris`, written to
    /// `<file>.pem` and `<file>.key`.
    pub fn issue(&self, file: &str, cn: &str, dns: &[&str], uris: &[&str]) -> Issued {
        let mut params = CertificateParams::new(dns.iter().map(|d| (*d).to_owned()).collect::<Vec<_>>()).unwrap();
        // The usual order, most specific last: RFC 2253 writes it first (CN=…,O=…).
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::OrganizationName, "meshwork tests");
        params.distinguished_name.push(DnType::CommonName, cn);
        for uri in uris {
            params.subject_alt_names.push(SanType::URI((*uri).try_into().unwrap()));
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let issued = Issued {
            cert: self.dir.join(format!("{file}.pem")),
            key: self.dir.join(format!("{file}.key")),
            der: cert.der().clone(),
            key_der: key.serialize_der(),
        };
        // Key first, then the certificate: a watcher that sees the certificate sees its key.
        std::fs::write(&issued.key, key.serialize_pem()).unwrap();
        std::fs::write(&issued.cert, cert.pem()).unwrap();
        issued
    }
}

/// How a test client connects.
pub struct Client {
    pub sni: String,
    pub roots: Vec<CertificateDer<'static>>,
    pub identity: Option<Issued>,
    pub alpn: Vec<Vec<u8>>,
}

/// What a TLS exchange showed besides the reply.
pub struct Seen {
    pub reply: Reply,
    pub version: http::Version,
    /// The server's leaf certificate.
    pub server_cert: CertificateDer<'static>,
}

#[allow(deprecated, reason = "meshwork uses ring too; see its tls module")]
fn config(client: &Client) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for r in &client.roots {
        roots.add(r.clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match &client.identity {
        Some(id) => builder
            .with_client_auth_cert(
                vec![id.der.clone()],
                PrivateKeyDer::try_from(id.key_der.clone()).expect("a private key"),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols.clone_from(&client.alpn);
    Arc::new(config)
}

/// Connects to `addr` with TLS as `client` says; the handshake's error as text.
pub async fn connect(
    addr: SocketAddr,
    client: &Client,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    let name = ServerName::try_from(client.sni.clone()).map_err(|e| format!("{e}"))?;
    let mut tls = tokio_rustls::TlsConnector::from(config(client))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    // A TLS 1.3 server refuses a client certificate after the handshake: make the client
    // read once so such an alert surfaces here rather than on the first request.
    use tokio::io::AsyncWriteExt;
    tls.flush().await.map_err(|e| format!("flush: {e}"))?;
    Ok(tls)
}

/// One request over TLS (HTTP/2 when ALPN picks it).
pub async fn send(
    addr: SocketAddr,
    client: &Client,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Seen, String> {
    let tls = connect(addr, client).await?;
    let (_, conn) = tls.get_ref();
    let h2 = conn.alpn_protocol() == Some(b"h2");
    let server_cert = conn.peer_certificates().and_then(|c| c.first()).cloned().ok_or("no server certificate")?;
    let io = TokioIo::new(tls);
    let uri = if h2 { format!("https://{}{path}", client.sni) } else { path.to_owned() };
    let mut builder = http::Request::builder().method(method).uri(uri);
    if !h2 {
        builder = builder.header("host", client.sni.as_str());
    }
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let request = builder.body(Full::new(Bytes::copy_from_slice(body))).map_err(|e| e.to_string())?;
    let response = if h2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .map_err(|e| format!("h2: {e}"))?;
        tokio::spawn(conn);
        sender.send_request(request).await.map_err(|e| format!("request: {e}"))?
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.map_err(|e| format!("h1: {e}"))?;
        tokio::spawn(conn);
        sender.send_request(request).await.map_err(|e| format!("request: {e}"))?
    };
    let version = response.version();
    let (parts, body) = response.into_parts();
    let collected = body.collect().await.map_err(|e| format!("body: {e}"))?;
    let trailers = collected.trailers().cloned();
    let reply = Reply { status: parts.status.as_u16(), headers: parts.headers, body: collected.to_bytes(), trailers };
    Ok(Seen { reply, version, server_cert })
}

/// [`send`] from a test thread.
pub fn request(addr: SocketAddr, client: &Client, path: &str, headers: &[(&str, &str)]) -> Result<Seen, String> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
        tokio::time::timeout(std::time::Duration::from_secs(20), send(addr, client, "GET", path, headers, b""))
            .await
            .map_err(|_| "timed out".to_string())?
    })
}

/// The common name in a DER certificate's subject.
pub fn common_name(der: &CertificateDer<'_>) -> String {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der.as_ref()).unwrap();
    cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).unwrap_or_default().to_owned()
}
