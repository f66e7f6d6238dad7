//! cosign-compatible signatures, offline (no Fulcio, no Rekor): a key pair of ECDSA P-256, a
//! simple-signing payload naming the manifest digest, and the signature stored as cosign stores
//! it (sigstore/cosign specs/SIGNATURE_SPEC.md): an image tagged `sha256-<hex>.sig` in the same
//! repository whose layers are payloads, each with its base64 signature in the annotation
//! `dev.cosignproject.cosign/signature`. `cosign verify --key <our .pub>` accepts what this
//! writes; ring does the cryptography, so no cosign or OpenSSL is needed.

use std::collections::BTreeMap;

use anyhow::Context;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivatePkcs8KeyDer, SubjectPublicKeyInfoDer};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::artifact::{Artifact, Blob};
use crate::registry::{Failure, FailureKind, Reference, Registry};
use crate::{digest_hex, digest_of, media};

/// The DER prefix of a P-256 SubjectPublicKeyInfo (id-ecPublicKey, prime256v1), before the
/// 65-byte uncompressed point.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce,
    0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
const COSIGN_TYPE: &str = "cosign container image signature";

pub struct SigningKey {
    pair: EcdsaKeyPair,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyingKey {
    /// The uncompressed point.
    point: Vec<u8>,
}

/// A new key pair as PEM: (PKCS#8 private key, SubjectPublicKeyInfo public key).
pub fn keygen() -> anyhow::Result<(String, String)> {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
        .map_err(|_| anyhow::anyhow!("generating an ECDSA P-256 key failed"))?;
    let key = SigningKey::from_pkcs8(pkcs8.as_ref())?;
    Ok((pem("PRIVATE KEY", pkcs8.as_ref()), key.public().to_pem()))
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = B64.encode(der);
    let lines: Vec<&str> = body.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).expect("base64")).collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}

impl SigningKey {
    fn from_pkcs8(der: &[u8]) -> anyhow::Result<SigningKey> {
        let pair = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, der, &SystemRandom::new())
            .map_err(|e| anyhow::anyhow!("not an ECDSA P-256 private key ({e})"))?;
        Ok(SigningKey { pair })
    }

    /// A PKCS#8 PEM private key (`meshwork catalog keygen` writes one; `openssl genpkey
    /// -algorithm EC -pkeyopt ec_paramgen_curve:P-256` too).
    pub fn from_pem(text: &[u8]) -> anyhow::Result<SigningKey> {
        let der = PrivatePkcs8KeyDer::from_pem_slice(text)
            .map_err(|e| anyhow::anyhow!("expected a PEM \"PRIVATE KEY\" (PKCS#8): {e}"))?;
        SigningKey::from_pkcs8(der.secret_pkcs8_der())
    }

    pub fn public(&self) -> VerifyingKey {
        VerifyingKey { point: self.pair.public_key().as_ref().to_vec() }
    }

    /// An ASN.1 DER signature of SHA-256(message), as cosign writes.
    pub fn sign(&self, message: &[u8]) -> anyhow::Result<Vec<u8>> {
        let sig = self.pair.sign(&SystemRandom::new(), message).map_err(|_| anyhow::anyhow!("signing failed"))?;
        Ok(sig.as_ref().to_vec())
    }
}

impl VerifyingKey {
    /// A PEM "PUBLIC KEY" (SubjectPublicKeyInfo) of ECDSA P-256, as cosign's `.pub` files.
    pub fn from_pem(text: &[u8]) -> anyhow::Result<VerifyingKey> {
        let der = SubjectPublicKeyInfoDer::from_pem_slice(text)
            .map_err(|e| anyhow::anyhow!("expected a PEM \"PUBLIC KEY\": {e}"))?;
        let der = der.as_ref();
        anyhow::ensure!(
            der.len() == P256_SPKI_PREFIX.len() + 65 && der.starts_with(&P256_SPKI_PREFIX),
            "the public key is not an uncompressed ECDSA P-256 key (the only kind meshwork verifies)"
        );
        Ok(VerifyingKey { point: der[P256_SPKI_PREFIX.len()..].to_vec() })
    }

    pub fn to_pem(&self) -> String {
        let mut der = P256_SPKI_PREFIX.to_vec();
        der.extend_from_slice(&self.point);
        pem("PUBLIC KEY", &der)
    }

