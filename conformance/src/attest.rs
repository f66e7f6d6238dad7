//! Signed attestations of a run: an in-toto Statement v1 with the test-result predicate, in a
//! DSSE envelope signed offline with an ed25519 or ECDSA P-256 key (cosign's key formats), so a
//! third party can check who ran what against which binaries, and `reproduce` can re-run it.
//!
//! The predicate carries the standard test-result fields and, under `meshwork`, the whole
//! [`RunRecord`] (generated configurations, machine facts, suite version, arguments).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, ED25519, EcdsaKeyPair, Ed25519KeyPair, KeyPair,
    UnparsedPublicKey,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::outcome::{RunRecord, Verdict};

pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
pub const PREDICATE_TYPE: &str = "https://in-toto.io/attestation/test-result/v0.1";
pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";

// SubjectPublicKeyInfo DER is written and read with fixed prefixes rather than an ASN.1 crate:
// for these two key types the encoding never varies.
/// SEQUENCE { SEQUENCE { OID 1.3.101.112 } BIT STRING (32 bytes) }
const ED25519_SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
/// SEQUENCE { SEQUENCE { OID id-ecPublicKey, OID prime256v1 } BIT STRING (65-byte uncompressed point) }
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce,
    0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    Ed25519,
    /// ECDSA P-256 with SHA-256, ASN.1 DER signatures: cosign's default and the spec's minimum.
    EcdsaP256,
}

/// in-toto Statement v1.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Statement {
    #[serde(rename = "_type")]
    pub statement_type: String,
    pub subject: Vec<Subject>,
    #[serde(rename = "predicateType")]
    pub predicate_type: String,
    pub predicate: TestResult,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    pub name: String,
    /// Algorithm → lower-case hex.
    pub digest: BTreeMap<String, String>,
}

/// The test-result predicate v0.1, plus the run itself under `meshwork`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TestResult {
    /// `PASSED`, `WARNED` (something unsupported or skipped, nothing failed) or `FAILED`.
    pub result: String,
    /// One descriptor per assertion: the configuration its adapter generated, by digest.
    pub configuration: Vec<ResourceDescriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    pub passed_tests: Vec<String>,
    /// Unsupported and skipped assertions.
    pub warned_tests: Vec<String>,
    pub failed_tests: Vec<String>,
    /// Everything `reproduce` needs to run it again.
    pub meshwork: RunRecord,
}

/// in-toto ResourceDescriptor (only the fields used here).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceDescriptor {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub digest: BTreeMap<String, String>,
}

/// DSSE envelope.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    /// base64 of the serialized body.
    pub payload: String,
    pub payload_type: String,
    pub signatures: Vec<Signature>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Signature {
    /// Optional in DSSE; here the hex SHA-256 of the signer's SubjectPublicKeyInfo DER.
    #[serde(default)]
    pub keyid: String,
    /// base64.
    pub sig: String,
}

/// A statement whose signature checked out, and which key signed it.
#[derive(Clone, Debug)]
pub struct Verified {
    pub statement: Statement,
    pub keyid: String,
}

impl Verified {
    pub fn record(&self) -> &RunRecord {
        &self.statement.predicate.meshwork
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("not a DSSE envelope: {0}")]
    NotEnvelope(String),
    #[error("the envelope's payloadType is {found:?}, not {PAYLOAD_TYPE:?}")]
    PayloadType { found: String },
    #[error("unusable public key: {0}")]
    Key(String),
    #[error("none of the envelope's {count} signature(s) verifies with key {keyid}")]
    NoValidSignature { keyid: String, count: usize },
    #[error("the payload is not an in-toto statement with a {PREDICATE_TYPE} predicate: {0}")]
    NotTestResultStatement(String),
}

/// An artifact whose file at hand is missing (`found: None`) or has another digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArtifactMismatch {
    pub name: String,
    pub path: PathBuf,
    pub expected: String,
    pub found: Option<String>,
}

