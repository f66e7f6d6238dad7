//! `meshwork federation certs`: a federation CA and one certificate per mesh, for trying
//! federation out and for tests (production meshes install certificates from their own PKI, as
//! Hamlet says). Each mesh certificate serves both ends of mTLS (server and client auth) and
//! carries the DNS SAN `<mesh>` and `spiffe://<mesh>/federation`, plus any `--san` given.
//!
//! The CA is reused when `ca.pem` and `ca-key.pem` are already in the directory, so meshes can
//! be added later; its key never leaves the directory.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use chrono::Datelike;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::pem::PemObject;

pub struct Request {
    pub out: PathBuf,
    pub meshes: Vec<String>,
    /// Validity of new mesh certificates.
    pub days: i64,
    /// Meshes whose certificate is issued already expired (to test refusal).
    pub expired: Vec<String>,
    /// Extra SANs, `mesh=name` (a URI when it contains `://`, an IP address, else DNS).
    pub sans: Vec<String>,
}

/// Each CA gets a name of its own: a verifier looks a certificate's issuer up by name, so two
/// CAs of one name would turn "another CA" into a confusing signature failure.
fn new_ca_name() -> String {
    let mut b = [0u8; 4];
    let _ = getrandom::fill(&mut b);
    format!("meshwork federation CA {:02x}{:02x}{:02x}{:02x}", b[0], b[1], b[2], b[3])
}

/// The common name of the CA in `pem`.
fn ca_name(pem: &[u8], path: &Path) -> anyhow::Result<String> {
    let der = rustls_pki_types::CertificateDer::from_pem_slice(pem)
        .with_context(|| format!("{} holds no PEM certificate", path.display()))?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| anyhow::anyhow!("{} does not parse: {e}", path.display()))?;
    let cn = cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).map(str::to_owned);
    cn.with_context(|| format!("{} has no common name", path.display()))
}

fn day(offset_days: i64) -> time::OffsetDateTime {
    let d = chrono::Utc::now() + chrono::Duration::days(offset_days);
    rcgen::date_time_ymd(d.year(), d.month() as u8, d.day() as u8)
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.not_before = day(-1);
    params.not_after = day(3650);
    params
}

fn write(path: &Path, text: &str, private: bool) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true).mode(if private { 0o600 } else { 0o644 });
    let mut file = options.open(path).with_context(|| format!("cannot write {}", path.display()))?;
    std::io::Write::write_all(&mut file, text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))
}

fn san(text: &str) -> anyhow::Result<SanType> {
    Ok(if text.contains("://") {
        SanType::URI(text.try_into().with_context(|| format!("SAN {text:?}"))?)
    } else if let Ok(ip) = text.parse::<IpAddr>() {
        SanType::IpAddress(ip)
    } else {
        SanType::DnsName(text.try_into().with_context(|| format!("SAN {text:?}"))?)
    })
}

/// Writes `ca.pem` (and `ca-key.pem`) unless present, and `<mesh>.pem`, `<mesh>-key.pem` for
/// each mesh. Returns the files written.
pub fn create(request: &Request) -> anyhow::Result<Vec<PathBuf>> {
    if request.meshes.is_empty() {
        bail!("name at least one mesh (--mesh NAME)");
    }
    for extra in &request.sans {
        let (mesh, _) = extra.split_once('=').with_context(|| format!("--san {extra:?}: want MESH=NAME"))?;
        if !request.meshes.iter().any(|m| m == mesh) {
            bail!("--san {extra:?}: {mesh:?} is not one of the meshes given");
        }
    }
    std::fs::create_dir_all(&request.out).with_context(|| format!("cannot create {}", request.out.display()))?;
    let mut written = Vec::new();
    let (ca_pem, ca_key_pem) = (request.out.join("ca.pem"), request.out.join("ca-key.pem"));
    let (ca_key, name) = if ca_pem.exists() && ca_key_pem.exists() {
        let pem =
            std::fs::read_to_string(&ca_key_pem).with_context(|| format!("cannot read {}", ca_key_pem.display()))?;
        let key = KeyPair::from_pem(&pem).with_context(|| format!("{} is not a private key", ca_key_pem.display()))?;
        let cert = std::fs::read(&ca_pem).with_context(|| format!("cannot read {}", ca_pem.display()))?;
        (key, ca_name(&cert, &ca_pem)?)
    } else {
        let (key, name) = (KeyPair::generate()?, new_ca_name());
        let cert = ca_params(&name).self_signed(&key)?;
        write(&ca_pem, &cert.pem(), false)?;
        write(&ca_key_pem, &key.serialize_pem(), true)?;
        written.extend([ca_pem, ca_key_pem]);
        (key, name)
    };
    // Only the CA's name, key identifier method and key usages go into what it signs.
    let issuer = Issuer::new(ca_params(&name), ca_key);
    for mesh in &request.meshes {
        if mesh.is_empty() || !mesh.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.') {
            bail!("mesh name {mesh:?}: use letters, digits, '-' and '.' (it becomes a DNS SAN)");
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, mesh.as_str());
        params.distinguished_name.push(DnType::OrganizationName, "meshwork federation");
        params.subject_alt_names = vec![san(mesh)?, san(&format!("spiffe://{mesh}/federation"))?];
        for extra in &request.sans {
            if let Some(name) = extra.strip_prefix(&format!("{mesh}=")) {
                params.subject_alt_names.push(san(name)?);
            }
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        if request.expired.contains(mesh) {
            params.not_before = day(-30);
            params.not_after = day(-1);
        } else {
            params.not_before = day(-1);
            params.not_after = day(request.days.max(1));
        }
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        let (cert_path, key_path) =
            (request.out.join(format!("{mesh}.pem")), request.out.join(format!("{mesh}-key.pem")));
        write(&cert_path, &cert.pem(), false)?;
        write(&key_path, &key.serialize_pem(), true)?;
        written.extend([cert_path, key_path]);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mesh_certificates_chain_to_the_ca_and_a_second_run_reuses_it() {
        let dir = std::env::temp_dir().join(format!("meshwork-certs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let request = |meshes: &[&str]| Request {
            out: dir.clone(),
            meshes: meshes.iter().map(|m| m.to_string()).collect(),
            days: 30,
            expired: vec![],
            sans: vec!["mesh-a=ingress.mesh-a.example".into()],
        };
        create(&request(&["mesh-a"])).unwrap();
        let ca = std::fs::read(dir.join("ca.pem")).unwrap();
        let written = create(&request(&["mesh-a", "mesh-b"])).unwrap();
        assert_eq!(std::fs::read(dir.join("ca.pem")).unwrap(), ca, "the CA is kept");
        assert!(!written.contains(&dir.join("ca.pem")));
        let roots = crate::tls::files::roots(&dir.join("ca.pem")).unwrap();
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), crate::tls::provider())
                .build()
                .unwrap();
        for mesh in ["mesh-a", "mesh-b"] {
            let chain = crate::tls::files::certificates(&dir.join(format!("{mesh}.pem"))).unwrap();
            verifier.verify_client_cert(&chain[0], &[], rustls_pki_types::UnixTime::now()).unwrap();
            let info = crate::tls::info::certificate(&chain[0]).unwrap();
            assert!(info.dns_sans.contains(&mesh.to_string()));
            assert!(info.uri_sans.contains(&format!("spiffe://{mesh}/federation")));
        }
        let a = crate::tls::info::certificate(&crate::tls::files::certificates(&dir.join("mesh-a.pem")).unwrap()[0])
            .unwrap();
        assert!(a.dns_sans.contains(&"ingress.mesh-a.example".to_string()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
