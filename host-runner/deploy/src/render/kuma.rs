//! Kuma: one `MeshProxyPatch` adding each filter's `envoy.filters.http.wasm` before the router
//! of inbound listeners, in chain order (each AddBefore lands just before the router, after the
//! previous one). Remote modules also get the cluster Envoy fetches them through.

use serde_json::{Value, json};

use super::envoy::{ModuleCluster, wasm_filter};
use super::{RenderError, k8s_namespace, policy_name, yaml};
use crate::model::{Document, FilterSpec, Module, Options};

const MESH: &str = "Kuma";

/// Kuma's MeshProxyPatch validator takes these target kinds only.
const TARGET_KINDS: [&str; 2] = ["Mesh", "Dataplane"];

pub(super) fn render(filters: &[FilterSpec], options: &Options) -> Result<Vec<Document>, RenderError> {
    // Mesh-wide policies live in Kuma's system namespace; "default" is Options' own default.
    let namespace =
        if options.namespace == "default" { "kuma-system".to_owned() } else { k8s_namespace(&options.namespace)? };
    let mut notes = Vec::new();
    let name = policy_name(options, &mut notes)?;
    let target_ref = match options.target_refs.as_slice() {
        [] => json!({"kind": "Mesh"}),
        [one] if one.kind == "Mesh" => json!({"kind": "Mesh"}),
        [one] if TARGET_KINDS.contains(&one.kind.as_str()) => json!({"kind": one.kind, "name": one.name}),
        [one] => {
            return Err(RenderError::Invalid {
                field: "target_refs".into(),
                reason: format!("Kuma's MeshProxyPatch targets a Mesh or a Dataplane, not a {}", one.kind),
            });
        }
        _ => {
            return Err(RenderError::Invalid {
                field: "target_refs".into(),
                reason: "a MeshProxyPatch has one targetRef; give at most one".into(),
            });
        }
    };
    let mut clusters: Vec<ModuleCluster> = Vec::new();
    let mut filter_mods = Vec::new();
    for f in filters {
        if let Module::Image { reference, .. } = &f.module {
            return Err(RenderError::Unsupported {
                mesh: MESH,
                filter: f.name.clone(),
                reason: format!(
                    "a MeshProxyPatch hands Envoy its Wasm config as is, and Envoy cannot pull OCI images ({reference}); put the module in the sidecar (--file) or serve it over HTTP (--url)"
                ),
            });
        }
        let (filter, cluster) = wasm_filter(f, MESH, "typedConfig", &mut notes)?;
        if let Some(c) = cluster
            && !clusters.contains(&c)
        {
            clusters.push(c);
        }
        filter_mods.push(json!({"httpFilter": {
            "operation": "AddBefore",
            "match": {"name": "envoy.filters.http.router", "origin": "inbound"},
            "value": yaml(&filter),
        }}));
    }
    let mut modifications: Vec<Value> =
        clusters.iter().map(|c| json!({"cluster": {"operation": "Add", "value": yaml(&c.value())}})).collect();
    modifications.extend(filter_mods);
    if filters.iter().any(|f| matches!(f.module, Module::File { .. })) {
        notes.push("module files must be in the kuma-sidecar container at the paths given".into());
    }
    let value = json!({
        "apiVersion": "kuma.io/v1alpha1",
        "kind": "MeshProxyPatch",
        "metadata": {"name": name, "namespace": namespace, "labels": {"kuma.io/mesh": "default"}},
        "spec": {"targetRef": target_ref, "default": {"appendModifications": modifications}},
    });
    Ok(vec![Document { kind: "MeshProxyPatch".into(), name, value, text: None, notes }])
}