/// DSSE's pre-authentication encoding: `"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`.
pub fn pae(payload_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!("DSSEv1 {} {} {} ", payload_type.len(), payload_type, body.len()).into_bytes();
    out.extend_from_slice(body);
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// The statement for a record: its artifacts as subjects, its verdicts as the predicate.
pub fn statement(record: &RunRecord) -> Statement {
    let subject = record
        .artifacts
        .iter()
        .map(|a| Subject { name: a.name.clone(), digest: BTreeMap::from([("sha256".into(), a.sha256.clone())]) })
        .collect();
    let (mut passed, mut warned, mut failed) = (vec![], vec![], vec![]);
    for r in &record.results {
        match r.verdict {
            Verdict::Pass => &mut passed,
            Verdict::Fail(_) => &mut failed,
            Verdict::Unsupported(_) | Verdict::Skipped(_) => &mut warned,
        }
        .push(r.id.clone());
    }
    let result = if !failed.is_empty() {
        "FAILED"
    } else if !warned.is_empty() {
        "WARNED"
    } else {
        "PASSED"
    };
    let configuration = record
        .results
        .iter()
        .map(|r| ResourceDescriptor {
            name: Some(r.id.clone()),
            digest: BTreeMap::from([("sha256".into(), sha256_hex(r.configuration.as_bytes()))]),
        })
        .collect();
    Statement {
        statement_type: STATEMENT_TYPE.into(),
        subject,
        predicate_type: PREDICATE_TYPE.into(),
        predicate: TestResult {
            result: result.into(),
            configuration,
            url: None,
            passed_tests: passed,
            warned_tests: warned,
            failed_tests: failed,
            meshwork: record.clone(),
        },
    }
}

fn pem_encode(tag: &str, der: &[u8]) -> String {
    pem::encode_config(&pem::Pem::new(tag, der), pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF))
}

fn pem_decode(text: &str, tag: &str) -> anyhow::Result<Vec<u8>> {
    let p = pem::parse(text).map_err(|e| anyhow!("not PEM: {e}"))?;
    if p.tag() != tag {
        bail!("expected a PEM \"{tag}\" block, found \"{}\"", p.tag());
    }
    Ok(p.into_contents())
}

fn spki(alg: Algorithm, raw: &[u8]) -> Vec<u8> {
    let prefix: &[u8] = match alg {
        Algorithm::Ed25519 => &ED25519_SPKI_PREFIX,
        Algorithm::EcdsaP256 => &P256_SPKI_PREFIX,
    };
    [prefix, raw].concat()
}

fn parse_spki(der: &[u8]) -> Option<(Algorithm, &[u8])> {
    if let Some(raw) = der.strip_prefix(&ED25519_SPKI_PREFIX[..]).filter(|r| r.len() == 32) {
        return Some((Algorithm::Ed25519, raw));
    }
    der.strip_prefix(&P256_SPKI_PREFIX[..]).filter(|r| r.len() == 65 && r[0] == 4).map(|r| (Algorithm::EcdsaP256, r))
}

/// A new key pair as (private PKCS#8 "PRIVATE KEY" PEM, public SubjectPublicKeyInfo "PUBLIC KEY"
/// PEM), the files `cosign generate-key-pair` users and openssl expect.
pub fn generate_key(alg: Algorithm) -> anyhow::Result<(String, String)> {
    let rng = SystemRandom::new();
    let pkcs8 = match alg {
        Algorithm::Ed25519 => Ed25519KeyPair::generate_pkcs8(&rng),
        Algorithm::EcdsaP256 => EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng),
    }
    .map_err(|_| anyhow!("generating an {alg:?} key failed"))?;
    let der = match alg {
        Algorithm::Ed25519 => ed25519_pkcs8_v1(pkcs8.as_ref())?,
        Algorithm::EcdsaP256 => pkcs8.as_ref().to_vec(),
    };
    let signer = Signer::from_pkcs8(&der)?;
    Ok((pem_encode("PRIVATE KEY", &der), pem_encode("PUBLIC KEY", &signer.spki())))
}

