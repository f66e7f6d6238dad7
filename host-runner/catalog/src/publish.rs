//! `catalog publish`, `pull` and `verify` against any OCI registry.
//!
//! Items go to `<registry>/<kind dir>/<name>:<tag>`: filters in the compat and oci variants
//! (`<version>`, `<version>-oci`) and, when asked, the TAG-Runtime form (`<version>-wasm`);
//! eBPF programs as bpfman bytecode images; patterns and policies as bundles. Patterns are
//! published with their configurations naming the filters by registry digest.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use meshwork_oci::registry::{
    Failure, FailureKind, PulledManifest, Reference, Registry, RegistryOptions, parse_reference,
};
use meshwork_oci::sign::{self, SigningKey, VerifyingKey};
use meshwork_oci::{artifact, media, wasm};
use serde::{Deserialize, Serialize};

use crate::build::{BuildOptions, ModuleRewrite, build_item};
use crate::item::Kind;
use crate::load::{Catalog, Entry};

pub struct PublishOptions {
    /// `host[:port][/prefix]`.
    pub registry: String,
    pub registry_options: RegistryOptions,
    pub sign: Option<SigningKey>,
    /// Also push the CNCF TAG-Runtime `application/wasm` form of filters.
    pub tag_runtime: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Published {
    pub registry: String,
    pub items: BTreeMap<String, PublishedItem>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PublishedItem {
    /// Variant → `registry/repo:tag`, and its manifest digest.
    pub references: BTreeMap<String, PublishedRef>,
    /// The fingerprint of the key that signed every reference, if one did.
    pub signed_by: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PublishedRef {
    pub reference: String,
    pub digest: String,
}

impl Published {
    pub fn read(path: &Path) -> anyhow::Result<Published> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&bytes).with_context(|| format!("{} is not a publish record", path.display()))
    }
}

/// `registry/<kind dir>/<name>` for an item.
pub fn repository(registry: &str, kind: Kind, name: &str) -> String {
    format!("{}/{}/{name}", registry.trim_end_matches('/'), kind.dir())
}

/// Publishes `entries` (all kinds in dependency order: filters before the patterns naming them).
pub async fn publish(
    catalog: &Catalog,
    entries: &[&Entry],
    build: &BuildOptions,
    options: &PublishOptions,
    mut progress: impl FnMut(&str),
) -> anyhow::Result<Published> {
    let mut published = Published { registry: options.registry.clone(), items: BTreeMap::new() };
    let mut rewrite = ModuleRewrite::new();
    let mut ordered: Vec<&Entry> = entries.to_vec();
    ordered.sort_by_key(|e| match e.item.kind {
        Kind::Filter => 0,
        Kind::Ebpf => 1,
        Kind::Policy => 2,
        Kind::Pattern => 3,
    });
    let mut registry: Option<Registry> = None;
    for entry in ordered {
        let built = build_item(catalog, entry, build, &rewrite)?;
        let repo = repository(&options.registry, entry.item.kind, &entry.item.name);
        let mut item = PublishedItem::default();
        for form in &built.forms {
            if form.variant == "wasm" && !options.tag_runtime {
                continue;
            }
            let reference = parse_reference(&format!("{repo}:{}", form.tag))?;
            let registry =
                registry.get_or_insert_with(|| Registry::for_reference(&options.registry_options, &reference));
            let digest = registry
                .push(&reference, &form.artifact)
                .await
                .with_context(|| format!("publishing {}", entry.item.id()))?;
            if let Some(key) = &options.sign {
                sign::sign(registry, &reference, &digest, key)
                    .await
                    .with_context(|| format!("signing {}", reference.whole()))?;
            }
            progress(&format!("{:<28} {:<7} {} {digest}", entry.item.id(), form.variant, reference.whole()));
            item.references.insert(form.variant.clone(), PublishedRef { reference: reference.whole(), digest });
        }
        item.signed_by = options.sign.as_ref().map(|k| k.public().fingerprint());
        if entry.item.kind == Kind::Filter {
            // Patterns name this filter by the digest of its compat image from now on.
            if let Some(r) = item.references.get("compat") {
                rewrite.insert(
                    format!("../../../target/filters/{}.wasm", entry.item.name),
                    format!("oci://{repo}@{}", r.digest),
                );
            }
        }
        published.items.insert(built.id.clone(), item);
    }
    Ok(published)
}

/// What a pulled artifact turned out to be.
pub enum Pulled {
    Wasm(Vec<u8>),
    Ebpf { file_name: String, object: Vec<u8>, annotations: BTreeMap<String, String> },
    Bundle { kind: Kind, files: Vec<(String, Vec<u8>)> },
}

/// Reads an artifact and every blob it names (checking each digest), and checks its signature
/// when a key is given. Returns the manifest digest and what it holds.
pub async fn pull(
    text: &str,
    registry_options: &RegistryOptions,
    key: Option<&VerifyingKey>,
) -> anyhow::Result<(String, Pulled)> {
    let reference = parse_reference(text)?;
    let registry = Registry::for_reference(registry_options, &reference);
    let manifest = registry.manifest(&reference).await?;
    if let Some(key) = key {
        sign::verify(&registry, &reference, &manifest.digest, key).await?;
    }
    let by_digest = Reference::with_digest(
        reference.registry().to_owned(),
        reference.repository().to_owned(),
        manifest.digest.clone(),
    );
    let pulled = classify(&registry, &by_digest, &manifest).await?;
    Ok((manifest.digest.clone(), pulled))
}

async fn classify(registry: &Registry, reference: &Reference, manifest: &PulledManifest) -> anyhow::Result<Pulled> {
    let config_type = manifest.manifest.config.media_type.as_str();
    let annotations = manifest.manifest.annotations.clone().unwrap_or_default();
    if config_type == media::PATTERN_CONFIG || config_type == media::POLICY_CONFIG {
        let kind = if config_type == media::PATTERN_CONFIG { Kind::Pattern } else { Kind::Policy };
        let layer = manifest.manifest.layers.first().context("a bundle has one layer")?;
        let files = artifact::unbundle(&registry.blob(reference, layer).await?)?;
        return Ok(Pulled::Bundle { kind, files });
    }
    if annotations.get(media::MESHWORK_KIND).map(String::as_str) == Some("ebpf") {
        let layer = manifest.manifest.layers.last().context("an eBPF image has a layer")?;
        let files = artifact::unbundle(&registry.blob(reference, layer).await?)?;
        let (file_name, object) =
            files.into_iter().find(|(name, _)| name.ends_with(".o")).context("the eBPF image holds no .o file")?;
        return Ok(Pulled::Ebpf { file_name, object, annotations });
    }
    let (layout, layer) = wasm::find_module(manifest)?;
    let module = wasm::module_from_layer(&layout, registry.blob(reference, &layer).await?)?;
    Ok(Pulled::Wasm(module))
}

/// Checks a reference's signature and every blob's digest.
pub async fn verify(text: &str, registry_options: &RegistryOptions, key: &VerifyingKey) -> anyhow::Result<Verified> {
    let reference = parse_reference(text)?;
    let registry = Registry::for_reference(registry_options, &reference);
    let manifest = registry.manifest(&reference).await?;
    sign::verify(&registry, &reference, &manifest.digest, key).await?;
    let mut blobs = 0;
    for descriptor in std::iter::once(&manifest.manifest.config).chain(&manifest.manifest.layers) {
        registry.blob(&reference, descriptor).await?;
        blobs += 1;
    }
    Ok(Verified { reference: reference.whole(), digest: manifest.digest, blobs, key: key.fingerprint() })
}

pub struct Verified {
    pub reference: String,
    pub digest: String,
    pub blobs: usize,
    pub key: String,
}

/// Writes what `pull` got: a module or object to `out` (a file), a bundle into `out` (a
/// directory).
pub fn write_pulled(pulled: &Pulled, out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let write = |path: &Path, data: &[u8]| -> anyhow::Result<()> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, data).with_context(|| format!("writing {}", path.display()))
    };
    match pulled {
        Pulled::Wasm(module) => write(out, module).map(|_| vec![out.to_path_buf()]),
        Pulled::Ebpf { object, .. } => write(out, object).map(|_| vec![out.to_path_buf()]),
        Pulled::Bundle { files, .. } => {
            let mut written = Vec::new();
            for (name, data) in files {
                let rel = Path::new(name);
                if rel.is_absolute() || rel.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
                    return Err(Failure::new(
                        FailureKind::Other,
                        format!("the bundle holds a path outside itself: {name}"),
                    )
                    .into());
                }
                let path = out.join(rel);
                write(&path, data)?;
                written.push(path);
            }
            Ok(written)
        }
    }
}
