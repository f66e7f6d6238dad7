//! An artifact ready to push: a config blob, layers, annotations; its manifest as exact bytes.
//! Also the non-Wasm kinds: eBPF programs as bpfman bytecode images, and bundles (a pattern's or
//! a policy's directory as one tar.gz layer).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::registry::Annotations;
use crate::{digest_of, media, tarball};

#[derive(Clone, Debug)]
pub struct Blob {
    pub media_type: String,
    pub data: Vec<u8>,
    pub annotations: Annotations,
}

impl Blob {
    pub fn new(media_type: &str, data: Vec<u8>) -> Blob {
        Blob { media_type: media_type.to_owned(), data, annotations: BTreeMap::new() }
    }

    pub fn titled(mut self, title: &str) -> Blob {
        self.annotations.insert(media::TITLE.to_owned(), title.to_owned());
        self
    }

    pub fn digest(&self) -> String {
        digest_of(&self.data)
    }

    fn descriptor(&self) -> Value {
        let mut d = json!({"mediaType": self.media_type, "digest": self.digest(), "size": self.data.len()});
        if !self.annotations.is_empty() {
            d["annotations"] = json!(self.annotations);
        }
        d
    }
}

#[derive(Clone, Debug)]
pub struct Artifact {
    pub config: Blob,
    pub layers: Vec<Blob>,
    pub annotations: Annotations,
}

impl Artifact {
    /// The OCI image manifest, keys sorted (serde_json's map is ordered), so the same artifact
    /// always has the same digest.
    pub fn manifest(&self) -> Vec<u8> {
        let mut m = json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_MANIFEST,
            "config": self.config.descriptor(),
            "layers": self.layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
        });
        if !self.annotations.is_empty() {
            m["annotations"] = json!(self.annotations);
        }
        serde_json::to_vec(&m).expect("a manifest serialises")
    }

    pub fn digest(&self) -> String {
        digest_of(&self.manifest())
    }

    /// Every blob and the manifest, for size reports.
    pub fn total_bytes(&self) -> usize {
        self.config.data.len() + self.layers.iter().map(|l| l.data.len()).sum::<usize>() + self.manifest().len()
    }
}

/// What a catalog item says about itself, carried in the manifest's annotations.
#[derive(Clone, Debug, Default)]
pub struct Describe {
    pub kind: String,
    pub name: String,
    pub version: String,
    pub description: String,
    pub license: String,
    pub source: String,
}

impl Describe {
    pub fn annotations(&self) -> Annotations {
        let mut a = BTreeMap::new();
        let mut put = |k: &str, v: &str| {
            if !v.is_empty() {
                a.insert(k.to_owned(), v.to_owned());
            }
        };
        put(media::MESHWORK_KIND, &self.kind);
        put(media::MESHWORK_ITEM, &self.name);
        put(media::TITLE, &self.name);
        put(media::VERSION, &self.version);
        put(media::DESCRIPTION, &self.description);
        put(media::LICENSES, &self.license);
        put(media::SOURCE, &self.source);
        a
    }
}

/// An eBPF object and what it contains, as bpfman reads it.
#[derive(Clone, Debug, Default)]
pub struct EbpfObject {
    /// The file name in the image (`xdp-ratelimit.o`).
    pub file_name: String,
    pub object: Vec<u8>,
    /// Program (function) name → bpfman's type spelling (`xdp`, `sockops`, …).
    pub programs: BTreeMap<String, String>,
    /// Map name → map type.
    pub maps: BTreeMap<String, String>,
    pub attach: String,
    pub capabilities: Vec<String>,
}

/// An eBPF program as a bpfman bytecode image: a container image whose one layer holds the
/// object, with `io.ebpf.programs` and `io.ebpf.maps` labels in its config, plus meshwork's
/// program types, attach point and capabilities as manifest annotations.
pub fn ebpf_image(object: &EbpfObject, describe: &Describe) -> anyhow::Result<Artifact> {
    let layer = tarball::pack(&[(object.file_name.clone(), object.object.clone())])?;
    let labels = json!({
        media::BPFMAN_PROGRAMS: serde_json::to_string(&object.programs)?,
        media::BPFMAN_MAPS: serde_json::to_string(&object.maps)?,
    });
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Labels": labels},
        "rootfs": {"type": "layers", "diff_ids": [digest_of(&layer.tar)]},
    });
    let mut annotations = describe.annotations();
    let types: Vec<&str> = object.programs.values().map(String::as_str).collect();
    annotations.insert(media::EBPF_PROGRAM_TYPES.to_owned(), types.join(","));
    annotations.insert(media::EBPF_ATTACH.to_owned(), object.attach.clone());
    annotations.insert(media::EBPF_CAPABILITIES.to_owned(), object.capabilities.join(","));
    Ok(Artifact {
        config: Blob::new(media::OCI_IMAGE_CONFIG, serde_json::to_vec(&config)?),
        layers: vec![Blob::new(media::OCI_LAYER_TAR_GZIP, layer.gz).titled(&object.file_name)],
        annotations,
    })
}

/// A directory's files as one tar.gz layer under meshwork's media types; `config_type` says
/// which kind (pattern or policy), and the config blob carries the item's metadata as JSON.
pub fn bundle(
    config_type: &str,
    metadata: &Value,
    files: &[(String, Vec<u8>)],
    describe: &Describe,
) -> anyhow::Result<Artifact> {
    let layer = tarball::pack(files)?;
    Ok(Artifact {
        config: Blob::new(config_type, serde_json::to_vec(metadata)?),
        layers: vec![Blob::new(media::BUNDLE_LAYER, layer.gz).titled(&format!("{}.tar.gz", describe.name))],
        annotations: describe.annotations(),
    })
}

/// The files of a bundle pulled back.
pub fn unbundle(layer: &[u8]) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    tarball::unpack(layer, 64 << 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ebpf_images_carry_bpfman_labels_and_annotations() {
        let object = EbpfObject {
            file_name: "xdp-ratelimit.o".into(),
            object: b"\x7fELF".to_vec(),
            programs: [("xdp_ratelimit".to_owned(), "xdp".to_owned())].into(),
            maps: [("RL_SOURCES".to_owned(), "lru_hash".to_owned())].into(),
            attach: "interface".into(),
            capabilities: vec!["CAP_BPF".into(), "CAP_NET_ADMIN".into()],
        };
        let a =
            ebpf_image(&object, &Describe { kind: "ebpf".into(), name: "xdp-ratelimit".into(), ..Default::default() })
                .unwrap();
        let config: Value = serde_json::from_slice(&a.config.data).unwrap();
        let programs: Value =
            serde_json::from_str(config["config"]["Labels"]["io.ebpf.programs"].as_str().unwrap()).unwrap();
        assert_eq!(programs, json!({"xdp_ratelimit": "xdp"}));
        assert_eq!(a.annotations[media::EBPF_PROGRAM_TYPES], "xdp");
        assert_eq!(a.annotations[media::EBPF_CAPABILITIES], "CAP_BPF,CAP_NET_ADMIN");
        let manifest: Value = serde_json::from_slice(&a.manifest()).unwrap();
        assert_eq!(manifest["layers"][0]["mediaType"], media::OCI_LAYER_TAR_GZIP);
        assert_eq!(a.digest(), a.digest(), "stable");
    }
}
