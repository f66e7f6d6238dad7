//! Pushing and pulling through `oci-client`: credentials, plain HTTP for loopback registries,
//! manifests pushed and read as exact bytes (so their digests are ours to check), and failures
//! sorted by what went wrong.

use std::collections::BTreeMap;
use std::fmt;

use anyhow::Context;
pub use oci_client::Reference;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;

use crate::artifact::Artifact;
use crate::{digest_hex, digest_of, media};

/// How to authenticate.
#[derive(Clone, Debug, Default)]
pub enum Auth {
    /// `MESHWORK_REGISTRY_USERNAME`/`MESHWORK_REGISTRY_PASSWORD` (or `MESHWORK_REGISTRY_TOKEN`),
    /// else the docker `config.json` entry (and credential helper) for the registry, else none.
    #[default]
    Auto,
    Anonymous,
    Basic {
        username: String,
        password: String,
    },
    /// A registry bearer token used as is.
    Bearer(String),
}

#[derive(Clone, Debug, Default)]
pub struct RegistryOptions {
    pub auth: Auth,
    /// Registries (`host[:port]`) spoken to over plain HTTP besides loopback ones, which always
    /// are (as docker treats `localhost`).
    pub plain_http: Vec<String>,
}

/// What went wrong, for messages that say so and for callers that decide by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    Network,
    Auth,
    NotFound,
    Digest,
    Signature,
    NotWasm,
    Other,
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailureKind::Network => "network",
            FailureKind::Auth => "authentication",
            FailureKind::NotFound => "not found",
            FailureKind::Digest => "digest mismatch",
            FailureKind::Signature => "signature",
            FailureKind::NotWasm => "not a Wasm module",
            FailureKind::Other => "registry",
        })
    }
}

/// A failure with its kind; its message says what and where.
#[derive(Debug)]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} error: {}", self.kind, self.message)
    }
}

impl std::error::Error for Failure {}

impl Failure {
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Failure {
        Failure { kind, message: message.into() }
    }

    /// The kind of a failure anywhere in an error chain (`Other` when none says).
    pub fn kind_of(err: &anyhow::Error) -> FailureKind {
        err.chain().find_map(|e| e.downcast_ref::<Failure>()).map(|f| f.kind).unwrap_or(FailureKind::Other)
    }
}

fn classify(err: OciDistributionError, what: &str) -> Failure {
    use OciDistributionError as E;
    let kind = match &err {
        E::RequestError(e) if e.is_connect() || e.is_timeout() || e.is_request() => FailureKind::Network,
        E::RequestError(e) if matches!(e.status().map(|s| s.as_u16()), Some(401 | 403)) => FailureKind::Auth,
        E::RequestError(e) if e.status().map(|s| s.as_u16()) == Some(404) => FailureKind::NotFound,
        E::UnauthorizedError { .. } | E::AuthenticationFailure(_) | E::RegistryTokenDecodeError(_) => FailureKind::Auth,
        E::ServerError { code: 401 | 403, .. } => FailureKind::Auth,
        E::ServerError { code: 404, .. } | E::ImageManifestNotFoundError(_) => FailureKind::NotFound,
        E::DigestError(_) => FailureKind::Digest,
        E::RegistryError { envelope, .. } => match envelope.errors.first().map(|e| &e.code) {
            Some(OciErrorCode::Unauthorized | OciErrorCode::Denied) => FailureKind::Auth,
            Some(
                OciErrorCode::ManifestUnknown
                | OciErrorCode::NameUnknown
                | OciErrorCode::NotFound
                | OciErrorCode::BlobUnknown,
            ) => FailureKind::NotFound,
            Some(OciErrorCode::DigestInvalid) => FailureKind::Digest,
            _ => FailureKind::Other,
        },
        _ => FailureKind::Other,
    };
    // reqwest's own message is "error sending request"; its source says why.
    let mut detail = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(s) = source {
        detail = format!("{detail}: {s}");
        source = s.source();
    }
    Failure::new(kind, format!("{what}: {detail}"))
}

