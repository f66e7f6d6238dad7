//! The documents each mesh needs for a chain of filters. A combination a mesh cannot express
//! (Envoy Gateway loading a file, Consul or Kuma pulling an OCI image…) is refused with a
//! [`RenderError`] rather than rendered into something the mesh would reject or run differently;
//! smaller differences (a failure policy the mesh lacks) become [`Document::notes`].

mod consul;
mod envoy;
mod envoy_gateway;
mod istio;
mod kuma;
mod meshwork;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::model::{Document, FilterSpec, Mesh, Module, Options};

pub(crate) use envoy::{HCM_TYPE, ROUTER_TYPE};

/// Why the filters cannot be deployed to a mesh as asked.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("nothing to deploy: no filters were given")]
    NoFilters,
    /// The mesh has no way to say what the filter needs.
    #[error("{mesh} cannot deploy filter {filter:?}: {reason}")]
    Unsupported { mesh: &'static str, filter: String, reason: String },
    /// An input (a filter field or an option) is malformed or contradicts another.
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
}

/// The documents that deploy `filters`, in chain order, to `mesh`.
pub fn render(mesh: Mesh, filters: &[FilterSpec], options: &Options) -> Result<Vec<Document>, RenderError> {
    check_filters(filters)?;
    match mesh {
        Mesh::Envoy => envoy::http_filters(filters),
        Mesh::EnvoyBootstrap => envoy::bootstrap(filters, options),
        Mesh::Istio => istio::render(filters, options),
        Mesh::EnvoyGateway => envoy_gateway::render(filters, options),
        Mesh::Consul => consul::render(filters, options),
        Mesh::Kuma => kuma::render(filters, options),
        Mesh::Meshwork => meshwork::render(filters, options),
    }
}

/// Multi-document YAML (`---` between documents), each document's notes as comments above it.
/// Consul's HCL ([`Document::text`]) is not included: the CRD form is.
pub fn to_yaml(docs: &[Document]) -> String {
    let mut out = String::new();
    for (i, doc) in docs.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        for note in &doc.notes {
            for (j, line) in note.lines().enumerate() {
                out.push_str(if j == 0 { "# note: " } else { "#   " });
                out.push_str(line);
                out.push('\n');
            }
        }
        out.push_str(&yaml(&doc.value));
    }
    out
}

/// The documents' values as one JSON array (`kubectl apply -f` takes it as a list).
pub fn to_json(docs: &[Document]) -> String {
    let all = Value::Array(docs.iter().map(|d| d.value.clone()).collect());
    let mut text = serde_json::to_string_pretty(&all).expect("a JSON value always serializes");
    text.push('\n');
    text
}

/// One value as YAML; a `serde_json::Value` always serializes.
pub(crate) fn yaml(value: &Value) -> String {
    let text = serde_saphyr::to_string(value).expect("a JSON value always serializes as YAML");
    if text.ends_with('\n') { text } else { text + "\n" }
}

/// What every mesh needs of the filters: some, uniquely named, with well-formed digests that
/// agree with the image reference.
fn check_filters(filters: &[FilterSpec]) -> Result<(), RenderError> {
    if filters.is_empty() {
        return Err(RenderError::NoFilters);
    }
    let mut names = BTreeSet::new();
    for (i, f) in filters.iter().enumerate() {
        let field = |what: &str| format!("filters[{i}] ({}).{what}", f.name);
        if f.name.trim().is_empty() {
            return Err(RenderError::Invalid { field: format!("filters[{i}].name"), reason: "is empty".into() });
        }
        if !names.insert(f.name.as_str()) {
            return Err(RenderError::Invalid {
                field: field("name"),
                reason:
                    "another filter has the same name; plugin names (and the documents named after them) must be unique"
                        .into(),
            });
        }
        let (what, digest) = match &f.module {
            Module::Image { reference, digest } => {
                if image_reference(reference).is_empty() {
                    return Err(RenderError::Invalid {
                        field: field("module"),
                        reason: "the image reference is empty".into(),
                    });
                }
                if let (Some(pinned), Some(d)) = (reference_digest(reference), digest)
                    && pinned != d
                {
                    return Err(RenderError::Invalid {
                        field: field("module"),
                        reason: format!("the reference pins sha256:{pinned} but the digest given is {d}"),
                    });
                }
                ("digest", digest)
            }
            Module::File { path, sha256 } => {
                if path.is_empty() {
                    return Err(RenderError::Invalid {
                        field: field("module"),
                        reason: "the file path is empty".into(),
                    });
                }
                ("sha256", sha256)
            }
            Module::Http { url, sha256 } => {
                url_endpoint(url).map_err(|reason| RenderError::Invalid { field: field("module"), reason })?;
                ("sha256", sha256)
            }
        };
        if let Some(d) = digest
            && !is_sha256(d)
        {
            return Err(RenderError::Invalid {
                field: field(what),
                reason: format!("{d:?} is not a sha256 digest (64 lower-case hex digits, no `sha256:` prefix)"),
            });
        }
    }
    Ok(())
}

