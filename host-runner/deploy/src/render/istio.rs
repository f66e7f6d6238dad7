//! Istio: one `WasmPlugin` per filter. Istio orders plugins of one phase by descending
//! `priority`, so the chain order becomes priorities n·10, (n-1)·10, …, 10.

use serde_json::{Map, Value, json};

use super::{
    RenderError, configuration_json, image_reference, k8s_name, k8s_namespace, lost_options_notes, shared_vms,
};
use crate::model::{Document, Fail, FilterSpec, Module, Options};

const PHASES: [&str; 3] = ["AUTHN", "AUTHZ", "STATS"];

pub(super) fn render(filters: &[FilterSpec], options: &Options) -> Result<Vec<Document>, RenderError> {
    let namespace = k8s_namespace(&options.namespace)?;
    if !options.selector.is_empty() && !options.target_refs.is_empty() {
        return Err(RenderError::Invalid {
            field: "selector".into(),
            reason: "Istio takes a selector or targetRefs, not both (the WasmPlugin CRD refuses both)".into(),
        });
    }
    if let Some(phase) = &options.istio_phase
        && !PHASES.contains(&phase.as_str())
    {
        return Err(RenderError::Invalid {
            field: "istio_phase".into(),
            reason: format!("{phase:?} is not one of AUTHN, AUTHZ, STATS (leave it out for just before the router)"),
        });
    }
    let mut shared = Vec::new();
    for (vm, names) in shared_vms(filters) {
        shared.push(format!(
            "filters {} share vm_id {vm:?} (and their shared data and queues) elsewhere; Istio gives each WasmPlugin its own VM",
            names.join(", ")
        ));
    }
    let n = filters.len();
    let mut docs = Vec::new();
    for (i, f) in filters.iter().enumerate() {
        let mut notes = Vec::new();
        if i == 0 {
            notes.extend(shared.iter().cloned());
            if options.selector.is_empty() && options.target_refs.is_empty() {
                notes.push(format!(
                    "no selector or targetRefs: these WasmPlugins apply to every workload in namespace {namespace}"
                ));
            }
        }
        let name = k8s_name(&f.name, &format!("filter {}", f.name), &mut notes)?;
        let mut spec = Map::new();
        if !options.selector.is_empty() {
            spec.insert("selector".into(), json!({"matchLabels": options.selector}));
        }
        if !options.target_refs.is_empty() {
            let refs: Vec<Value> =
                options.target_refs.iter().map(|r| json!({"group": r.group, "kind": r.kind, "name": r.name})).collect();
            spec.insert("targetRefs".into(), Value::Array(refs));
        }
        let (url, sha256) = match &f.module {
            Module::Image { reference, digest } => (format!("oci://{}", image_reference(reference)), digest.clone()),
            Module::File { path, .. } => {
                if !path.starts_with('/') {
                    return Err(RenderError::Unsupported {
                        mesh: "Istio",
                        filter: f.name.clone(),
                        reason: format!(
                            "a file:// URL needs the module's absolute path in the istio-proxy container, not {path:?}"
                        ),
                    });
                }
                notes.push(format!("filter {}: the file {path} must be in the istio-proxy container", f.name));
                (format!("file://{path}"), None)
            }
            Module::Http { url, sha256 } => (url.clone(), sha256.clone()),
        };
        spec.insert("url".into(), json!(url));
        if let Some(sha256) = sha256 {
            spec.insert("sha256".into(), json!(sha256));
        }
        if matches!(f.module, Module::Image { .. }) {
            spec.insert("imagePullPolicy".into(), json!("IfNotPresent"));
        }
        if !f.root_id.is_empty() {
            spec.insert("pluginName".into(), json!(f.root_id));
        }
        match configuration_json(&f.configuration) {
            Ok(None) => {}
            Ok(Some(Value::Object(config))) => {
                spec.insert("pluginConfig".into(), Value::Object(config));
            }
            Ok(Some(_)) | Err(_) => notes.push(format!(
                "filter {}: Istio's pluginConfig is a JSON object (a Struct) and this configuration is not one, so it is left out: the plugin starts with no configuration",
                f.name
            )),
        }
        if let Some(phase) = &options.istio_phase {
            spec.insert("phase".into(), json!(phase));
        }
        spec.insert("priority".into(), json!(10 * (n - i)));
        spec.insert(
            "failStrategy".into(),
            json!(match f.fail {
                Fail::Open => "FAIL_OPEN",
                Fail::Closed => "FAIL_CLOSE",
                Fail::Reload => "FAIL_RELOAD",
            }),
        );
        if !f.env.is_empty() {
            let env: Vec<Value> = f.env.iter().map(|(k, v)| json!({"name": k, "value": v})).collect();
            spec.insert("vmConfig".into(), json!({"env": env}));
        }
        spec.insert("type".into(), json!("HTTP"));
        lost_options_notes("Istio", std::slice::from_ref(f), true, &mut notes);
        docs.push(Document {
            kind: "WasmPlugin".into(),
            name: name.clone(),
            value: json!({
                "apiVersion": "extensions.istio.io/v1alpha1",
                "kind": "WasmPlugin",
                "metadata": {"name": name, "namespace": namespace},
                "spec": spec,
            }),
            text: None,
            notes,
        });
    }
    Ok(docs)
}