/// ring writes ed25519 keys as PKCS#8 v2 (seed plus public key), which OpenSSL 3.0 cannot read;
/// re-encode as v1 (seed only, RFC 8410), which every tool reads. Fixed prefixes again: the
/// encoding of a 32-byte seed never varies.
fn ed25519_pkcs8_v1(v2: &[u8]) -> anyhow::Result<Vec<u8>> {
    const V2_PREFIX: [u8; 16] =
        [0x30, 0x51, 0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
    const V1_PREFIX: [u8; 16] =
        [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
    let seed = v2
        .strip_prefix(&V2_PREFIX[..])
        .and_then(|rest| rest.get(..32))
        .ok_or_else(|| anyhow!("unexpected PKCS#8 layout from ring"))?;
    Ok([&V1_PREFIX[..], seed].concat())
}

enum Signer {
    Ed25519(Ed25519KeyPair),
    EcdsaP256(EcdsaKeyPair),
}

impl Signer {
    fn from_pkcs8(der: &[u8]) -> anyhow::Result<Self> {
        // `maybe_unchecked` also takes PKCS#8 v1 (openssl's ed25519 keys); v2 is still checked.
        if let Ok(k) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
            return Ok(Signer::Ed25519(k));
        }
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, der, &SystemRandom::new())
            .map(Signer::EcdsaP256)
            .map_err(|e| anyhow!("the private key is neither an ed25519 nor an ECDSA P-256 PKCS#8 key ({e})"))
    }

    fn spki(&self) -> Vec<u8> {
        match self {
            Signer::Ed25519(k) => spki(Algorithm::Ed25519, k.public_key().as_ref()),
            Signer::EcdsaP256(k) => spki(Algorithm::EcdsaP256, k.public_key().as_ref()),
        }
    }

    fn sign(&self, msg: &[u8]) -> anyhow::Result<Vec<u8>> {
        Ok(match self {
            Signer::Ed25519(k) => k.sign(msg).as_ref().to_vec(),
            Signer::EcdsaP256(k) => {
                k.sign(&SystemRandom::new(), msg).map_err(|_| anyhow!("ECDSA signing failed"))?.as_ref().to_vec()
            }
        })
    }
}

/// Signs any payload into a DSSE envelope (JSON).
pub fn sign_payload(payload_type: &str, body: &[u8], private_pem: &str) -> anyhow::Result<String> {
    let der = pem_decode(private_pem, "PRIVATE KEY")
        .context("reading the private key (a PKCS#8 PEM; convert others with `openssl pkcs8 -topk8 -nocrypt`)")?;
    let signer = Signer::from_pkcs8(&der)?;
    let sig = signer.sign(&pae(payload_type, body))?;
    let env = Envelope {
        payload: STANDARD.encode(body),
        payload_type: payload_type.into(),
        signatures: vec![Signature { keyid: sha256_hex(&signer.spki()), sig: STANDARD.encode(sig) }],
    };
    Ok(serde_json::to_string(&env)?)
}

/// The record's attestation: its [`statement`] in a DSSE envelope signed with the key.
pub fn sign(record: &RunRecord, private_pem: &str) -> anyhow::Result<String> {
    let body = serde_json::to_vec(&statement(record))?;
    sign_payload(PAYLOAD_TYPE, &body, private_pem)
}

/// The key id [`sign`] writes for this public key: hex SHA-256 of its SPKI DER.
pub fn key_id(public_pem: &str) -> Result<String, VerifyError> {
    let der = pem_decode(public_pem, "PUBLIC KEY").map_err(|e| VerifyError::Key(format!("{e:#}")))?;
    Ok(sha256_hex(&der))
}

/// DSSE allows standard and URL-safe base64, padded or not.
fn b64(s: &str) -> Option<Vec<u8>> {
    [STANDARD, URL_SAFE, STANDARD_NO_PAD, URL_SAFE_NO_PAD].iter().find_map(|e| e.decode(s).ok())
}

