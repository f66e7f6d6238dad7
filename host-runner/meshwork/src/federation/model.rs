//! The FederatedService resource: how an owner writes the services it exports (YAML), and the
//! checks a consumer makes before it routes to one (a consumer NACKs what fails them, with the
//! reason, and keeps serving what it had).

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

use meshwork_grpc_api::hamlet::types::FederatedService;
use meshwork_grpc_api::hamlet::types::federated_service::{Endpoint, Instance};
use serde::{Deserialize, Serialize};

/// An exported service as the owner's configuration file writes it.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub fqdn: String,
    pub endpoints: Vec<EndpointSpec>,
    pub sans: Vec<String>,
    /// One HTTP instance on every endpoint when left out.
    #[serde(default = "http_instance")]
    pub instances: Vec<InstanceSpec>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    pub address: String,
    pub port: u32,
    #[serde(default)]
    pub labels: Vec<String>,
    #[serde(default)]
    pub description: String,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InstanceSpec {
    pub id: String,
    pub protocol: String,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub endpoint_selector: Vec<String>,
    #[serde(default)]
    pub description: String,
}

fn http_instance() -> Vec<InstanceSpec> {
    vec![InstanceSpec {
        id: "http".into(),
        protocol: "HTTP".into(),
        metadata: BTreeMap::new(),
        endpoint_selector: Vec::new(),
        description: String::new(),
    }]
}

impl ServiceSpec {
    pub fn to_proto(&self) -> FederatedService {
        FederatedService {
            name: self.name.clone(),
            description: self.description.clone(),
            tags: self.tags.clone(),
            labels: self.labels.clone().into_iter().collect(),
            fqdn: self.fqdn.clone(),
            endpoints: self
                .endpoints
                .iter()
                .map(|e| Endpoint {
                    address: e.address.clone(),
                    port: e.port,
                    labels: e.labels.clone(),
                    description: e.description.clone(),
                })
                .collect(),
            sans: self.sans.clone(),
            instances: self
                .instances
                .iter()
                .map(|i| Instance {
                    id: i.id.clone(),
                    protocol: i.protocol.clone(),
                    metadata: i.metadata.clone().into_iter().collect(),
                    endpoint_selector: i.endpoint_selector.clone(),
                    description: i.description.clone(),
                })
                .collect(),
        }
    }
}

/// The protocols Hamlet names for an instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Http,
    Https,
    Grpc,
    Http2,
    Mongo,
    Tcp,
    Tls,
    Mtls,
}

const PROTOCOLS: [(&str, Protocol); 8] = [
    ("HTTP", Protocol::Http),
    ("HTTPS", Protocol::Https),
    ("GRPC", Protocol::Grpc),
    ("HTTP2", Protocol::Http2),
    ("MONGO", Protocol::Mongo),
    ("TCP", Protocol::Tcp),
    ("TLS", Protocol::Tls),
    ("MTLS", Protocol::Mtls),
];

impl Protocol {
    fn parse(text: &str) -> Option<Protocol> {
        PROTOCOLS.iter().find(|(name, _)| name.eq_ignore_ascii_case(text)).map(|(_, p)| *p)
    }

    /// What meshwork's HTTP router can carry (over the mTLS it always uses between meshes).
    pub fn routable(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Https | Protocol::Grpc | Protocol::Http2)
    }

    /// Spoken as HTTP/2 to the owner's endpoints.
    pub fn http2(self) -> bool {
        matches!(self, Protocol::Grpc | Protocol::Http2)
    }
}

/// A FederatedService a consumer accepted: what it routes with.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Import {
    pub name: String,
    /// Lower case.
    pub fqdn: String,
    /// The routed instance's endpoints (`address`, `port`).
    pub endpoints: Vec<(String, u16)>,
    pub sans: Vec<String>,
    pub instance: String,
    pub protocol: Protocol,
    /// The SNI to send: the instance's reserved `SNI` metadata key, when given.
    pub sni: Option<String>,
}

/// A DNS name as RFC 1123 allows it: dot-separated labels of letters, digits and hyphens.
fn dns_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Checks what the Hamlet specification requires of a FederatedService. The reason names the
/// field at fault.
pub fn check(service: &FederatedService) -> Result<(), String> {
    let name = &service.name;
    if name.is_empty() {
        return Err("name is empty (it is the resource's id)".into());
    }
    if name.len() > 253 || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("name {name:?} is not a usable id"));
    }
    if service.fqdn.is_empty() {
        return Err(format!("{name}: fqdn is missing"));
    }
    if !dns_name(&service.fqdn) {
        return Err(format!("{name}: fqdn {:?} is not a DNS name", service.fqdn));
    }
    if service.endpoints.is_empty() {
        return Err(format!("{name}: no endpoints"));
    }
    for (i, e) in service.endpoints.iter().enumerate() {
        if e.address.parse::<IpAddr>().is_err() && !dns_name(&e.address) {
            return Err(format!(
                "{name}: endpoints[{i}].address {:?} is neither an IP address nor a DNS name",
                e.address
            ));
        }
        if e.port == 0 || e.port > u32::from(u16::MAX) {
            return Err(format!("{name}: endpoints[{i}].port {} is not a port", e.port));
        }
    }
    if service.sans.is_empty() || service.sans.iter().any(String::is_empty) {
        return Err(format!("{name}: sans must list the names the endpoints' certificates carry"));
    }
    if service.instances.is_empty() {
        return Err(format!("{name}: no instances"));
    }
    let mut ids = HashSet::new();
    for (i, instance) in service.instances.iter().enumerate() {
        if instance.id.is_empty() {
            return Err(format!("{name}: instances[{i}].id is empty"));
        }
        if !ids.insert(instance.id.as_str()) {
            return Err(format!("{name}: duplicate instance id {:?}", instance.id));
        }
        if Protocol::parse(&instance.protocol).is_none() {
            return Err(format!(
                "{name}: instances[{i}] has unknown protocol {:?} (Hamlet allows HTTP, HTTPS, GRPC, HTTP2, MONGO, TCP, TLS, MTLS)",
                instance.protocol
            ));
        }
    }
    Ok(())
}

