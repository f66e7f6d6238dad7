//! Modules that live elsewhere, brought to local disk before the filters start: `oci://`
//! references and `http(s)://` URLs through meshwork-oci (digest checks as Istio makes them,
//! signatures when required, a cache by digest), and local files checked against a `sha256`
//! when the configuration gives one. Runs on every load, so a reload pulls a changed tag.

use std::path::PathBuf;

use anyhow::Context;
use meshwork_oci::cache::Cache;
use meshwork_oci::fetch::{self, FetchOptions, PullPolicy};
use meshwork_oci::registry::RegistryOptions;
use meshwork_oci::sign::VerifyingKey;

use crate::config::{ModuleSource, ProxyConfig};

/// What `meshwork run` was told about pulling.
#[derive(Clone, Debug, Default)]
pub struct PullSettings {
    pub registry: RegistryOptions,
    pub require_signature: Option<VerifyingKey>,
    pub pull_policy: PullPolicy,
}

/// The cache of pulled modules: `<cache_dir>/pulled`.
pub fn cache_for(config: &ProxyConfig) -> Option<PathBuf> {
    config.cache_dir.clone().or_else(crate::proxy::default_cache_dir).map(|d| d.join("pulled"))
}

/// Fetches every filter's module that is not a plain local file, and fills in its path.
pub fn fetch_all(config: &mut ProxyConfig, settings: &PullSettings) -> anyhow::Result<()> {
    let needs_network = config.all_filters().any(|f| !matches!(f.source, ModuleSource::File { .. }));
    if !needs_network {
        for f in config.all_filters() {
            check_local(&f.module, &f.source, &f.plugin.name)?;
        }
        return Ok(());
    }
    let cache_dir = cache_for(config).context("no cache directory for pulled modules (set cache_dir or HOME)")?;
    let options = FetchOptions {
        registry: settings.registry.clone(),
        cache: Cache::new(cache_dir),
        require_signature: settings.require_signature.clone(),
        pull_policy: settings.pull_policy,
    };
    // The proxy's runtime is not running yet (or is busy serving): pull on a thread of our own.
    let filters: Vec<_> =
        config.all_filters().map(|f| (f.plugin.name.clone(), f.module.clone(), f.source.clone())).collect();
    let fetched = std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async {
                let mut out = Vec::new();
                for (name, path, source) in &filters {
                    let fetched = match source {
                        ModuleSource::File { .. } => {
                            check_local(path, source, name)?;
                            None
                        }
                        ModuleSource::Oci { reference, sha256, pull_policy } => {
                            let own;
                            let options = match pull_policy {
                                Some(p) => {
                                    own = FetchOptions { pull_policy: *p, ..options.clone() };
                                    &own
                                }
                                None => &options,
                            };
                            Some(
                                fetch::fetch_oci(reference, sha256.as_deref(), options)
                                    .await
                                    .with_context(|| format!("filter {name}: pulling {reference}"))?,
                            )
                        }
                        ModuleSource::Http { url, sha256 } => Some(
                            fetch::fetch_http(url, sha256.as_deref(), &options)
                                .await
                                .with_context(|| format!("filter {name}: fetching {url}"))?,
                        ),
                    };
                    if let Some(f) = &fetched {
                        tracing::info!(
                            filter = %name,
                            digest = %f.digest,
                            cached = f.from_cache,
                            signed = f.signature_verified,
                            "module {}",
                            if f.from_cache { "from the cache" } else { "pulled" }
                        );
                    }
                    out.push(fetched.map(|f| f.path));
                }
                anyhow::Ok(out)
            })
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the module fetch thread panicked"))?
    })?;
    for (f, path) in config.all_filters_mut().zip(fetched) {
        if let Some(path) = path {
            f.module = path;
        }
    }
    Ok(())
}

/// A local module with a `sha256` must have that digest.
fn check_local(path: &std::path::Path, source: &ModuleSource, name: &str) -> anyhow::Result<()> {
    let ModuleSource::File { sha256: Some(want) } = source else { return Ok(()) };
    let want = fetch::normalize_sha256(want).with_context(|| format!("filter {name}"))?;
    let bytes = std::fs::read(path).with_context(|| format!("filter {name}: reading {}", path.display()))?;
    let have = meshwork_oci::digest_of(&bytes);
    anyhow::ensure!(have == want, "filter {name}: {} has digest {have}, the configuration pins {want}", path.display());
    Ok(())
}