/// Checks the envelope against the public key and returns the statement it carries.
///
/// Every signature is tried (key ids are only hints); the payload is parsed only once a
/// signature over it has verified.
pub fn verify(envelope_json: &str, public_pem: &str) -> Result<Verified, VerifyError> {
    let env: Envelope = serde_json::from_str(envelope_json).map_err(|e| VerifyError::NotEnvelope(e.to_string()))?;
    let body = b64(&env.payload).ok_or_else(|| VerifyError::NotEnvelope("the payload is not base64".into()))?;
    if env.payload_type != PAYLOAD_TYPE {
        return Err(VerifyError::PayloadType { found: env.payload_type });
    }
    let der = pem_decode(public_pem, "PUBLIC KEY").map_err(|e| VerifyError::Key(format!("{e:#}")))?;
    let (alg, raw) = parse_spki(&der)
        .ok_or_else(|| VerifyError::Key("not an ed25519 or uncompressed P-256 SubjectPublicKeyInfo".into()))?;
    let key = match alg {
        Algorithm::Ed25519 => UnparsedPublicKey::new(&ED25519, raw),
        Algorithm::EcdsaP256 => UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, raw),
    };
    let keyid = sha256_hex(&der);
    let msg = pae(&env.payload_type, &body);
    let verified = env.signatures.iter().any(|s| b64(&s.sig).is_some_and(|sig| key.verify(&msg, &sig).is_ok()));
    if !verified {
        return Err(VerifyError::NoValidSignature { keyid, count: env.signatures.len() });
    }

    let not = |why: String| VerifyError::NotTestResultStatement(why);
    let value: serde_json::Value = serde_json::from_slice(&body).map_err(|e| not(format!("not JSON: {e}")))?;
    if value.get("_type").and_then(|t| t.as_str()) != Some(STATEMENT_TYPE) {
        return Err(not(format!("_type is {}", value.get("_type").unwrap_or(&serde_json::Value::Null))));
    }
    if value.get("predicateType").and_then(|t| t.as_str()) != Some(PREDICATE_TYPE) {
        return Err(not(format!(
            "predicateType is {}",
            value.get("predicateType").unwrap_or(&serde_json::Value::Null)
        )));
    }
    let statement: Statement = serde_json::from_value(value).map_err(|e| not(e.to_string()))?;
    Ok(Verified { statement, keyid })
}

