//! What a TLS handshake established, in the form Envoy's properties give filters
//! (`connection.tls_version`, `connection.subject_peer_certificate`, …): RFC 2253 subjects,
//! the certificates' URI and DNS SANs, the lowercase hex SHA-256 of the peer's DER.

use std::sync::Arc;

use meshwork_wasm_host::{CertInfo, TlsInfo};
use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// Describes one certificate; `None` if it does not parse (rustls accepted it, so only an
/// extension x509-parser cannot read would get here).
pub fn certificate(der: &CertificateDer<'_>) -> Option<CertInfo> {
    let (_, cert) = X509Certificate::from_der(der.as_ref()).ok()?;
    let mut info = CertInfo {
        subject: rfc2253(cert.subject()),
        sha256: hex(&Sha256::digest(der.as_ref())),
        ..CertInfo::default()
    };
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(uri) => info.uri_sans.push((*uri).to_owned()),
                GeneralName::DNSName(dns) => info.dns_sans.push((*dns).to_owned()),
                _ => {}
            }
        }
    }
    Some(info)
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// A distinguished name as RFC 2253 writes it (and OpenSSL's `XN_FLAG_RFC2253`, which Envoy
/// uses): the last RDN first, `,` between RDNs, `+` inside one, specials escaped.
fn rfc2253(name: &x509_parser::x509::X509Name<'_>) -> String {
    let registry = x509_parser::objects::oid_registry();
    let rdns: Vec<String> = name
        .iter()
        .map(|rdn| {
            rdn.iter()
                .map(|attr| {
                    let oid = attr.attr_type();
                    let key = x509_parser::objects::oid2abbrev(oid, registry)
                        .map(|k| if k == "Email" { "emailAddress".to_owned() } else { k.to_owned() })
                        .unwrap_or_else(|_| oid.to_id_string());
                    let value =
                        attr.as_str().map(escape).unwrap_or_else(|_| format!("#{}", hex(attr.attr_value().as_bytes())));
                    format!("{key}={value}")
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    rdns.into_iter().rev().collect::<Vec<_>>().join(",")
}

/// RFC 2253 §2.4 escaping.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The protocol name Envoy reports (OpenSSL's `SSL_get_version`).
pub fn version_name(version: Option<rustls::ProtocolVersion>) -> &'static str {
    match version {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "unknown",
    }
}

/// What a finished handshake established. `local` is the certificate this side presented.
pub fn connection(conn: &rustls::CommonState, server_name: Option<&str>, local: Option<Arc<CertInfo>>) -> TlsInfo {
    TlsInfo {
        version: version_name(conn.protocol_version()),
        server_name: server_name.unwrap_or_default().to_owned(),
        local,
        peer: conn.peer_certificates().and_then(|chain| chain.first()).and_then(certificate),
        alpn: conn.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_rfc2253() {
        let mut params = rcgen::CertificateParams::new(vec!["a.example".into()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::OrganizationName, "Acme, Inc");
        params.distinguished_name.push(rcgen::DnType::CommonName, "client");
        params.subject_alt_names.push(rcgen::SanType::URI("spiffe://mesh/ns/a/sa/b".try_into().unwrap()));
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let info = certificate(cert.der()).unwrap();
        assert_eq!(info.subject, "CN=client,O=Acme\\, Inc");
        assert_eq!(info.dns_sans, ["a.example"]);
        assert_eq!(info.uri_sans, ["spiffe://mesh/ns/a/sa/b"]);
        assert_eq!(info.sha256.len(), 64);
        assert_eq!(info.sha256, hex(&Sha256::digest(cert.der().as_ref())));
    }
}
