//! Consul: `service-defaults` for the service with one `builtin/wasm` Envoy extension per
//! filter, in chain order (each is inserted just before the router). The same entry is written
//! twice: the consul-k8s `ServiceDefaults` CRD (camelCase) as the value, the config entry in HCL
//! (`consul config write`, capitalised keys) as the text.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Map, Value, json};

use super::{RenderError, configuration_text, k8s_name, k8s_namespace, lost_options_notes, url_endpoint};
use crate::model::{Document, Fail, FilterSpec, Module, Options};

const MESH: &str = "Consul";

/// One argument tree, keyed both ways: (CRD key, HCL key).
enum Node {
    Str(String),
    Obj(Vec<(&'static str, &'static str, Node)>),
    /// Keys kept as they are (environment variable names).
    Map(BTreeMap<String, String>),
}

impl Node {
    fn json(&self) -> Value {
        match self {
            Node::Str(s) => json!(s),
            Node::Obj(fields) => Value::Object(fields.iter().map(|(k, _, v)| ((*k).to_owned(), v.json())).collect()),
            Node::Map(m) => json!(m),
        }
    }

    /// The node as an HCL expression, nested at `indent`.
    fn hcl(&self, indent: usize, out: &mut String) {
        let pad = "  ".repeat(indent + 1);
        match self {
            Node::Str(s) => out.push_str(&hcl_string(s)),
            Node::Obj(fields) => {
                out.push_str("{\n");
                for (_, key, value) in fields {
                    let _ = write!(out, "{pad}{key} = ");
                    value.hcl(indent + 1, out);
                    out.push('\n');
                }
                let _ = write!(out, "{}}}", "  ".repeat(indent));
            }
            Node::Map(m) => {
                out.push_str("{\n");
                for (key, value) in m {
                    let _ = writeln!(out, "{pad}{} = {}", hcl_string(key), hcl_string(value));
                }
                let _ = write!(out, "{}}}", "  ".repeat(indent));
            }
        }
    }
}

/// An HCL string literal: JSON escapes, and `${`/`%{` kept literal.
fn hcl_string(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes").replace("${", "$${").replace("%{", "%%{")
}

fn s(text: &str) -> Node {
    Node::Str(text.to_owned())
}

/// The `Arguments` of one `builtin/wasm` extension.
fn arguments(f: &FilterSpec, service_name: &str, notes: &mut Vec<String>) -> Result<Node, RenderError> {
    let unsupported = |reason: String| RenderError::Unsupported { mesh: MESH, filter: f.name.clone(), reason };
    let code = match &f.module {
        Module::File { path, .. } => {
            Node::Obj(vec![("local", "Local", Node::Obj(vec![("filename", "Filename", s(path))]))])
        }
        Module::Http { url, sha256 } => {
            let Some(sha256) = sha256 else {
                return Err(unsupported(format!(
                    "Consul requires the SHA256 of remote Wasm code; give the module's sha256 for {url}"
                )));
            };
            let (endpoint, _) = url_endpoint(url).map_err(&unsupported)?;
            if endpoint.is_ip() {
                return Err(unsupported(format!(
                    "Consul fetches remote code through an upstream service, named here after the URL's host, and {url} has an IP address"
                )));
            }
            let service = endpoint.host.split('.').next().unwrap_or_default().to_owned();
            notes.push(format!(
                "filter {}: Consul fetches {url} through the service {service:?}, which must be an upstream of {service_name:?}",
                f.name
            ));
            Node::Obj(vec![(
                "remote",
                "Remote",
                Node::Obj(vec![
                    (
                        "httpURI",
                        "HttpURI",
                        Node::Obj(vec![
                            ("service", "Service", Node::Obj(vec![("name", "Name", Node::Str(service))])),
                            ("uri", "URI", s(url)),
                            ("timeout", "Timeout", s("10s")),
                        ]),
                    ),
                    ("sha256", "SHA256", s(sha256)),
                ]),
            )])
        }
        Module::Image { reference, .. } => {
            return Err(unsupported(format!(
                "Consul's builtin/wasm loads code from a local file or a remote HTTP URL only, not an OCI image ({reference}); put the module in the sidecar (--file) or serve it over HTTP (--url)"
            )));
        }
    };
    let mut vm = Vec::new();
    if !f.vm_id.is_empty() {
        vm.push(("vmID", "VmID", s(&f.vm_id)));
    }
    vm.push(("runtime", "Runtime", s("v8")));
    vm.push(("code", "Code", code));
    if !f.env.is_empty() {
        vm.push((
            "environmentVariables",
            "EnvironmentVariables",
            Node::Obj(vec![("keyValues", "KeyValues", Node::Map(f.env.clone()))]),
        ));
    }
    let mut plugin = vec![("name", "Name", s(&f.name))];
    if !f.root_id.is_empty() {
        plugin.push(("rootID", "RootID", s(&f.root_id)));
    }
    if let Some(text) = configuration_text(&f.configuration) {
        plugin.push(("configuration", "Configuration", Node::Str(text)));
    }
    plugin.push(("vmConfig", "VmConfig", Node::Obj(vm)));
    Ok(Node::Obj(vec![
        ("protocol", "Protocol", s("http")),
        ("listenerType", "ListenerType", s("inbound")),
        ("pluginConfig", "PluginConfig", Node::Obj(plugin)),
    ]))
}

pub(super) fn render(filters: &[FilterSpec], options: &Options) -> Result<Vec<Document>, RenderError> {
    let namespace = k8s_namespace(&options.namespace)?;
    let mut notes = vec!["Consul's builtin/wasm patches inbound listeners only".to_owned()];
    let name = k8s_name(&options.service, "service", &mut notes)?;
    let mut crd = Vec::new();
    let mut hcl = String::new();
    let _ = writeln!(
        hcl,
        "Kind     = \"service-defaults\"\nName     = {}\nProtocol = \"http\"",
        hcl_string(&options.service)
    );
    hcl.push_str("EnvoyExtensions = [\n");
    for f in filters {
        let args = arguments(f, &options.service, &mut notes)?;
        // Required = false is how Consul fails open.
        let required = f.fail != Fail::Open;
        let mut ext = Map::new();
        ext.insert("name".into(), json!("builtin/wasm"));
        ext.insert("required".into(), json!(required));
        ext.insert("arguments".into(), args.json());
        crd.push(Value::Object(ext));
        let _ = write!(hcl, "  {{\n    Name     = \"builtin/wasm\"\n    Required = {required}\n    Arguments = ");
        args.hcl(2, &mut hcl);
        hcl.push_str("\n  },\n");
    }
    hcl.push_str("]\n");
    lost_options_notes(MESH, filters, false, &mut notes);
    let value = json!({
        "apiVersion": "consul.hashicorp.com/v1alpha1",
        "kind": "ServiceDefaults",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"protocol": "http", "envoyExtensions": crd},
    });
    Ok(vec![Document { kind: "ServiceDefaults".into(), name, value, text: Some(hcl), notes }])
}
