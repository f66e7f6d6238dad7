//! Pulled modules on disk, by digest, so a proxy starts without the registry.
//!
//! ```text
//! <dir>/oci/<manifest hex>/module.wasm      the module of that manifest
//! <dir>/oci/<manifest hex>/signatures.json  signatures that verified when it was pulled
//! <dir>/tags/<registry>/<repository>/<tag>  the manifest digest a tag named when last pulled
//! <dir>/http/<sha256 hex>.wasm              modules fetched over HTTP, by their own digest
//! ```
//! Writes go to a temporary file renamed into place, so a crash leaves no half module.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::digest_hex;
use crate::registry::Reference;
use crate::sign::Signature;

#[derive(Clone, Debug)]
pub struct Cache {
    dir: PathBuf,
}

fn write_atomic(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    let parent = path.parent().context("a cache path has a parent")?;
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let tmp =
        parent.join(format!(".{}.tmp{}", path.file_name().unwrap_or_default().to_string_lossy(), std::process::id()));
    std::fs::write(&tmp, data).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming into {}", path.display()))
}

/// A path component that cannot climb out of the cache.
fn safe(part: &str) -> String {
    part.chars()
        .map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' })
        .collect::<String>()
        .replace("..", "__")
}

impl Cache {
    pub fn new(dir: impl Into<PathBuf>) -> Cache {
        Cache { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn module_path(&self, manifest_digest: &str) -> anyhow::Result<PathBuf> {
        Ok(self.dir.join("oci").join(digest_hex(manifest_digest)?).join("module.wasm"))
    }

    /// The cached module of a manifest, if there is one.
    pub fn module(&self, manifest_digest: &str) -> anyhow::Result<Option<PathBuf>> {
        let path = self.module_path(manifest_digest)?;
        Ok(path.is_file().then_some(path))
    }

    pub fn put_module(&self, manifest_digest: &str, module: &[u8]) -> anyhow::Result<PathBuf> {
        let path = self.module_path(manifest_digest)?;
        write_atomic(&path, module)?;
        Ok(path)
    }

    fn signatures_path(&self, manifest_digest: &str) -> anyhow::Result<PathBuf> {
        Ok(self.dir.join("oci").join(digest_hex(manifest_digest)?).join("signatures.json"))
    }

    pub fn signatures(&self, manifest_digest: &str) -> anyhow::Result<Vec<Signature>> {
        let path = self.signatures_path(manifest_digest)?;
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| format!("reading {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn put_signatures(&self, manifest_digest: &str, signatures: &[Signature]) -> anyhow::Result<()> {
        write_atomic(&self.signatures_path(manifest_digest)?, &serde_json::to_vec_pretty(signatures)?)
    }

    fn tag_path(&self, reference: &Reference) -> Option<PathBuf> {
        let tag = reference.tag()?;
        let mut path = self.dir.join("tags").join(safe(reference.registry()));
        for part in reference.repository().split('/') {
            path.push(safe(part));
        }
        Some(path.join(safe(tag)))
    }

    /// The manifest digest `reference`'s tag named when it was last pulled.
    pub fn tag(&self, reference: &Reference) -> Option<String> {
        let text = std::fs::read_to_string(self.tag_path(reference)?).ok()?;
        let digest = text.trim().to_owned();
        digest_hex(&digest).is_ok().then_some(digest)
    }

    pub fn put_tag(&self, reference: &Reference, manifest_digest: &str) -> anyhow::Result<()> {
        match self.tag_path(reference) {
            Some(path) => write_atomic(&path, manifest_digest.as_bytes()),
            None => Ok(()),
        }
    }

    pub fn http_module_path(&self, sha256_hex: &str) -> PathBuf {
        self.dir.join("http").join(format!("{}.wasm", safe(sha256_hex)))
    }

    pub fn put_http_module(&self, sha256_hex: &str, module: &[u8]) -> anyhow::Result<PathBuf> {
        let path = self.http_module_path(sha256_hex);
        write_atomic(&path, module)?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_and_modules_round_trip_and_stay_inside() {
        let dir = std::env::temp_dir().join(format!("meshwork-cache-test-{}", std::process::id()));
        let cache = Cache::new(&dir);
        let d = format!("sha256:{}", "ab".repeat(32));
        assert!(cache.module(&d).unwrap().is_none());
        let p = cache.put_module(&d, b"\0asm").unwrap();
        assert_eq!(cache.module(&d).unwrap(), Some(p.clone()));
        assert!(p.starts_with(&dir));
        let r: Reference =
            "127.0.0.1:5000/../../etc/x:1.0".parse().unwrap_or_else(|_| "127.0.0.1:5000/a/b:1.0".parse().unwrap());
        cache.put_tag(&r, &d).unwrap();
        assert_eq!(cache.tag(&r), Some(d.clone()));
        assert!(cache.tag_path(&r).unwrap().starts_with(&dir));
        assert!(cache.module("sha256:../../x").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