    pub fn verifies(&self, message: &[u8], sig: &[u8]) -> bool {
        signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, &self.point).verify(message, sig).is_ok()
    }

    /// A short fingerprint for messages: the first 16 hex digits of sha256(point).
    pub fn fingerprint(&self) -> String {
        digest_of(&self.point)[7..23].to_owned()
    }
}

/// The simple-signing payload for a manifest of a repository.
pub fn payload(repository: &str, manifest_digest: &str) -> Vec<u8> {
    let p = json!({
        "critical": {
            "identity": {"docker-reference": repository},
            "image": {"docker-manifest-digest": manifest_digest},
            "type": COSIGN_TYPE,
        },
        "optional": null,
    });
    serde_json::to_vec(&p).expect("json")
}

/// cosign's tag for the signatures of a manifest.
pub fn signature_tag(manifest_digest: &str) -> anyhow::Result<String> {
    Ok(format!("sha256-{}.sig", digest_hex(manifest_digest)?))
}

/// One signature as stored: the payload and its signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    #[serde(with = "b64")]
    pub payload: Vec<u8>,
    #[serde(with = "b64")]
    pub signature: Vec<u8>,
}

mod b64 {
    use super::B64;
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(v))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        B64.decode(s).map_err(serde::de::Error::custom)
    }
}

fn repository_of(reference: &Reference) -> String {
    format!("{}/{}", reference.registry(), reference.repository())
}

fn signature_reference(reference: &Reference, manifest_digest: &str) -> anyhow::Result<Reference> {
    Ok(Reference::with_tag(
        reference.registry().to_owned(),
        reference.repository().to_owned(),
        signature_tag(manifest_digest)?,
    ))
}

/// The signature image holding `signatures`, as cosign lays it out.
fn signature_artifact(signatures: &[Signature]) -> Artifact {
    let layers: Vec<Blob> = signatures
        .iter()
        .map(|s| {
            let mut blob = Blob::new(media::COSIGN_SIMPLE_SIGNING, s.payload.clone());
            blob.annotations.insert(media::COSIGN_SIGNATURE_ANNOTATION.to_owned(), B64.encode(&s.signature));
            blob
        })
        .collect();
    let config = json!({
        "architecture": "",
        "created": "0001-01-01T00:00:00Z",
        "history": [{"created": "0001-01-01T00:00:00Z"}],
        "os": "",
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(Blob::digest).collect::<Vec<_>>()},
        "config": {},
    });
    Artifact {
        config: Blob::new(media::OCI_IMAGE_CONFIG, serde_json::to_vec(&config).expect("json")),
        layers,
        annotations: BTreeMap::new(),
    }
}

/// The signatures stored for a manifest (none when its `.sig` tag does not exist).
pub async fn fetch_signatures(
    registry: &Registry,
    reference: &Reference,
    manifest_digest: &str,
) -> anyhow::Result<Vec<Signature>> {
    let sig_ref = signature_reference(reference, manifest_digest)?;
    let Some(pulled) = registry.try_manifest(&sig_ref).await? else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for layer in &pulled.manifest.layers {
        if layer.media_type != media::COSIGN_SIMPLE_SIGNING {
            continue;
        }
        let Some(sig) = layer.annotations.as_ref().and_then(|a| a.get(media::COSIGN_SIGNATURE_ANNOTATION)) else {
            continue;
        };
        let signature =
            B64.decode(sig.trim()).with_context(|| format!("a signature in {} is not base64", sig_ref.whole()))?;
        let payload = registry.blob(&sig_ref, layer).await?;
        out.push(Signature { payload, signature });
    }
    Ok(out)
}

/// Signs the manifest `manifest_digest` of `reference`'s repository and stores the signature
/// next to any already there. Returns the signature tag.
pub async fn sign(
    registry: &Registry,
    reference: &Reference,
    manifest_digest: &str,
    key: &SigningKey,
) -> anyhow::Result<String> {
    let payload = payload(&repository_of(reference), manifest_digest);
    let new = Signature { signature: key.sign(&payload)?, payload };
    let mut signatures = fetch_signatures(registry, reference, manifest_digest).await?;
    // One signature per key: signing again replaces this key's earlier one.
    let public = key.public();
    signatures.retain(|s| !public.verifies(&s.payload, &s.signature));
    signatures.push(new);
    let sig_ref = signature_reference(reference, manifest_digest)?;
    registry.push(&sig_ref, &signature_artifact(&signatures)).await?;
    Ok(sig_ref.tag().unwrap_or_default().to_owned())
}

