//! Mutual TLS between meshes, as Hamlet requires of the discovery API and of service traffic:
//! X.509 certificates from files (rotated without a restart by [`crate::tls::watch`]), both
//! sides proving themselves to one federation CA. Handshake failures are explained — which
//! certificate, and why (unknown CA, expired, wrong name) — instead of surfacing as a reset.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use rustls::{AlertDescription, CertificateError};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::tls::client::Trust;
use crate::tls::{CertificateSpec, ClientTls, ClientTlsSpec, ServerTls, ServerTlsSpec};

/// This mesh's identity and the CA every federated mesh's certificate chains to.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MtlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl MtlsFiles {
    /// Paths relative to the configuration file's directory.
    pub fn resolve(&mut self, base: &Path) {
        for p in [&mut self.ca, &mut self.cert, &mut self.key] {
            *p = crate::tls::files::resolve(base, p);
        }
    }

    /// The owner's side: its certificate, and clients must present one from the CA.
    pub fn server(&self) -> anyhow::Result<Arc<ServerTls>> {
        Ok(ServerTls::load(ServerTlsSpec {
            certificates: vec![CertificateSpec {
                cert: self.cert.clone(),
                key: self.key.clone(),
                server_names: vec![],
            }],
            client_ca: Some(self.ca.clone()),
            require_client_certificate: true,
            alpn: vec!["h2".into()],
            min_version: None,
            max_version: None,
        })?)
    }

    /// A client of another mesh: trusts the CA, presents this mesh's certificate, and accepts
    /// a server whose certificate carries `server_name` (or, when given, one of `sans`).
    pub fn client(&self, server_name: &str, sans: Vec<String>, alpn: &str) -> anyhow::Result<Arc<ClientTls>> {
        Ok(ClientTls::load(self.client_spec(Some(server_name), sans, alpn))?)
    }

    /// Without an SNI the connection sends none (endpoints are addresses) and the server is
    /// accepted by `sans` alone.
    pub fn client_spec(&self, sni: Option<&str>, sans: Vec<String>, alpn: &str) -> ClientTlsSpec {
        ClientTlsSpec {
            trust: Trust::Ca(self.ca.clone()),
            sni: sni.map(str::to_owned),
            verify_san: sans,
            cert: Some(self.cert.clone()),
            key: Some(self.key.clone()),
            alpn: vec![alpn.to_owned()],
            min_version: None,
            max_version: None,
        }
    }
}

fn certificate_problem(e: &CertificateError) -> String {
    match e {
        CertificateError::UnknownIssuer => "it is not signed by the federation CA (unknown issuer)".into(),
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => "it has expired".into(),
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => "it is not valid yet".into(),
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            "it does not carry the expected name among its SANs (wrong SAN)".into()
        }
        CertificateError::Revoked => "it has been revoked".into(),
        CertificateError::BadSignature => "its signature does not verify".into(),
        other => format!("{other:?}"),
    }
}

fn alert_problem(alert: &AlertDescription) -> String {
    match alert {
        AlertDescription::UnknownCA => "it does not trust the CA that signed our certificate (alert unknown_ca)".into(),
        AlertDescription::CertificateExpired => "our certificate has expired (alert certificate_expired)".into(),
        AlertDescription::CertificateRequired => "it requires a client certificate (alert certificate_required)".into(),
        AlertDescription::BadCertificate => "it rejected our certificate (alert bad_certificate)".into(),
        AlertDescription::AccessDenied => "it denied access (alert access_denied)".into(),
        AlertDescription::DecryptError => {
            "our certificate's signature does not verify against its CA (alert decrypt_error: a certificate from another CA of the same name?)"
                .into()
        }
        other => format!("alert {other:?}"),
    }
}

/// Why a TLS exchange with `peer` failed, when a certificate is the cause; `None` for other
/// failures (a reset, a timeout), which are worth retrying.
pub fn explain(error: &std::io::Error, peer: &str) -> Option<String> {
    let e = error.get_ref()?.downcast_ref::<rustls::Error>()?;
    Some(match e {
        rustls::Error::InvalidCertificate(c) => format!("{peer}'s certificate is refused: {}", certificate_problem(c)),
        rustls::Error::AlertReceived(a) => format!("{peer} refused this mesh's certificate: {}", alert_problem(a)),
        rustls::Error::NoCertificatesPresented => format!("{peer} presented no certificate"),
        _ => return None,
    })
}

/// The certificate problems a stream ran into, kept for whoever decides whether to retry.
pub type FailureSlot = Arc<Mutex<Option<String>>>;

/// A TLS stream that writes down a certificate failure it meets while reading or writing: with
/// TLS 1.3 a server refuses a client certificate after the client's handshake has finished, so
/// the refusal arrives as the first read fails, deep inside HTTP/2.
pub struct Noting<S> {
    pub inner: S,
    pub peer: String,
    pub slot: FailureSlot,
}

impl<S> Noting<S> {
    fn note(&self, e: &std::io::Error) {
        if let Some(reason) = explain(e, &self.peer) {
            self.slot.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(reason);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Noting<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Err(e)) = &r {
            this.note(e);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Noting<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Err(e)) = &r {
            this.note(e);
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Who is at the other end of an accepted federation connection.
#[derive(Clone, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The URI and DNS SANs of its certificate.
    pub sans: Vec<String>,
}

impl Peer {
    pub fn describe(&self) -> String {
        match self.sans.first() {
            Some(san) => format!("{san} ({})", self.addr),
            None => self.addr.to_string(),
        }
    }
}

/// An accepted, authenticated connection, telling tonic who the peer is.
pub struct Accepted {
    pub stream: tokio_rustls::server::TlsStream<TcpStream>,
    pub peer: Peer,
}

impl Accepted {
    /// The TLS handshake of an accepted socket; the error explains a certificate refusal.
    pub async fn handshake(tls: &ServerTls, tcp: TcpStream, addr: SocketAddr) -> Result<Accepted, String> {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.current().config.clone());
        let handshake = tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp));
        let stream = match handshake.await {
            Err(_) => return Err(format!("{addr}: no TLS handshake within 10 s")),
            Ok(Err(e)) => {
                return Err(explain(&e, &format!("consumer {addr}")).unwrap_or_else(|| format!("{addr}: TLS: {e}")));
            }
            Ok(Ok(s)) => s,
        };
        let sans = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(crate::tls::info::certificate)
            .map(|info| info.uri_sans.into_iter().chain(info.dns_sans).collect())
            .unwrap_or_default();
        Ok(Accepted { stream, peer: Peer { addr, sans } })
    }
}

impl tonic::transport::server::Connected for Accepted {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl AsyncRead for Accepted {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Accepted {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
