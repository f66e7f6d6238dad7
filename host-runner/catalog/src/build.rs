//! `catalog build`: each item's artifact from the repository (filters from `make filters`,
//! eBPF objects from `make ebpf`, patterns and policies bundled from their directories), its
//! sha256, and the OCI artifacts `publish` would push, with their manifest digests — known
//! before any registry sees them, because every byte of them is reproducible.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use meshwork_oci::artifact::{self, Describe, EbpfObject};
use meshwork_oci::wasm::{self, Variant, WasmMeta};
use meshwork_oci::{Artifact, media};
use serde::{Deserialize, Serialize};

use crate::item::Kind;
use crate::load::{Catalog, Entry};

#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// Built filters: `<dir>/<name>.wasm` (`make filters` writes target/filters).
    pub filters_dir: PathBuf,
    /// Built eBPF objects: `<dir>/<program>.o` (`make ebpf` writes target/ebpf).
    pub ebpf_dir: PathBuf,
}

/// One OCI form of an item: the tag it goes under and the artifact.
#[derive(Clone, Debug)]
pub struct OciForm {
    /// `compat`, `oci`, `wasm` for filters; `image` for eBPF; `bundle` otherwise.
    pub variant: String,
    pub tag: String,
    pub artifact: Artifact,
}

#[derive(Clone, Debug)]
pub struct Built {
    pub id: String,
    pub kind: Kind,
    pub name: String,
    pub version: String,
    /// The artifact's file name: `<name>-<version>.wasm`, `.o`, `.tar.gz`.
    pub file_name: String,
    pub bytes: Vec<u8>,
    pub forms: Vec<OciForm>,
}

/// What `build` records in `index.json`, and `site` shows.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IndexEntry {
    pub id: String,
    pub kind: Kind,
    pub name: String,
    pub version: String,
    pub file: String,
    pub sha256: String,
    pub size: usize,
    /// Variant → (tag, manifest digest).
    pub oci: BTreeMap<String, OciEntry>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OciEntry {
    pub tag: String,
    pub digest: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Index {
    pub items: Vec<IndexEntry>,
}

impl Index {
    pub fn get(&self, id: &str) -> Option<&IndexEntry> {
        self.items.iter().find(|e| e.id == id)
    }

    pub fn read(path: &Path) -> anyhow::Result<Index> {
        let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&text).with_context(|| format!("{} is not a catalog index", path.display()))
    }
}

impl Built {
    pub fn sha256(&self) -> String {
        meshwork_oci::digest_of(&self.bytes)
    }

    pub fn index_entry(&self) -> IndexEntry {
        IndexEntry {
            id: self.id.clone(),
            kind: self.kind,
            name: self.name.clone(),
            version: self.version.clone(),
            file: self.file_name.clone(),
            sha256: self.sha256(),
            size: self.bytes.len(),
            oci: self
                .forms
                .iter()
                .map(|f| (f.variant.clone(), OciEntry { tag: f.tag.clone(), digest: f.artifact.digest() }))
                .collect(),
        }
    }
}

pub fn describe(entry: &Entry, repo: &Path) -> Describe {
    let item = &entry.item;
    let source = item.source.as_deref().map(|s| {
        let path = entry.path(s);
        let rel = path.strip_prefix(crate::load::normalize(repo)).unwrap_or(&path).display().to_string();
        format!("{}/tree/main/{rel}", crate::REPOSITORY)
    });
    Describe {
        kind: item.kind.name().to_owned(),
        name: item.name.clone(),
        version: item.version.clone(),
        description: item.description.clone(),
        license: item.license.clone(),
        source: source.unwrap_or_default(),
    }
}

/// Module paths a pattern's configuration names, and what to put there instead (publish names
/// the modules by registry digest).
pub type ModuleRewrite = BTreeMap<String, String>;

