//! Wasm filters as OCI artifacts, in the three layouts of the field, and the module found again.
//!
//! - `compat` (solo-io/wasm spec-compat.md): an ordinary image whose last layer is a tar.gz
//!   holding `plugin.wasm`. Istio, Envoy Gateway and every image tool (skopeo, crane) read it.
//! - `oci` (solo-io/wasm spec.md): exactly two layers, the runtime config JSON then the raw
//!   module, typed `application/vnd.module.wasm.*`. Istio and Envoy Gateway read it.
//! - `wasm` (CNCF TAG-Runtime Wasm OCI artifact): one `application/wasm` layer. Tools of the
//!   component model read it; Istio's puller does not.
//!
//! Reading follows Istio's puller (pkg/wasm/imagefetcher.go): docker image, then compat, then the
//! two-layer oci form; meshwork also takes the TAG-Runtime form.

use anyhow::Context;
use oci_client::manifest::OciDescriptor;
use serde_json::json;

use crate::artifact::{Artifact, Blob, Describe};
use crate::registry::{Failure, FailureKind, PulledManifest};
use crate::{digest_of, media, tarball};

/// The reproducible build time written where a format requires one.
const EPOCH: &str = "1970-01-01T00:00:00Z";
/// Largest module meshwork unpacks from a layer.
pub const MAX_MODULE_BYTES: u64 = 256 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    Compat,
    Oci,
    TagRuntime,
}

impl Variant {
    pub const ALL: [Variant; 3] = [Variant::Compat, Variant::Oci, Variant::TagRuntime];

    pub fn name(self) -> &'static str {
        match self {
            Variant::Compat => "compat",
            Variant::Oci => "oci",
            Variant::TagRuntime => "wasm",
        }
    }

    /// The tag a variant is pushed under: the version itself for compat (what Istio users
    /// write), `<version>-oci` and `<version>-wasm` for the others.
    pub fn tag(self, version: &str) -> String {
        match self {
            Variant::Compat => version.to_owned(),
            other => format!("{version}-{}", other.name()),
        }
    }

    pub fn parse(name: &str) -> anyhow::Result<Variant> {
        Variant::ALL
            .into_iter()
            .find(|v| v.name() == name)
            .with_context(|| format!("unknown Wasm variant {name:?} (compat, oci, wasm)"))
    }
}

/// What the proxy needs to know about a module besides its bytes.
#[derive(Clone, Debug, Default)]
pub struct WasmMeta {
    /// proxy-wasm ABI, as the solo spec spells it (`v0.2.1`).
    pub abi_version: String,
    pub root_ids: Vec<String>,
}

fn runtime_config(meta: &WasmMeta) -> Vec<u8> {
    let config =
        json!({"type": "envoy_proxy", "abiVersions": [meta.abi_version], "config": {"rootIds": meta.root_ids}});
    serde_json::to_vec(&config).expect("json")
}

pub fn build(variant: Variant, module: &[u8], describe: &Describe, meta: &WasmMeta) -> anyhow::Result<Artifact> {
    let mut annotations = describe.annotations();
    Ok(match variant {
        Variant::Compat => {
            let layer = tarball::pack(&[("plugin.wasm".to_owned(), module.to_vec())])?;
            let config = json!({
                "created": EPOCH,
                "architecture": "wasm",
                "os": "wasip1",
                "config": {},
                "rootfs": {"type": "layers", "diff_ids": [digest_of(&layer.tar)]},
            });
            annotations.insert(media::WASM_VARIANT.to_owned(), "compat".to_owned());
            Artifact {
                config: Blob::new(media::OCI_IMAGE_CONFIG, serde_json::to_vec(&config)?),
                layers: vec![Blob::new(media::OCI_LAYER_TAR_GZIP, layer.gz)],
                annotations,
            }
        }
        Variant::Oci => {
            let config = runtime_config(meta);
            annotations.insert(media::WASM_RUNTIME_TYPE.to_owned(), "envoy_proxy".to_owned());
            annotations.insert(media::WASM_ABI_VERSION.to_owned(), meta.abi_version.clone());
            Artifact {
                config: Blob::new(media::SOLO_WASM_CONFIG, config.clone()),
                layers: vec![
                    Blob::new(media::SOLO_WASM_CONFIG, config).titled("runtime-config.json"),
                    Blob::new(media::SOLO_WASM_LAYER, module.to_vec()).titled("filter.wasm"),
                ],
                annotations,
            }
        }
        Variant::TagRuntime => {
            let layer = Blob::new(media::TAG_RUNTIME_WASM_LAYER, module.to_vec()).titled("module.wasm");
            let config = json!({
                "created": EPOCH,
                "architecture": "wasm",
                "os": "wasip1",
                "layerDigests": [layer.digest()],
            });
            Artifact {
                config: Blob::new(media::TAG_RUNTIME_WASM_CONFIG, serde_json::to_vec(&config)?),
                layers: vec![layer],
                annotations,
            }
        }
    })
}