/// A manifest as the registry served it.
#[derive(Clone, Debug)]
pub struct PulledManifest {
    pub bytes: Vec<u8>,
    /// sha256 of `bytes`, checked against the reference's digest when it has one.
    pub digest: String,
    pub manifest: OciImageManifest,
}

impl PulledManifest {
    pub fn media_type(&self) -> &str {
        self.manifest.media_type.as_deref().unwrap_or(media::OCI_MANIFEST)
    }
}

pub struct Registry {
    client: oci_client::Client,
    options: RegistryOptions,
}

/// Loopback registries are spoken to over plain HTTP, as docker does for `localhost`.
pub fn is_loopback_registry(registry: &str) -> bool {
    let host = match registry.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => registry.split(':').next().unwrap_or(""),
    };
    host == "localhost" || host == "::1" || host.starts_with("127.")
}

/// Parses `[registry/]repository[:tag][@sha256:…]`, with or without `oci://`, as docker does:
/// a first component with a `.` or `:`, or `localhost`, names the registry; otherwise it is
/// docker.io (and `library/` for a single name); no tag means `latest`.
///
/// Written out rather than through oci-spec's parser: its reference regex takes about 60 ms to
/// compile, which every `meshwork run` with an `oci://` module would pay at start.
pub fn parse_reference(text: &str) -> anyhow::Result<Reference> {
    let bad =
        |why: &str| anyhow::anyhow!("{text:?} is not an OCI reference (registry/repository:tag or @sha256:…): {why}");
    let bare = text.strip_prefix("oci://").unwrap_or(text);
    let (rest, digest) = match bare.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (bare, None),
    };
    if let Some(d) = digest {
        digest_hex(d).map_err(|_| bad("the digest is not sha256:<64 lower-case hex digits>"))?;
    }
    let last_slash = rest.rfind('/').unwrap_or(0);
    let (name, tag) = match rest.rfind(':') {
        Some(i) if i > last_slash => (&rest[..i], Some(&rest[i + 1..])),
        _ => (rest, None),
    };
    if let Some(tag) = tag {
        let ok = !tag.is_empty()
            && tag.len() <= 128
            && !tag.starts_with(['.', '-'])
            && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !ok {
            return Err(bad("a tag is 1 to 128 letters, digits, '_', '.' or '-'"));
        }
    }
    let (registry, repository) = match name.split_once('/') {
        Some((first, path)) if first.contains(['.', ':']) || first == "localhost" => {
            (first.to_owned(), path.to_owned())
        }
        _ if name.contains('/') => ("docker.io".to_owned(), name.to_owned()),
        _ => ("docker.io".to_owned(), format!("library/{name}")),
    };
    if registry.is_empty() || !registry.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b)) {
        return Err(bad("the registry is not a host[:port]"));
    }
    let component_ok = |c: &str| {
        !c.is_empty()
            && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            && c.starts_with(|ch: char| ch.is_ascii_alphanumeric())
            && c.ends_with(|ch: char| ch.is_ascii_alphanumeric())
    };
    if !repository.split('/').all(component_ok) {
        return Err(bad("a repository is lower-case letters, digits and separators (._-) between '/'"));
    }
    Ok(match (tag, digest) {
        (Some(t), Some(d)) => Reference::with_tag_and_digest(registry, repository, t.to_owned(), d.to_owned()),
        (None, Some(d)) => Reference::with_digest(registry, repository, d.to_owned()),
        (t, None) => Reference::with_tag(registry, repository, t.unwrap_or("latest").to_owned()),
    })
}