/// Hex SHA-256 of a file's contents, or `None` if it cannot be read.
pub fn sha256_file(path: &Path) -> Option<String> {
    let mut f = std::fs::File::open(path).ok()?;
    let mut h = Sha256::new();
    let mut buf = vec![0; 64 * 1024];
    loop {
        match f.read(&mut buf) {
            Ok(0) => return Some(hex(&h.finalize())),
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}

/// The record's artifacts whose file at hand is missing or differs; `digest_of` gives a path's
/// hex SHA-256 ([`sha256_file`] for the real files) or `None` if there is no such file.
pub fn check_artifacts(
    record: &RunRecord,
    mut digest_of: impl FnMut(&Path) -> Option<String>,
) -> Vec<ArtifactMismatch> {
    record
        .artifacts
        .iter()
        .filter_map(|a| {
            let found = digest_of(&a.path);
            let same = found.as_deref().is_some_and(|f| f.eq_ignore_ascii_case(&a.sha256));
            (!same).then(|| ArtifactMismatch {
                name: a.name.clone(),
                path: a.path.clone(),
                expected: a.sha256.clone(),
                found,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::Level::Core;
    use crate::outcome::{Artifact, SuiteName};
    use crate::report::fixtures::{record, result};

    fn run() -> RunRecord {
        let mut rec = record(
            "meshwork",
            vec![
                result("gamma/MeshBasic/200", SuiteName::Gamma, Core, &[], Verdict::Pass),
                result("gamma/MeshPorts/a", SuiteName::Gamma, Core, &[], Verdict::Unsupported("no".into())),
                result("smi/TrafficSplit/a", SuiteName::Smi, Core, &[], Verdict::Fail("70/30 was 90/10".into())),
            ],
        );
        rec.artifacts =
            vec![Artifact { name: "meshwork".into(), path: "/bin/meshwork".into(), sha256: "ab".repeat(32) }];
        rec
    }

    fn json(r: &RunRecord) -> String {
        serde_json::to_string(r).unwrap()
    }

    #[test]
    fn round_trip_both_algorithms() {
        for alg in [Algorithm::Ed25519, Algorithm::EcdsaP256] {
            let (private, public) = generate_key(alg).unwrap();
            assert!(private.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{private}");
            assert!(public.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{public}");
            let der = pem_decode(&public, "PUBLIC KEY").unwrap();
            assert_eq!(parse_spki(&der).map(|(a, _)| a), Some(alg));
            let private_der = pem_decode(&private, "PRIVATE KEY").unwrap();
            assert_eq!(Signer::from_pkcs8(&private_der).unwrap().spki(), der, "{alg:?}: the pair does not match");
            if alg == Algorithm::Ed25519 {
                assert_eq!(private_der.len(), 48, "PKCS#8 v1, which OpenSSL reads");
            }

            let rec = run();
            let env = sign(&rec, &private).unwrap();
            let e: Envelope = serde_json::from_str(&env).unwrap();
            assert_eq!(e.payload_type, PAYLOAD_TYPE);
            assert_eq!(e.signatures[0].keyid, key_id(&public).unwrap());

            let v = verify(&env, &public).unwrap_or_else(|err| panic!("{alg:?}: {err}"));
            assert_eq!(v.keyid, sha256_hex(&der));
            assert_eq!(json(v.record()), json(&rec));
            let s = &v.statement;
            assert_eq!(s.statement_type, STATEMENT_TYPE);
            assert_eq!(s.predicate_type, PREDICATE_TYPE);
            assert_eq!(
                s.subject,
                [Subject { name: "meshwork".into(), digest: [("sha256".into(), "ab".repeat(32))].into() }]
            );
            let p = &s.predicate;
            assert_eq!(p.result, "FAILED");
            assert_eq!(p.passed_tests, ["gamma/MeshBasic/200"]);
            assert_eq!(p.warned_tests, ["gamma/MeshPorts/a"]);
            assert_eq!(p.failed_tests, ["smi/TrafficSplit/a"]);
            assert_eq!(p.configuration.len(), 3);
            assert_eq!(p.configuration[0].digest["sha256"], sha256_hex(b"config for gamma/MeshBasic/200"));
        }
    }

    #[test]
    fn statement_uses_the_spec_field_names() {
        let mut rec = run();
        rec.results.truncate(2);
        let v = serde_json::to_value(statement(&rec)).unwrap();
        assert_eq!(v["_type"], STATEMENT_TYPE);
        assert_eq!(v["predicateType"], PREDICATE_TYPE);
        assert_eq!(v["subject"][0]["digest"]["sha256"], "ab".repeat(32));
        assert_eq!(v["predicate"]["result"], "WARNED");
        assert_eq!(v["predicate"]["passedTests"][0], "gamma/MeshBasic/200");
        assert_eq!(v["predicate"]["warnedTests"][0], "gamma/MeshPorts/a");
        assert_eq!(v["predicate"]["failedTests"], serde_json::json!([]));
        assert_eq!(v["predicate"]["meshwork"]["arguments"], serde_json::json!(["--target", "meshwork"]));
        assert!(v["predicate"].get("url").is_none());
        rec.results.truncate(1);
        assert_eq!(statement(&rec).predicate.result, "PASSED");
    }

    #[test]
    fn pae_matches_the_dsse_spec_example() {
        // From the DSSE protocol document.
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
        );
    }

    #[test]
    fn tampered_payload_is_refused() {
        let (private, public) = generate_key(Algorithm::Ed25519).unwrap();
        let mut e: Envelope = serde_json::from_str(&sign(&run(), &private).unwrap()).unwrap();
        let body = String::from_utf8(STANDARD.decode(&e.payload).unwrap()).unwrap();
        let forged = body.replace("\"result\":\"FAILED\"", "\"result\":\"PASSED\"");
        assert_ne!(forged, body);
        e.payload = STANDARD.encode(forged);
        let err = verify(&serde_json::to_string(&e).unwrap(), &public).unwrap_err();
        assert!(matches!(err, VerifyError::NoValidSignature { count: 1, .. }), "{err}");
    }

    #[test]
    fn wrong_key_is_refused() {
        let (private, _) = generate_key(Algorithm::EcdsaP256).unwrap();
        let env = sign(&run(), &private).unwrap();
        for alg in [Algorithm::EcdsaP256, Algorithm::Ed25519] {
            let (_, other) = generate_key(alg).unwrap();
            let err = verify(&env, &other).unwrap_err();
            assert!(matches!(err, VerifyError::NoValidSignature { .. }), "{alg:?}: {err}");
        }
        let mut e: Envelope = serde_json::from_str(&env).unwrap();
        e.signatures.clear();
        let (_, public) = generate_key(Algorithm::EcdsaP256).unwrap();
        let err = verify(&serde_json::to_string(&e).unwrap(), &public).unwrap_err();
        assert!(err.to_string().contains("none of the envelope's 0 signature(s)"), "{err}");
    }

    #[test]
    fn distinct_errors() {
        let (private, public) = generate_key(Algorithm::Ed25519).unwrap();
        let err = verify("{\"hello\": 1}", &public).unwrap_err();
        assert!(matches!(err, VerifyError::NotEnvelope(_)), "{err}");
        let err = verify("not json", &public).unwrap_err();
        assert!(matches!(err, VerifyError::NotEnvelope(_)), "{err}");

        let other_type = sign_payload("application/json", b"{}", &private).unwrap();
        let err = verify(&other_type, &public).unwrap_err();
        assert!(matches!(&err, VerifyError::PayloadType { found } if found == "application/json"), "{err}");

        let not_statement = sign_payload(PAYLOAD_TYPE, b"{\"_type\":\"x\"}", &private).unwrap();
        let err = verify(&not_statement, &public).unwrap_err();
        assert!(matches!(err, VerifyError::NotTestResultStatement(_)), "{err}");

        let mut s = serde_json::to_value(statement(&run())).unwrap();
        s["predicateType"] = "https://slsa.dev/provenance/v1".into();
        let provenance = sign_payload(PAYLOAD_TYPE, &serde_json::to_vec(&s).unwrap(), &private).unwrap();
        let err = verify(&provenance, &public).unwrap_err();
        assert!(matches!(&err, VerifyError::NotTestResultStatement(why) if why.contains("slsa")), "{err}");

        let env = sign(&run(), &private).unwrap();
        let err = verify(&env, &private).unwrap_err();
        assert!(matches!(err, VerifyError::Key(_)), "{err}");
        assert!(sign(&run(), &public).is_err());
    }

    #[test]
    fn accepts_url_safe_unpadded_base64() {
        let (private, public) = generate_key(Algorithm::Ed25519).unwrap();
        let mut e: Envelope = serde_json::from_str(&sign(&run(), &private).unwrap()).unwrap();
        e.payload = URL_SAFE_NO_PAD.encode(STANDARD.decode(&e.payload).unwrap());
        e.signatures[0].sig = URL_SAFE_NO_PAD.encode(STANDARD.decode(&e.signatures[0].sig).unwrap());
        verify(&serde_json::to_string(&e).unwrap(), &public).unwrap();
    }

    #[test]
    fn artifact_mismatches_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let same = dir.path().join("meshwork");
        let changed = dir.path().join("filter.wasm");
        std::fs::write(&same, b"binary").unwrap();
        std::fs::write(&changed, b"rebuilt").unwrap();
        let mut rec = run();
        rec.artifacts = vec![
            Artifact { name: "meshwork".into(), path: same.clone(), sha256: sha256_hex(b"binary") },
            Artifact { name: "filter".into(), path: changed.clone(), sha256: sha256_hex(b"original") },
            Artifact { name: "gone".into(), path: dir.path().join("gone"), sha256: sha256_hex(b"x") },
        ];
        let m = check_artifacts(&rec, sha256_file);
        assert_eq!(
            m,
            [
                ArtifactMismatch {
                    name: "filter".into(),
                    path: changed,
                    expected: sha256_hex(b"original"),
                    found: Some(sha256_hex(b"rebuilt")),
                },
                ArtifactMismatch {
                    name: "gone".into(),
                    path: dir.path().join("gone"),
                    expected: sha256_hex(b"x"),
                    found: None,
                },
            ]
        );
        assert_eq!(sha256_file(&same), Some(sha256_hex(b"binary")));
    }
}