/// Where the module is in a manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layout {
    /// A tar.gz layer (docker or OCI type), holding `plugin.wasm`.
    TarGz,
    /// The module's bytes as the layer.
    Raw,
}

/// Finds the module's layer, in Istio's order.
pub fn find_module(pulled: &PulledManifest) -> anyhow::Result<(Layout, OciDescriptor)> {
    let layers = &pulled.manifest.layers;
    let Some(last) = layers.last() else { return Err(not_wasm("the manifest has no layers").into()) };
    if last.media_type == media::DOCKER_LAYER_TAR_GZIP || last.media_type == media::OCI_LAYER_TAR_GZIP {
        return Ok((Layout::TarGz, last.clone()));
    }
    if layers.len() == 2
        && let Some(l) = layers.iter().find(|l| l.media_type == media::SOLO_WASM_LAYER)
    {
        return Ok((Layout::Raw, l.clone()));
    }
    if layers.len() == 1 && last.media_type == media::TAG_RUNTIME_WASM_LAYER {
        return Ok((Layout::Raw, last.clone()));
    }
    let types: Vec<&str> = layers.iter().map(|l| l.media_type.as_str()).collect();
    Err(anyhow::Error::from(not_wasm(&format!(
        "no layer holds a Wasm module: layers {types:?} match none of the compat (tar.gz with plugin.wasm), \
         oci (two layers, {}) or TAG-Runtime ({}) layouts",
        media::SOLO_WASM_LAYER,
        media::TAG_RUNTIME_WASM_LAYER
    ))))
}

/// The module from its layer's bytes, checked to be Wasm.
pub fn module_from_layer(layout: &Layout, layer: Vec<u8>) -> anyhow::Result<Vec<u8>> {
    let module = match layout {
        Layout::Raw => layer,
        Layout::TarGz => {
            let files = tarball::unpack(&layer, MAX_MODULE_BYTES).map_err(|e| not_wasm(&format!("{e:#}")))?;
            files
                .into_iter()
                .find(|(path, _)| path.rsplit('/').next() == Some("plugin.wasm"))
                .map(|(_, data)| data)
                .ok_or_else(|| not_wasm("the image's last layer holds no plugin.wasm"))?
        }
    };
    check_magic(&module)?;
    Ok(module)
}

pub fn check_magic(module: &[u8]) -> anyhow::Result<()> {
    if module.len() < 8 || &module[..4] != b"\0asm" {
        return Err(not_wasm("the bytes do not start with the Wasm magic \\0asm").into());
    }
    Ok(())
}

fn not_wasm(why: &str) -> Failure {
    Failure::new(FailureKind::NotWasm, why.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_client::manifest::OciImageManifest;

    const MODULE: &[u8] = b"\0asm\x01\0\0\0";

    fn pulled(a: &Artifact) -> PulledManifest {
        let bytes = a.manifest();
        PulledManifest {
            digest: digest_of(&bytes),
            manifest: serde_json::from_slice::<OciImageManifest>(&bytes).unwrap(),
            bytes,
        }
    }

    fn layer_of(a: &Artifact, d: &OciDescriptor) -> Vec<u8> {
        a.layers.iter().find(|l| l.digest() == d.digest).unwrap().data.clone()
    }

    #[test]
    fn every_variant_gives_the_module_back() {
        let meta = WasmMeta { abi_version: "v0.2.1".into(), root_ids: vec!["measure".into()] };
        for v in Variant::ALL {
            let a = build(v, MODULE, &Describe::default(), &meta).unwrap();
            let (layout, d) = find_module(&pulled(&a)).unwrap();
            assert_eq!(module_from_layer(&layout, layer_of(&a, &d)).unwrap(), MODULE, "{v:?}");
        }
    }

    #[test]
    fn the_oci_variant_has_exactly_the_two_layers_istio_wants() {
        let a = build(Variant::Oci, MODULE, &Describe::default(), &WasmMeta::default()).unwrap();
        let types: Vec<_> = a.layers.iter().map(|l| l.media_type.as_str()).collect();
        assert_eq!(types, [media::SOLO_WASM_CONFIG, media::SOLO_WASM_LAYER]);
        assert_eq!(a.config.media_type, media::SOLO_WASM_CONFIG);
    }

    #[test]
    fn layers_that_are_not_wasm_are_named() {
        let a = build(Variant::TagRuntime, b"not wasm!", &Describe::default(), &WasmMeta::default()).unwrap();
        let (layout, d) = find_module(&pulled(&a)).unwrap();
        let err = module_from_layer(&layout, layer_of(&a, &d)).unwrap_err();
        assert_eq!(Failure::kind_of(&err), FailureKind::NotWasm);
        let helm = Artifact {
            config: Blob::new("application/vnd.cncf.helm.config.v1+json", b"{}".to_vec()),
            layers: vec![Blob::new("application/vnd.cncf.helm.chart.content.v1.tar+gzip", b"x".to_vec())],
            annotations: Default::default(),
        };
        let err = find_module(&pulled(&helm)).unwrap_err();
        assert!(format!("{err:#}").contains("helm.chart"), "{err:#}");
    }
}