impl Registry {
    pub fn new(options: RegistryOptions) -> Registry {
        crate::install_crypto_provider();
        let config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(options.plain_http.clone()),
            connect_timeout: Some(std::time::Duration::from_secs(10)),
            read_timeout: Some(std::time::Duration::from_secs(60)),
            ..Default::default()
        };
        Registry { client: oci_client::Client::new(config), options }
    }

    /// Registries met so far that need plain HTTP are added to the client's exceptions; the
    /// client is built per call set, so decide before the first request.
    pub fn for_reference(options: &RegistryOptions, reference: &Reference) -> Registry {
        let mut options = options.clone();
        let registry = reference.resolve_registry().to_owned();
        if is_loopback_registry(&registry) && !options.plain_http.contains(&registry) {
            options.plain_http.push(registry);
        }
        Registry::new(options)
    }

    fn auth(&self, reference: &Reference) -> anyhow::Result<RegistryAuth> {
        let registry = reference.resolve_registry();
        Ok(match &self.options.auth {
            Auth::Anonymous => RegistryAuth::Anonymous,
            Auth::Basic { username, password } => RegistryAuth::Basic(username.clone(), password.clone()),
            Auth::Bearer(token) => RegistryAuth::Bearer(token.clone()),
            Auth::Auto => {
                if let Ok(token) = std::env::var("MESHWORK_REGISTRY_TOKEN") {
                    RegistryAuth::Bearer(token)
                } else if let Ok(username) = std::env::var("MESHWORK_REGISTRY_USERNAME") {
                    let password = std::env::var("MESHWORK_REGISTRY_PASSWORD")
                        .context("MESHWORK_REGISTRY_USERNAME is set but MESHWORK_REGISTRY_PASSWORD is not")?;
                    RegistryAuth::Basic(username, password)
                } else {
                    docker_config_auth(registry)?
                }
            }
        })
    }

    /// Pushes the artifact's blobs (those the repository lacks) and its manifest under the
    /// reference's tag; returns the manifest digest.
    pub async fn push(&self, reference: &Reference, artifact: &Artifact) -> anyhow::Result<String> {
        let auth = self.auth(reference)?;
        self.client.store_auth_if_needed(reference.resolve_registry(), &auth).await;
        let where_ = reference.whole();
        for blob in std::iter::once(&artifact.config).chain(&artifact.layers) {
            let digest = digest_of(&blob.data);
            let exists = self
                .client
                .blob_exists(reference, &digest)
                .await
                .map_err(|e| classify(e, &format!("checking blob {digest} in {where_}")))?;
            if !exists {
                self.client
                    .push_blob(reference, blob.data.clone(), &digest)
                    .await
                    .map_err(|e| classify(e, &format!("pushing blob {digest} to {where_}")))?;
            }
        }
        let manifest = artifact.manifest();
        let content_type = http_header(media::OCI_MANIFEST);
        self.client
            .push_manifest_raw(reference, manifest.clone(), content_type)
            .await
            .map_err(|e| classify(e, &format!("pushing the manifest to {where_}")))?;
        Ok(digest_of(&manifest))
    }

    /// Reads a manifest (an image manifest, OCI or docker schema 2).
    pub async fn manifest(&self, reference: &Reference) -> anyhow::Result<PulledManifest> {
        let auth = self.auth(reference)?;
        self.client.store_auth_if_needed(reference.resolve_registry(), &auth).await;
        let accept = [media::OCI_MANIFEST, media::DOCKER_MANIFEST];
        let (bytes, _) = self
            .client
            .pull_manifest_raw(reference, &auth, &accept)
            .await
            .map_err(|e| classify(e, &format!("reading the manifest of {}", reference.whole())))?;
        let digest = digest_of(&bytes);
        if let Some(want) = reference.digest()
            && want != digest
        {
            return Err(Failure::new(
                FailureKind::Digest,
                format!("{} served a manifest whose digest is {digest}", reference.whole()),
            )
            .into());
        }
        let manifest: OciImageManifest = serde_json::from_slice(&bytes).map_err(|e| {
            Failure::new(
                FailureKind::Other,
                format!("the manifest of {} is not an image manifest: {e}", reference.whole()),
            )
        })?;
        Ok(PulledManifest { bytes: bytes.to_vec(), digest, manifest })
    }

    /// Whether a tag or digest exists (a missing one is `Ok(None)`).
    pub async fn try_manifest(&self, reference: &Reference) -> anyhow::Result<Option<PulledManifest>> {
        match self.manifest(reference).await {
            Ok(m) => Ok(Some(m)),
            Err(e) if Failure::kind_of(&e) == FailureKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads a blob and checks it against its descriptor's digest and size.
    pub async fn blob(&self, reference: &Reference, descriptor: &OciDescriptor) -> anyhow::Result<Vec<u8>> {
        digest_hex(&descriptor.digest)?;
        let mut out = Vec::with_capacity(descriptor.size.max(0) as usize);
        self.client
            .pull_blob(reference, descriptor, &mut out)
            .await
            .map_err(|e| classify(e, &format!("reading blob {} of {}", descriptor.digest, reference.whole())))?;
        let actual = digest_of(&out);
        if actual != descriptor.digest || out.len() as i64 != descriptor.size {
            return Err(Failure::new(
                FailureKind::Digest,
                format!(
                    "blob {} of {} has digest {actual} and {} bytes (the manifest says {} bytes)",
                    descriptor.digest,
                    reference.whole(),
                    out.len(),
                    descriptor.size
                ),
            )
            .into());
        }
        Ok(out)
    }
}

fn http_header(value: &str) -> http::HeaderValue {
    http::HeaderValue::from_str(value).expect("media types are valid header values")
}

/// The docker `config.json` credentials for a registry (its `auths` entry or credential helper).
fn docker_config_auth(registry: &str) -> anyhow::Result<RegistryAuth> {
    use docker_credential::{CredentialRetrievalError as E, DockerCredential};
    match docker_credential::get_credential(registry) {
        Ok(DockerCredential::UsernamePassword(u, p)) => Ok(RegistryAuth::Basic(u, p)),
        Ok(DockerCredential::IdentityToken(_)) => anyhow::bail!(
            "the docker config's credential for {registry} is an identity token, which meshwork cannot exchange; \
             set MESHWORK_REGISTRY_USERNAME/PASSWORD or MESHWORK_REGISTRY_TOKEN"
        ),
        Err(E::ConfigNotFound | E::NoCredentialConfigured | E::ConfigReadError) => Ok(RegistryAuth::Anonymous),
        Err(e) => Err(anyhow::anyhow!("reading docker credentials for {registry}: {e}")),
    }
}

/// Annotations as a manifest holds them.
pub type Annotations = BTreeMap<String, String>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_speak_plain_http() {
        assert!(is_loopback_registry("127.0.0.1:5000"));
        assert!(is_loopback_registry("localhost:5000"));
        assert!(is_loopback_registry("[::1]:5000"));
        assert!(!is_loopback_registry("ghcr.io"));
        assert!(!is_loopback_registry("registry.local:5000"));
    }

    #[test]
    fn references_parse_with_and_without_scheme() {
        let r = parse_reference("oci://127.0.0.1:5000/meshwork/measure:0.1.0").unwrap();
        assert_eq!((r.registry(), r.repository(), r.tag()), ("127.0.0.1:5000", "meshwork/measure", Some("0.1.0")));
        let d = format!("sha256:{}", "a".repeat(64));
        let r = parse_reference(&format!("127.0.0.1:5000/m@{d}")).unwrap();
        assert_eq!(r.digest(), Some(d.as_str()));
        assert!(parse_reference("oci://Bad Name").is_err());
        assert!(parse_reference("127.0.0.1:5000/Upper/x:1").is_err());
        assert!(parse_reference("127.0.0.1:5000/x@sha256:abc").is_err());
        let r = parse_reference("measure").unwrap();
        assert_eq!((r.registry(), r.repository(), r.tag()), ("docker.io", "library/measure", Some("latest")));
        let r = parse_reference("localhost:5000/a/b-c_d.e:v1.2-rc").unwrap();
        assert_eq!((r.registry(), r.repository(), r.tag()), ("localhost:5000", "a/b-c_d.e", Some("v1.2-rc")));
        let r = parse_reference("ghcr.io/o/r").unwrap();
        assert_eq!((r.registry(), r.tag()), ("ghcr.io", Some("latest")));
    }
}