/// Checks that some signature verifies with `key` and names `manifest_digest`; says which of
/// missing, wrong key or wrong manifest it was otherwise.
pub fn check_signatures(
    signatures: &[Signature],
    manifest_digest: &str,
    key: &VerifyingKey,
    what: &str,
) -> anyhow::Result<()> {
    let fail = |msg: String| -> anyhow::Result<()> { Err(Failure::new(FailureKind::Signature, msg).into()) };
    if signatures.is_empty() {
        return fail(format!("{what} is not signed (no {} signature image)", signature_tag(manifest_digest)?));
    }
    let mut for_other = Vec::new();
    for s in signatures {
        if !key.verifies(&s.payload, &s.signature) {
            continue;
        }
        let claimed = serde_json::from_slice::<serde_json::Value>(&s.payload)
            .ok()
            .and_then(|p| {
                let c = &p["critical"];
                (c["type"] == COSIGN_TYPE).then(|| c["image"]["docker-manifest-digest"].as_str().map(str::to_owned))?
            })
            .unwrap_or_default();
        if claimed == manifest_digest {
            return Ok(());
        }
        for_other.push(claimed);
    }
    if !for_other.is_empty() {
        return fail(format!(
            "{what}: the signature made with key {} is for manifest {}, not {manifest_digest} (the manifest was changed after signing)",
            key.fingerprint(),
            for_other.join(", ")
        ));
    }
    fail(format!(
        "{what}: none of its {} signature(s) verifies with key {} (signed with another key, or altered)",
        signatures.len(),
        key.fingerprint()
    ))
}

/// Fetches and checks the signatures of a manifest; returns them (for a cache to keep).
pub async fn verify(
    registry: &Registry,
    reference: &Reference,
    manifest_digest: &str,
    key: &VerifyingKey,
) -> anyhow::Result<Vec<Signature>> {
    let signatures = fetch_signatures(registry, reference, manifest_digest).await?;
    check_signatures(&signatures, manifest_digest, key, &format!("{}@{manifest_digest}", repository_of(reference)))?;
    Ok(signatures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_pem_and_sign() {
        let (private, public) = keygen().unwrap();
        assert!(private.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let key = SigningKey::from_pem(private.as_bytes()).unwrap();
        let public = VerifyingKey::from_pem(public.as_bytes()).unwrap();
        assert_eq!(key.public(), public);
        let sig = key.sign(b"payload").unwrap();
        assert!(public.verifies(b"payload", &sig));
        assert!(!public.verifies(b"pay1oad", &sig));
    }

    #[test]
    fn checks_say_missing_wrong_key_or_other_manifest() {
        let d1 = format!("sha256:{}", "1".repeat(64));
        let d2 = format!("sha256:{}", "2".repeat(64));
        let key = SigningKey::from_pem(keygen().unwrap().0.as_bytes()).unwrap();
        let other = SigningKey::from_pem(keygen().unwrap().0.as_bytes()).unwrap();
        let p = payload("r/x", &d1);
        let sigs = vec![Signature { signature: key.sign(&p).unwrap(), payload: p }];
        check_signatures(&sigs, &d1, &key.public(), "x").unwrap();
        let msg = |r: anyhow::Result<()>| format!("{:#}", r.unwrap_err());
        assert!(msg(check_signatures(&[], &d1, &key.public(), "x")).contains("is not signed"));
        assert!(
            msg(check_signatures(&sigs, &d1, &other.public(), "x")).contains("none of its 1 signature(s) verifies")
        );
        assert!(msg(check_signatures(&sigs, &d2, &key.public(), "x")).contains("was changed after signing"));
    }

    #[test]
    fn foreign_keys_are_refused_clearly() {
        // An Ed25519 SubjectPublicKeyInfo.
        let ed = pem("PUBLIC KEY", &[0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00, 1, 2, 3]);
        let err = VerifyingKey::from_pem(ed.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("P-256"), "{err}");
        assert!(SigningKey::from_pem(b"nonsense").is_err());
    }
}
