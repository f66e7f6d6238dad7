//! Modules from registries and web servers, as Istio's agent fetches them (pkg/wasm): `oci://`
//! references checked against the manifest digest, `http(s)://` URLs against the digest of the
//! module itself; a Wasm magic check; a cache by digest so a proxy restarts without the network.
//!
//! Pull policy, as Istio's `imagePullPolicy`: `IfNotPresent` uses a module cached for the same
//! tag; `Always` asks the registry every time (the default for `:latest`), falling back to the
//! cached module, with a warning, when the registry cannot be reached.

use std::path::PathBuf;

use anyhow::Context;

use crate::cache::Cache;
use crate::registry::{Failure, FailureKind, Reference, Registry, RegistryOptions, parse_reference};
use crate::sign::{self, VerifyingKey};
use crate::{digest_of, hex, wasm};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PullPolicy {
    /// `IfNotPresent`, except `Always` for `:latest` (Istio's default).
    #[default]
    Default,
    IfNotPresent,
    Always,
}

#[derive(Clone, Debug)]
pub struct FetchOptions {
    pub registry: RegistryOptions,
    pub cache: Cache,
    /// Every `oci://` module must carry a signature that verifies with this key.
    pub require_signature: Option<VerifyingKey>,
    pub pull_policy: PullPolicy,
}

/// A module on local disk, and how it got there.
#[derive(Clone, Debug)]
pub struct Fetched {
    pub path: PathBuf,
    /// The manifest digest (oci) or the module's digest (http).
    pub digest: String,
    pub from_cache: bool,
    pub signature_verified: bool,
}

fn failure(kind: FailureKind, msg: String) -> anyhow::Error {
    Failure::new(kind, msg).into()
}

/// `sha256` as a config gives it (Istio: 64 hex digits; also `sha256:`-prefixed) → `sha256:<hex>`.
pub fn normalize_sha256(text: &str) -> anyhow::Result<String> {
    let hex = text.strip_prefix("sha256:").unwrap_or(text).to_ascii_lowercase();
    let digest = format!("sha256:{hex}");
    crate::digest_hex(&digest).with_context(|| format!("sha256 {text:?} is not 64 hex digits"))?;
    Ok(digest)
}

/// Fetches an `oci://` module. `sha256`: the manifest digest the configuration pins (Istio's
/// WasmPlugin `sha256`), on top of any `@sha256:` in the reference.
pub async fn fetch_oci(text: &str, sha256: Option<&str>, options: &FetchOptions) -> anyhow::Result<Fetched> {
    let reference = parse_reference(text)?;
    let pinned = pinned_digest(&reference, sha256)?;
    let policy = match options.pull_policy {
        PullPolicy::Default if reference.digest().is_none() && reference.tag().unwrap_or("latest") == "latest" => {
            PullPolicy::Always
        }
        PullPolicy::Default => PullPolicy::IfNotPresent,
        other => other,
    };
    // The digest to look for in the cache without asking the registry.
    let cached_digest = match (&pinned, policy) {
        (Some(d), _) => Some(d.clone()),
        (None, PullPolicy::IfNotPresent) => options.cache.tag(&reference),
        (None, _) => None,
    };
    if let Some(digest) = cached_digest
        && let Some(path) = options.cache.module(&digest)?
    {
        let signature_verified = check_cached_signature(&reference, &digest, options).await?;
        return Ok(Fetched { path, digest, from_cache: true, signature_verified });
    }
    match pull(&reference, pinned.as_deref(), options).await {
        Ok(f) => Ok(f),
        Err(e) if Failure::kind_of(&e) == FailureKind::Network && pinned.is_none() => {
            // `Always` with the registry unreachable: the module this tag named last time.
            let Some(digest) = options.cache.tag(&reference) else { return Err(e) };
            let Some(path) = options.cache.module(&digest)? else { return Err(e) };
            tracing::warn!("{text}: registry unreachable ({e:#}); using the cached module {digest}");
            let signature_verified = check_cached_signature(&reference, &digest, options).await?;
            Ok(Fetched { path, digest, from_cache: true, signature_verified })
        }
        Err(e) => Err(e),
    }
}

fn pinned_digest(reference: &Reference, sha256: Option<&str>) -> anyhow::Result<Option<String>> {
    let configured = sha256.map(normalize_sha256).transpose()?;
    match (reference.digest(), configured) {
        (Some(a), Some(b)) if a != b => {
            anyhow::bail!("{} pins manifest {a} but its sha256 says {b}", reference.whole())
        }
        (Some(a), _) => Ok(Some(a.to_owned())),
        (None, b) => Ok(b),
    }
}

/// A cached module's signature, checked again with the cached signatures (offline); fetched
/// from the registry when none were cached.
async fn check_cached_signature(reference: &Reference, digest: &str, options: &FetchOptions) -> anyhow::Result<bool> {
    let Some(key) = &options.require_signature else { return Ok(false) };
    let cached = options.cache.signatures(digest)?;
    let what = format!("{}@{digest}", reference.whole());
    if !cached.is_empty() && sign::check_signatures(&cached, digest, key, &what).is_ok() {
        return Ok(true);
    }
    let registry = Registry::for_reference(&options.registry, reference);
    let signatures = sign::verify(&registry, reference, digest, key).await?;
    options.cache.put_signatures(digest, &signatures)?;
    Ok(true)
}