pub(crate) fn is_sha256(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// An image reference without the `oci://` scheme (meshwork's spelling) that some meshes add.
pub(crate) fn image_reference(reference: &str) -> &str {
    reference.strip_prefix("oci://").unwrap_or(reference)
}

/// The digest an image reference pins with `@sha256:`.
fn reference_digest(reference: &str) -> Option<&str> {
    reference.rsplit_once("@sha256:").map(|(_, d)| d)
}

/// The filter's configuration as the bytes `proxy_on_configure` receives, as meshwork sends it:
/// a string as it is, anything else as JSON; none for null.
pub(crate) fn configuration_text(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// The configuration as a JSON value, for meshes whose field is JSON (Istio's Struct, Envoy
/// Gateway's `config`): a string holding JSON is that JSON; plain text is `Err` with the text.
pub(crate) fn configuration_json(value: &Value) -> Result<Option<Value>, String> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => serde_json::from_str::<Value>(s).map(Some).map_err(|_| s.clone()),
        other => Ok(Some(other.clone())),
    }
}

/// Filters that share a VM (a non-empty `vm_id` used more than once): meshes that give each
/// plugin its own VM lose the sharing, which the notes say.
pub(crate) fn shared_vms(filters: &[FilterSpec]) -> Vec<(String, Vec<String>)> {
    let mut by_vm: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for f in filters.iter().filter(|f| !f.vm_id.is_empty()) {
        by_vm.entry(&f.vm_id).or_default().push(f.name.clone());
    }
    by_vm.into_iter().filter(|(_, names)| names.len() > 1).map(|(vm, names)| (vm.to_owned(), names)).collect()
}

/// A `host:port`, the host without IPv6 brackets.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct HostPort {
    pub host: String,
    pub port: u16,
}

impl HostPort {
    pub fn parse(text: &str, field: &str) -> Result<HostPort, RenderError> {
        let invalid = |reason: &str| RenderError::Invalid { field: field.into(), reason: format!("{text:?} {reason}") };
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (host, port) = rest.split_once("]:").ok_or_else(|| invalid("is not [IPv6]:port"))?;
            (host, port)
        } else {
            text.rsplit_once(':').ok_or_else(|| invalid("is not host:port"))?
        };
        if host.is_empty() || host.contains(':') && !text.starts_with('[') {
            return Err(invalid("is not host:port (write IPv6 addresses as [addr]:port)"));
        }
        let port = port.parse::<u16>().map_err(|_| invalid("has no valid port"))?;
        Ok(HostPort { host: host.to_owned(), port })
    }

    pub fn is_ip(&self) -> bool {
        self.host.parse::<std::net::IpAddr>().is_ok()
    }

    /// `host:port` again, with brackets for IPv6.
    pub fn text(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Where an http(s) module URL is served from, and whether over TLS.
pub(crate) fn url_endpoint(url: &str) -> Result<(HostPort, bool), String> {
    let (tls, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err(format!("{url:?} is not an http:// or https:// URL"));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let default_port = if tls { 443 } else { 80 };
    let hp = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(|| format!("{url:?} has an unclosed [IPv6] host"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| format!("{url:?} has an invalid port"))?,
            None => default_port,
        };
        HostPort { host: host.to_owned(), port }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => HostPort {
                host: host.to_owned(),
                port: port.parse().map_err(|_| format!("{url:?} has an invalid port"))?,
            },
            None => HostPort { host: authority.to_owned(), port: default_port },
        }
    };
    if hp.host.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    Ok((hp, tls))
}

/// A Kubernetes object name (RFC 1123 subdomain) for `text`: lower-cased, other characters
/// turned into `-`. A note says so when the name changed.
pub(crate) fn k8s_name(text: &str, what: &str, notes: &mut Vec<String>) -> Result<String, RenderError> {
    let mut name: String = text
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '-' }
        })
        .collect();
    name = name.trim_matches(|c: char| c == '-' || c == '.').to_owned();
    name.truncate(253);
    if name.is_empty() {
        return Err(RenderError::Invalid {
            field: what.into(),
            reason: format!("{text:?} has nothing usable as a Kubernetes name"),
        });
    }
    if name != text {
        notes.push(format!(
            "{what} {text:?} is named {name:?} here (Kubernetes names are lower-case letters, digits, '-' and '.')"
        ));
    }
    Ok(name)
}

/// A Kubernetes namespace (RFC 1123 label).
pub(crate) fn k8s_namespace(text: &str) -> Result<String, RenderError> {
    let ok = !text.is_empty()
        && text.len() <= 63
        && text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !text.starts_with('-')
        && !text.ends_with('-');
    if ok {
        Ok(text.to_owned())
    } else {
        Err(RenderError::Invalid {
            field: "namespace".into(),
            reason: format!("{text:?} is not a Kubernetes namespace (lower-case letters, digits and '-', at most 63)"),
        })
    }
}

/// The name of the one policy (Envoy Gateway, Kuma) that carries the whole chain.
pub(crate) fn policy_name(options: &Options, notes: &mut Vec<String>) -> Result<String, RenderError> {
    k8s_name(&format!("meshwork-{}", options.service), "the policy", notes)
}

/// Notes for what a mesh without these Envoy options does instead.
pub(crate) fn lost_options_notes(mesh: &str, filters: &[FilterSpec], reload: bool, notes: &mut Vec<String>) {
    for f in filters {
        if f.allow_on_headers_stop_iteration {
            notes.push(format!(
                "filter {}: {mesh} has no allow_on_headers_stop_iteration; a Pause on request headers also holds the body there",
                f.name
            ));
        }
        if !reload && f.fail == crate::Fail::Reload {
            notes.push(format!("filter {}: {mesh} has no FAIL_RELOAD; it fails closed instead", f.name));
        }
    }
}

#[cfg(test)]
mod tests;