/// Checks `service` and picks what meshwork routes to: the first instance of an HTTP-family
/// protocol, on the endpoints its selector names (all endpoints when it names none that exist,
/// as the specification says).
pub fn import(service: &FederatedService) -> Result<Import, String> {
    check(service)?;
    let instance = service
        .instances
        .iter()
        .find(|i| Protocol::parse(&i.protocol).is_some_and(Protocol::routable))
        .ok_or_else(|| {
            let offered: Vec<&str> = service.instances.iter().map(|i| i.protocol.as_str()).collect();
            format!(
                "{}: no instance meshwork can route (it routes HTTP, HTTPS, HTTP2 and GRPC; this service offers {})",
                service.name,
                offered.join(", ")
            )
        })?;
    let selected: Vec<&Endpoint> =
        service.endpoints.iter().filter(|e| e.labels.iter().any(|l| instance.endpoint_selector.contains(l))).collect();
    let endpoints = if selected.is_empty() { service.endpoints.iter().collect() } else { selected };
    Ok(Import {
        name: service.name.clone(),
        fqdn: service.fqdn.trim_end_matches('.').to_ascii_lowercase(),
        endpoints: endpoints.iter().map(|e| (e.address.clone(), e.port as u16)).collect(),
        sans: service.sans.clone(),
        instance: instance.id.clone(),
        protocol: Protocol::parse(&instance.protocol).unwrap_or(Protocol::Http),
        sni: instance.metadata.iter().find(|(k, _)| k.eq_ignore_ascii_case("sni")).map(|(_, v)| v.clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> FederatedService {
        ServiceSpec {
            name: "echo".into(),
            description: String::new(),
            tags: vec![],
            labels: BTreeMap::new(),
            fqdn: "Echo.Mesh-A.example".into(),
            endpoints: vec![
                EndpointSpec {
                    address: "10.0.0.1".into(),
                    port: 8443,
                    labels: vec!["ingress".into()],
                    description: "".into(),
                },
                EndpointSpec { address: "gw.mesh-a.example".into(), port: 443, labels: vec![], description: "".into() },
            ],
            sans: vec!["mesh-a".into()],
            instances: vec![
                InstanceSpec {
                    id: "db".into(),
                    protocol: "MONGO".into(),
                    metadata: BTreeMap::new(),
                    endpoint_selector: vec![],
                    description: "".into(),
                },
                InstanceSpec {
                    id: "web".into(),
                    protocol: "http".into(),
                    metadata: BTreeMap::new(),
                    endpoint_selector: vec!["ingress".into()],
                    description: "".into(),
                },
            ],
        }
        .to_proto()
    }

    #[test]
    fn a_consumer_routes_the_first_http_instance_on_its_selected_endpoints() {
        let i = import(&good()).unwrap();
        assert_eq!(i.fqdn, "echo.mesh-a.example");
        assert_eq!(i.instance, "web");
        assert_eq!(i.protocol, Protocol::Http);
        assert_eq!(i.endpoints, [("10.0.0.1".to_string(), 8443)]);
        let mut none_selected = good();
        none_selected.instances[1].endpoint_selector = vec!["nowhere".into()];
        assert_eq!(import(&none_selected).unwrap().endpoints.len(), 2, "no match selects every endpoint");
    }

    #[test]
    fn every_required_field_is_checked_and_named() {
        type Break = fn(&mut FederatedService);
        let cases: Vec<(Break, &str)> = vec![
            (|s| s.name.clear(), "name is empty"),
            (|s| s.fqdn.clear(), "fqdn is missing"),
            (|s| s.fqdn = "bad_name..x".into(), "not a DNS name"),
            (|s| s.endpoints.clear(), "no endpoints"),
            (|s| s.endpoints[0].port = 0, "is not a port"),
            (|s| s.endpoints[0].port = 70000, "is not a port"),
            (|s| s.endpoints[1].address = "a b".into(), "neither an IP address"),
            (|s| s.sans.clear(), "sans must list"),
            (|s| s.instances.clear(), "no instances"),
            (|s| s.instances[1].id = "db".into(), "duplicate instance id"),
            (|s| s.instances[1].protocol = "QUIC".into(), "unknown protocol \"QUIC\""),
            (|s| s.instances.truncate(1), "no instance meshwork can route"),
        ];
        for (break_it, expected) in cases {
            let mut s = good();
            break_it(&mut s);
            let e = import(&s).unwrap_err();
            assert!(e.contains(expected), "{e:?} should say {expected:?}");
        }
    }
}