/// Builds one item. `rewrite` changes module references in a pattern's files.
pub fn build_item(
    catalog: &Catalog,
    entry: &Entry,
    options: &BuildOptions,
    rewrite: &ModuleRewrite,
) -> anyhow::Result<Built> {
    let item = &entry.item;
    let describe = describe(entry, &catalog.repo);
    let (file_name, bytes, forms) = match item.kind {
        Kind::Filter => {
            let path = options.filters_dir.join(format!("{}.wasm", item.name));
            let module = std::fs::read(&path)
                .with_context(|| format!("filter {}: {} is missing (run `make filters`)", item.name, path.display()))?;
            wasm::check_magic(&module).with_context(|| path.display().to_string())?;
            let spec = item.filter.as_ref().context("filter section")?;
            let meta =
                WasmMeta { abi_version: format!("v{}", spec.abi), root_ids: spec.root_id.iter().cloned().collect() };
            let mut forms = Vec::new();
            for v in Variant::ALL {
                forms.push(OciForm {
                    variant: v.name().to_owned(),
                    tag: v.tag(&item.version),
                    artifact: wasm::build(v, &module, &describe, &meta)?,
                });
            }
            (format!("{}-{}.wasm", item.name, item.version), module, forms)
        }
        Kind::Ebpf => {
            let spec = item.ebpf.as_ref().context("ebpf section")?;
            let path = options.ebpf_dir.join(format!("{}.o", spec.program));
            let object = std::fs::read(&path).with_context(|| {
                format!("eBPF program {}: {} is missing (run `make ebpf`)", item.name, path.display())
            })?;
            let (programs, maps) = ebpf_contents(&object).with_context(|| path.display().to_string())?;
            let obj = EbpfObject {
                file_name: format!("{}.o", spec.program),
                object: object.clone(),
                programs,
                maps,
                attach: spec.attach.clone(),
                capabilities: spec.capabilities.clone(),
            };
            let form = OciForm {
                variant: "image".into(),
                tag: item.version.clone(),
                artifact: artifact::ebpf_image(&obj, &describe)?,
            };
            (format!("{}-{}.o", item.name, item.version), object, vec![form])
        }
        Kind::Pattern | Kind::Policy => {
            let files = bundle_files(entry, rewrite)?;
            let config_type = if item.kind == Kind::Pattern { media::PATTERN_CONFIG } else { media::POLICY_CONFIG };
            let metadata = serde_json::to_value(item)?;
            let bundle = artifact::bundle(config_type, &metadata, &files, &describe)?;
            let bytes = bundle.layers[0].data.clone();
            let form = OciForm { variant: "bundle".into(), tag: item.version.clone(), artifact: bundle };
            (format!("{}-{}.tar.gz", item.name, item.version), bytes, vec![form])
        }
    };
    Ok(Built {
        id: item.id(),
        kind: item.kind,
        name: item.name.clone(),
        version: item.version.clone(),
        file_name,
        bytes,
        forms,
    })
}

/// Every file of an item's directory (sorted, relative); module references rewritten in the
/// pattern's meshwork configuration (Envoy's `local.filename` cannot name a registry).
fn bundle_files(entry: &Entry, rewrite: &ModuleRewrite) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let rewritten = entry.item.pattern.as_ref().map(|p| entry.path(&p.config));
    let mut files = Vec::new();
    let mut stack = vec![entry.dir.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = e?.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path.strip_prefix(&entry.dir).expect("under the item").to_string_lossy().into_owned();
            let mut data = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            if rewritten.as_deref() == Some(crate::load::normalize(&path).as_path()) {
                let mut text = String::from_utf8(data).with_context(|| format!("{} is not UTF-8", path.display()))?;
                for (from, to) in rewrite {
                    text = text.replace(from, to);
                }
                data = text.into_bytes();
            }
            files.push((rel, data));
        }
    }
    files.sort();
    Ok(files)
}

/// Program name → type, map name → type, as bpfman's labels spell them.
fn ebpf_contents(object: &[u8]) -> anyhow::Result<(BTreeMap<String, String>, BTreeMap<String, String>)> {
    use aya_obj::ProgramSection as S;
    let obj = aya_obj::Object::parse(object).map_err(|e| anyhow::anyhow!("not an eBPF object: {e}"))?;
    let programs = obj
        .programs
        .iter()
        .map(|(name, p)| {
            let t = match &p.section {
                S::Xdp { .. } => "xdp",
                S::SockOps => "sock_ops",
                S::CgroupSockAddr { .. } => "cgroup_sock_addr",
                S::SchedClassifier => "tc",
                S::TracePoint => "tracepoint",
                S::KProbe => "kprobe",
                S::KRetProbe => "kretprobe",
                S::CgroupSkb { .. } => "cgroup_skb",
                S::SkMsg => "sk_msg",
                _ => "other",
            };
            (name.clone(), t.to_owned())
        })
        .collect();
    let maps = obj.maps.iter().map(|(name, m)| (name.clone(), map_type_name(m.map_type()).to_owned())).collect();
    Ok((programs, maps))
}

fn map_type_name(t: u32) -> &'static str {
    const NAMES: [&str; 31] = [
        "unspec",
        "hash",
        "array",
        "prog_array",
        "perf_event_array",
        "per_cpu_hash",
        "per_cpu_array",
        "stack_trace",
        "cgroup_array",
        "lru_hash",
        "lru_per_cpu_hash",
        "lpm_trie",
        "array_of_maps",
        "hash_of_maps",
        "devmap",
        "sockmap",
        "cpumap",
        "xskmap",
        "sockhash",
        "cgroup_storage",
        "reuseport_sockarray",
        "per_cpu_cgroup_storage",
        "queue",
        "stack",
        "sk_storage",
        "devmap_hash",
        "struct_ops",
        "ringbuf",
        "inode_storage",
        "task_storage",
        "bloom_filter",
    ];
    NAMES.get(t as usize).copied().unwrap_or("other")
}

/// Builds every item into `out`: the artifacts and `index.json`.
pub fn build_all(catalog: &Catalog, options: &BuildOptions, out: &Path) -> anyhow::Result<(Index, Vec<Built>)> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut index = Index::default();
    let mut built = Vec::new();
    for entry in &catalog.entries {
        let b = build_item(catalog, entry, options, &ModuleRewrite::new())?;
        let dir = out.join(entry.item.kind.dir());
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(&b.file_name), &b.bytes)?;
        index.items.push(b.index_entry());
        built.push(b);
    }
    std::fs::write(out.join("index.json"), serde_json::to_vec_pretty(&index)?)?;
    Ok((index, built))
}
