//! Envoy Gateway: one `EnvoyExtensionPolicy` whose `wasm` list is the chain, in order. Its
//! code comes from an HTTP URL or an OCI image only, and its `env` names host variables only.

use serde_json::{Map, Value, json};

use super::{
    RenderError, configuration_json, image_reference, k8s_namespace, lost_options_notes, policy_name, shared_vms,
};
use crate::model::{Document, Fail, FilterSpec, Module, Options};

const MESH: &str = "Envoy Gateway";

pub(super) fn render(filters: &[FilterSpec], options: &Options) -> Result<Vec<Document>, RenderError> {
    let namespace = k8s_namespace(&options.namespace)?;
    let mut notes = Vec::new();
    let name = policy_name(options, &mut notes)?;
    let target_refs: Vec<Value> = if options.target_refs.is_empty() {
        notes.push(format!(
            "no target refs given: the policy attaches to the HTTPRoute {:?}; give target refs to attach it elsewhere",
            options.service
        ));
        vec![json!({"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": options.service})]
    } else {
        options.target_refs.iter().map(|r| json!({"group": r.group, "kind": r.kind, "name": r.name})).collect()
    };
    let mut wasm = Vec::new();
    for f in filters {
        let unsupported = |reason: String| RenderError::Unsupported { mesh: MESH, filter: f.name.clone(), reason };
        let code = match &f.module {
            Module::Image { reference, digest } => {
                let mut image = Map::new();
                image.insert("url".into(), json!(image_reference(reference)));
                if let Some(d) = digest {
                    image.insert("sha256".into(), json!(d));
                }
                json!({"type": "Image", "image": image})
            }
            Module::Http { url, sha256 } => {
                let mut http = Map::new();
                http.insert("url".into(), json!(url));
                if let Some(s) = sha256 {
                    http.insert("sha256".into(), json!(s));
                }
                json!({"type": "HTTP", "http": http})
            }
            Module::File { path, .. } => {
                return Err(unsupported(format!(
                    "EnvoyExtensionPolicy takes Wasm code from an HTTP URL or an OCI image, not a file ({path}); push the module to a registry as an OCI image or serve it over HTTP (--url)"
                )));
            }
        };
        if !f.env.is_empty() {
            return Err(unsupported(format!(
                "EnvoyExtensionPolicy's env only passes the proxy's own variables (hostKeys), not values; {} would be lost",
                f.env.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        let mut entry = Map::new();
        entry.insert("name".into(), json!(f.name));
        if !f.root_id.is_empty() {
            entry.insert("rootID".into(), json!(f.root_id));
        }
        entry.insert("code".into(), code);
        match configuration_json(&f.configuration) {
            Ok(None) => {}
            Ok(Some(config)) => {
                entry.insert("config".into(), config);
            }
            Err(text) => {
                return Err(unsupported(format!(
                    "Envoy Gateway passes `config` to the plugin as JSON, and this configuration is plain text ({text:?})"
                )));
            }
        }
        entry.insert("failOpen".into(), json!(f.fail == Fail::Open));
        wasm.push(Value::Object(entry));
    }
    for (vm, names) in shared_vms(filters) {
        notes.push(format!(
            "filters {} share vm_id {vm:?} elsewhere; Envoy Gateway chooses VM ids itself, so they may not share a VM (or its shared data)",
            names.join(", ")
        ));
    }
    lost_options_notes(MESH, filters, false, &mut notes);
    let value = json!({
        "apiVersion": "gateway.envoyproxy.io/v1alpha1",
        "kind": "EnvoyExtensionPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"targetRefs": target_refs, "wasm": wasm},
    });
    Ok(vec![Document { kind: "EnvoyExtensionPolicy".into(), name, value, text: None, notes }])
}