async fn pull(reference: &Reference, pinned: Option<&str>, options: &FetchOptions) -> anyhow::Result<Fetched> {
    let registry = Registry::for_reference(&options.registry, reference);
    // As Istio: read what the reference names (a tag, or a digest), then compare it with the
    // pinned digest, so a moved tag is reported as a digest mismatch.
    let manifest = registry.manifest(reference).await?;
    let by = Reference::with_digest(
        reference.registry().to_owned(),
        reference.repository().to_owned(),
        manifest.digest.clone(),
    );
    if let Some(want) = pinned
        && manifest.digest != want
    {
        return Err(failure(
            FailureKind::Digest,
            format!(
                "{}: the manifest's digest is {}, the configuration pins {want}",
                reference.whole(),
                manifest.digest
            ),
        ));
    }
    let signatures = match &options.require_signature {
        Some(key) => Some(sign::verify(&registry, reference, &manifest.digest, key).await?),
        None => None,
    };
    let (layout, layer) = wasm::find_module(&manifest)?;
    let bytes = registry.blob(&by, &layer).await?;
    let module = wasm::module_from_layer(&layout, bytes).with_context(|| reference.whole())?;
    let path = options.cache.put_module(&manifest.digest, &module)?;
    if let Some(signatures) = &signatures {
        options.cache.put_signatures(&manifest.digest, signatures)?;
    }
    if reference.digest().is_none() {
        options.cache.put_tag(reference, &manifest.digest)?;
    }
    Ok(Fetched { path, digest: manifest.digest, from_cache: false, signature_verified: signatures.is_some() })
}

/// Fetches an `http(s)://` module (Envoy's `remote` code source). With `sha256` the module must
/// have that digest, and a cached copy is used without the network.
pub async fn fetch_http(url: &str, sha256: Option<&str>, options: &FetchOptions) -> anyhow::Result<Fetched> {
    let want = sha256.map(normalize_sha256).transpose()?;
    if options.require_signature.is_some() && want.is_none() {
        anyhow::bail!(
            "{url}: signatures cover oci:// modules; with --require-signature an http(s) module must be pinned by sha256"
        );
    }
    if let Some(want) = &want {
        let path = options.cache.http_module_path(crate::digest_hex(want)?);
        if path.is_file() {
            return Ok(Fetched { path, digest: want.clone(), from_cache: true, signature_verified: false });
        }
    }
    crate::install_crypto_provider();
    let client = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(10))
        .timeout(std::time::Duration::from_secs(120))
        .build()
        .context("building an HTTP client")?;
    let response = client.get(url).send().await.map_err(|e| {
        let kind = if e.is_connect() || e.is_timeout() { FailureKind::Network } else { FailureKind::Other };
        failure(
            kind,
            format!(
                "fetching {url}: {e}: {}",
                std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default()
            ),
        )
    })?;
    let status = response.status();
    if !status.is_success() {
        let kind = match status.as_u16() {
            401 | 403 => FailureKind::Auth,
            404 => FailureKind::NotFound,
            _ => FailureKind::Other,
        };
        return Err(failure(kind, format!("fetching {url}: HTTP {status}")));
    }
    let body = response.bytes().await.map_err(|e| failure(FailureKind::Network, format!("reading {url}: {e}")))?;
    let digest = digest_of(&body);
    if let Some(want) = &want
        && &digest != want
    {
        return Err(failure(
            FailureKind::Digest,
            format!("{url}: the module's digest is {digest}, the configuration pins {want}"),
        ));
    }
    wasm::check_magic(&body).with_context(|| url.to_owned())?;
    let hex_digest = hex(&<sha2::Sha256 as sha2::Digest>::digest(&body));
    let path = options.cache.put_http_module(&hex_digest, &body)?;
    Ok(Fetched { path, digest, from_cache: false, signature_verified: false })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_forms_normalize() {
        let hex = "AB".repeat(32);
        assert_eq!(normalize_sha256(&hex).unwrap(), format!("sha256:{}", hex.to_lowercase()));
        assert_eq!(
            normalize_sha256(&format!("sha256:{}", "cd".repeat(32))).unwrap(),
            format!("sha256:{}", "cd".repeat(32))
        );
        assert!(normalize_sha256("abc").is_err());
    }

    #[test]
    fn a_digest_in_the_reference_must_agree_with_sha256() {
        let a = "a".repeat(64);
        let r = parse_reference(&format!("127.0.0.1:1/x@sha256:{a}")).unwrap();
        assert!(pinned_digest(&r, Some(&"b".repeat(64))).is_err());
        assert_eq!(pinned_digest(&r, Some(&a)).unwrap(), Some(format!("sha256:{a}")));
        let t = parse_reference("127.0.0.1:1/x:1").unwrap();
        assert_eq!(pinned_digest(&t, None).unwrap(), None);
    }
}
