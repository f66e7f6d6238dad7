//! Envoy's foreign functions (`proxy_call_foreign_function`), with Envoy's names and argument
//! formats: `compress` / `uncompress` (zlib format), `verify_signature` / `sign` (protobuf
//! arguments and results), `set_envoy_filter_state`, `clear_route_cache`, `declare_property`.
//! An unknown name is NotFound, as in Envoy. CEL expressions (`expr_*`) are not provided (Envoy
//! builds without its CEL parser answer NotFound too).

use std::io::{Read, Write};

use bytes::Bytes;
use prost::Message;
use ring::signature::{self, KeyPair as _};
use x509_parser::prelude::FromDer;

use crate::abi::Status;

/// What a foreign function asks of the stream it ran in.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamEffect {
    /// Store `value` under `path` in the stream's filter state (`filter_state.<path>`).
    SetFilterState { path: Vec<u8>, value: Bytes },
    /// Choose the route again before the request goes upstream.
    ClearRouteCache,
}

/// A foreign function's answer: its status, the bytes it returns, what the stream must do.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub result: Vec<u8>,
    pub effect: Option<StreamEffect>,
}

/// `envoy.source.extensions.common.wasm.VerifySignatureArguments`.
#[derive(Clone, PartialEq, Message)]
pub struct VerifySignatureArguments {
    #[prost(string, tag = "1")]
    pub hash_function: String,
    /// DER SubjectPublicKeyInfo.
    #[prost(bytes = "vec", tag = "2")]
    pub public_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    pub signature: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    pub text: Vec<u8>,
    #[prost(string, tag = "5")]
    pub public_key_pem: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct VerifySignatureResult {
    #[prost(bool, tag = "1")]
    pub result: bool,
    #[prost(string, tag = "2")]
    pub error: String,
}

/// `SignArguments`: the key is DER PKCS#8 or PEM.
#[derive(Clone, PartialEq, Message)]
pub struct SignArguments {
    #[prost(string, tag = "1")]
    pub hash_function: String,
    #[prost(bytes = "vec", tag = "2")]
    pub private_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    pub text: Vec<u8>,
    #[prost(string, tag = "4")]
    pub private_key_pem: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct SignResult {
    #[prost(bool, tag = "1")]
    pub result: bool,
    #[prost(bytes = "vec", tag = "2")]
    pub signature: Vec<u8>,
    #[prost(string, tag = "3")]
    pub error: String,
}

/// `SetEnvoyFilterStateArguments`.
#[derive(Clone, PartialEq, Message)]
pub struct SetEnvoyFilterStateArguments {
    #[prost(string, tag = "1")]
    pub path: String,
    #[prost(string, tag = "2")]
    pub value: String,
    #[prost(int32, tag = "3")]
    pub span: i32,
}

/// `DeclarePropertyArguments` (only the name is kept).
#[derive(Clone, PartialEq, Message)]
pub struct DeclarePropertyArguments {
    #[prost(string, tag = "1")]
    pub name: String,
}

/// The names this host registers.
pub const NAMES: [&str; 7] = [
    "compress",
    "uncompress",
    "verify_signature",
    "sign",
    "set_envoy_filter_state",
    "clear_route_cache",
    "declare_property",
];

/// Runs foreign function `name` on `args`. `in_stream` says whether the calling context is a
/// stream (filter state and routes exist only there).
pub fn call(name: &[u8], args: &[u8], in_stream: bool) -> Result<Outcome, Status> {
    let result = |bytes: Vec<u8>| Ok(Outcome { result: bytes, effect: None });
    match name {
        b"compress" => {
            let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            z.write_all(args).map_err(|_| Status::SerializationFailure)?;
            result(z.finish().map_err(|_| Status::SerializationFailure)?)
        }
        b"uncompress" => {
            let mut out = Vec::new();
            flate2::read::ZlibDecoder::new(args).read_to_end(&mut out).map_err(|_| Status::SerializationFailure)?;
            result(out)
        }
        b"verify_signature" => {
            let a = VerifySignatureArguments::decode(args).map_err(|_| Status::BadArgument)?;
            let key = match (a.public_key.is_empty(), a.public_key_pem.is_empty()) {
                (false, true) => a.public_key.clone(),
                (true, false) => pem_body(&a.public_key_pem).unwrap_or_default(),
                _ => return Err(Status::BadArgument),
            };
            let (ok, error) = match verify(&a.hash_function, &key, &a.signature, &a.text) {
                Ok(()) => (true, String::new()),
                Err(e) => (false, e),
            };
            result(VerifySignatureResult { result: ok, error }.encode_to_vec())
        }
        b"sign" => {
            let a = SignArguments::decode(args).map_err(|_| Status::BadArgument)?;
            let key = match (a.private_key.is_empty(), a.private_key_pem.is_empty()) {
                (false, true) => a.private_key.clone(),
                (true, false) => pem_body(&a.private_key_pem).unwrap_or_default(),
                _ => return Err(Status::BadArgument),
            };
            let outcome = match sign(&a.hash_function, &key, &a.text) {
                Ok(signature) => SignResult { result: true, signature, error: String::new() },
                Err(error) => SignResult { result: false, signature: Vec::new(), error },
            };
            result(outcome.encode_to_vec())
        }
        b"set_envoy_filter_state" => {
            let a = SetEnvoyFilterStateArguments::decode(args).map_err(|_| Status::BadArgument)?;
            if !in_stream {
                return Err(Status::NotFound);
            }
            if a.path.is_empty() {
                return Err(Status::BadArgument);
            }
            let effect = StreamEffect::SetFilterState { path: a.path.into_bytes(), value: Bytes::from(a.value) };
            Ok(Outcome { result: Vec::new(), effect: Some(effect) })
        }
        b"clear_route_cache" => {
            Ok(Outcome { result: Vec::new(), effect: in_stream.then_some(StreamEffect::ClearRouteCache) })
        }
        b"declare_property" => {
            DeclarePropertyArguments::decode(args).map_err(|_| Status::BadArgument)?;
            result(Vec::new())
        }
        _ => Err(Status::NotFound),
    }
}

/// The DER inside a PEM block.
fn pem_body(pem: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD.decode(body.trim()).ok()
}

fn unsupported(hash: &str) -> String {
    format!("{hash} is not supported.")
}

/// Verifies `signature` over `text` with the key in a DER SubjectPublicKeyInfo: RSA PKCS#1 v1.5
/// or ECDSA (P-256, P-384; DER signatures) with the named hash, or Ed25519.
fn verify(hash: &str, spki: &[u8], sig: &[u8], text: &[u8]) -> Result<(), String> {
    use x509_parser::x509::SubjectPublicKeyInfo;
    let hash = hash.to_ascii_lowercase();
    let Ok((_, info)) = SubjectPublicKeyInfo::from_der(spki) else {
        return Err("Failed to initialize digest verify.".into());
    };
    let key = info.subject_public_key.data.as_ref();
    let oid = info.algorithm.algorithm.to_id_string();
    let curve = info.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok()).map(|o| o.to_id_string());
    let algorithm: &dyn signature::VerificationAlgorithm = match (oid.as_str(), curve.as_deref(), hash.as_str()) {
        ("1.2.840.113549.1.1.1", _, "sha1") => &signature::RSA_PKCS1_1024_8192_SHA1_FOR_LEGACY_USE_ONLY,
        ("1.2.840.113549.1.1.1", _, "sha256") => &signature::RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY,
        ("1.2.840.113549.1.1.1", _, "sha384") => &signature::RSA_PKCS1_2048_8192_SHA384,
        ("1.2.840.113549.1.1.1", _, "sha512") => &signature::RSA_PKCS1_1024_8192_SHA512_FOR_LEGACY_USE_ONLY,
        ("1.2.840.10045.2.1", Some("1.2.840.10045.3.1.7"), "sha256") => &signature::ECDSA_P256_SHA256_ASN1,
        ("1.2.840.10045.2.1", Some("1.2.840.10045.3.1.7"), "sha384") => &signature::ECDSA_P256_SHA384_ASN1,
        ("1.2.840.10045.2.1", Some("1.3.132.0.34"), "sha256") => &signature::ECDSA_P384_SHA256_ASN1,
        ("1.2.840.10045.2.1", Some("1.3.132.0.34"), "sha384") => &signature::ECDSA_P384_SHA384_ASN1,
        ("1.3.101.112", _, _) => &signature::ED25519,
        _ => return Err(unsupported(&hash)),
    };
    signature::UnparsedPublicKey::new(algorithm, key)
        .verify(text, sig)
        .map_err(|_| "Failed to verify digest. Error code: 0".to_owned())
}

/// Signs `text` with a DER PKCS#8 private key: RSA PKCS#1 v1.5, ECDSA (DER), or Ed25519.
fn sign(hash: &str, pkcs8: &[u8], text: &[u8]) -> Result<Vec<u8>, String> {
    let hash = hash.to_ascii_lowercase();
    let rng = ring::rand::SystemRandom::new();
    if let Ok(key) = signature::RsaKeyPair::from_pkcs8(pkcs8) {
        let padding: &'static dyn signature::RsaEncoding = match hash.as_str() {
            "sha256" => &signature::RSA_PKCS1_SHA256,
            "sha384" => &signature::RSA_PKCS1_SHA384,
            "sha512" => &signature::RSA_PKCS1_SHA512,
            _ => return Err(unsupported(&hash)),
        };
        let mut out = vec![0u8; key.public().modulus_len()];
        key.sign(padding, &rng, text, &mut out).map_err(|_| "Failed to create signature.".to_owned())?;
        return Ok(out);
    }
    for (alg, h) in
        [(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, "sha256"), (&signature::ECDSA_P384_SHA384_ASN1_SIGNING, "sha384")]
    {
        if let Ok(key) = signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8, &rng) {
            if hash != h {
                return Err(unsupported(&hash));
            }
            return key.sign(&rng, text).map(|s| s.as_ref().to_vec()).map_err(|_| "Failed to create signature.".into());
        }
    }
    if let Ok(key) = signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8) {
        let _ = key.public_key();
        return Ok(key.sign(text).as_ref().to_vec());
    }
    Err("Invalid private key: key data is corrupted or malformed.".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compress_round_trips_in_zlib_format() {
        let text = b"hello hello hello hello".repeat(10);
        let z = call(b"compress", &text, false).unwrap().result;
        assert_eq!(z[0], 0x78, "zlib header");
        assert!(z.len() < text.len());
        assert_eq!(call(b"uncompress", &z, false).unwrap().result, text);
        assert_eq!(call(b"uncompress", b"not zlib", false), Err(Status::SerializationFailure));
    }

    #[test]
    fn unknown_names_are_not_found() {
        assert_eq!(call(b"expr_create", b"", true), Err(Status::NotFound));
        assert_eq!(call(b"nope", b"", true), Err(Status::NotFound));
    }

    #[test]
    fn sign_then_verify_with_ecdsa_and_rsa_keys() {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = signature::EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let args = SignArguments {
            hash_function: "SHA256".into(),
            private_key: pkcs8.as_ref().to_vec(),
            text: b"payload".to_vec(),
            private_key_pem: String::new(),
        };
        let signed = SignResult::decode(&call(b"sign", &args.encode_to_vec(), false).unwrap().result[..]).unwrap();
        assert!(signed.result, "{}", signed.error);
        // The SubjectPublicKeyInfo for the key: ring gives the raw point; wrap it.
        let key = signature::EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let point = key.public_key().as_ref();
        let mut spki = vec![
            0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48,
            0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
        ];
        spki.extend_from_slice(point);
        let verify = |text: &[u8]| {
            let args = VerifySignatureArguments {
                hash_function: "sha256".into(),
                public_key: spki.clone(),
                signature: signed.signature.clone(),
                text: text.to_vec(),
                public_key_pem: String::new(),
            };
            VerifySignatureResult::decode(&call(b"verify_signature", &args.encode_to_vec(), false).unwrap().result[..])
                .unwrap()
        };
        assert!(verify(b"payload").result);
        let bad = verify(b"tampered");
        assert!(!bad.result && bad.error.starts_with("Failed to verify"), "{bad:?}");
        // Neither key given: BadArgument, as Envoy.
        let none = VerifySignatureArguments::default().encode_to_vec();
        assert_eq!(call(b"verify_signature", &none, false), Err(Status::BadArgument));
    }

    #[test]
    fn filter_state_and_route_cache_need_a_stream() {
        let args = SetEnvoyFilterStateArguments { path: "envoy.tcp_proxy.cluster".into(), value: "b".into(), span: 0 };
        let out = call(b"set_envoy_filter_state", &args.encode_to_vec(), true).unwrap();
        assert_eq!(
            out.effect,
            Some(StreamEffect::SetFilterState { path: b"envoy.tcp_proxy.cluster".to_vec(), value: Bytes::from("b") })
        );
        assert_eq!(call(b"set_envoy_filter_state", &args.encode_to_vec(), false), Err(Status::NotFound));
        assert_eq!(call(b"clear_route_cache", b"", true).unwrap().effect, Some(StreamEffect::ClearRouteCache));
    }
}
