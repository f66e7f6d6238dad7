//! meshwork's own YAML for `meshwork run --config`: the listener, the upstream `app` (and the
//! extra clusters), one route to it, and the filters with their modules as meshwork reads them
//! (a path, `oci://…`, or the URL), pinned by sha256 when known.

use serde_json::{Map, Value, json};

use super::envoy::unique_clusters;
use super::{HostPort, RenderError, image_reference};
use crate::model::{Document, Fail, FilterSpec, Module, Options};

pub(super) fn render(filters: &[FilterSpec], options: &Options) -> Result<Vec<Document>, RenderError> {
    let mut notes = Vec::new();
    let listen = HostPort::parse(&options.listen, "listen")?;
    if !listen.is_ip() {
        return Err(RenderError::Invalid {
            field: "listen".into(),
            reason: format!("{:?}: meshwork listens on an IP address", options.listen),
        });
    }
    let mut clusters =
        vec![json!({"name": "app", "endpoints": [HostPort::parse(&options.upstream, "upstream")?.text()]})];
    for (i, extra) in options.extra_clusters.iter().enumerate() {
        let endpoint = HostPort::parse(&extra.address, &format!("extra_clusters[{i}].address"))?;
        clusters.push(json!({"name": extra.name, "endpoints": [endpoint.text()]}));
    }
    unique_clusters(std::iter::once("app").chain(options.extra_clusters.iter().map(|c| c.name.as_str())))?;
    let mut list = Vec::new();
    for f in filters {
        let mut entry = Map::new();
        entry.insert("name".into(), json!(f.name));
        let (module, sha256) = match &f.module {
            Module::Image { reference, digest } => (format!("oci://{}", image_reference(reference)), digest),
            Module::File { path, sha256 } => (path.clone(), sha256),
            Module::Http { url, sha256 } => (url.clone(), sha256),
        };
        entry.insert("module".into(), json!(module));
        if let Some(sha256) = sha256 {
            entry.insert("sha256".into(), json!(sha256));
        }
        if !f.root_id.is_empty() {
            entry.insert("root_id".into(), json!(f.root_id));
        }
        if !f.vm_id.is_empty() {
            entry.insert("vm_id".into(), json!(f.vm_id));
        }
        // meshwork sends a string as it is and anything else as JSON, as Envoy's StringValue.
        if !f.configuration.is_null() {
            entry.insert("configuration".into(), f.configuration.clone());
        }
        entry.insert(
            "fail".into(),
            json!(match f.fail {
                Fail::Open => "open",
                Fail::Closed | Fail::Reload => "closed",
            }),
        );
        if f.fail == Fail::Reload {
            notes.push(format!(
                "filter {}: meshwork has no FAIL_RELOAD setting; it fails closed and rebuilds a failed VM anyway",
                f.name
            ));
        }
        if f.allow_on_headers_stop_iteration {
            entry.insert("allow_on_headers_stop_iteration".into(), json!(true));
        }
        if !f.env.is_empty() {
            entry.insert("env".into(), json!(f.env));
        }
        list.push(Value::Object(entry));
    }
    if filters.iter().any(|f| matches!(&f.module, Module::File { path, .. } if !path.starts_with('/'))) {
        notes.push("relative module paths are read relative to this file".into());
    }
    let value = json!({
        "listen": listen.text(),
        "admin": "127.0.0.1:9901",
        "clusters": clusters,
        "route": {"cluster": "app", "name": "app"},
        "filters": list,
    });
    Ok(vec![Document { kind: "MeshworkConfig".into(), name: "meshwork".into(), value, text: None, notes }])
}
