//! `meshwork run` with a `federation:` section: imported services become clusters and host
//! routes on every HTTP listener, live. Each registry change is put in force on the
//! configuration in force ([`crate::proxy::reload::Reloader::refresh_imports`]): requests in
//! flight finish on the routes they started with, and the filters' VMs carry on.
//!
//! - A request whose Host is an imported fqdn goes to the owner's endpoints over mTLS: this
//!   mesh's certificate, the federation CA, and the service's exported `sans` as the names the
//!   endpoint's certificate must carry; SNI only when the instance's metadata gives one (its
//!   reserved `SNI` key), so the services of one owner share one TLS configuration. GRPC and
//!   HTTP2 instances are spoken as HTTP/2.
//! - A service no longer imported (withdrawn, or its owner refused this mesh or stayed
//!   unreachable too long) answers 503 saying so.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::consumer::ConsumerSpec;
use super::imports::{Imports, Snapshot};
use super::{Event, Observer};
use crate::config::{ClusterConfig, EndpointConfig, ListenerKind, ProxyConfig};
use crate::proxy::reload::Reloader;
use crate::route_spec::{PathMatch, RouteConfig, RouteTarget};

fn cluster_name(owner: &str, name: &str) -> String {
    format!("federation/{owner}/{name}")
}

/// The names an endpoint's certificate may carry, without the `URI:` / `DNS:` type prefixes
/// some write them with (`URI:spiffe://…`, as OpenSSL prints SANs).
fn sans(exported: &[String]) -> Vec<String> {
    exported
        .iter()
        .map(|s| {
            let lower = s.get(..4).map(str::to_ascii_uppercase);
            match lower.as_deref() {
                Some("URI:" | "DNS:") => s[4..].to_owned(),
                _ => s.clone(),
            }
        })
        .collect()
}

/// Adds the registry's services to `config`: a cluster each, and host routes on every HTTP
/// listener ahead of the configured ones.
pub fn merge(config: &mut ProxyConfig, spec: &ConsumerSpec, snapshot: &Snapshot) {
    let mut routes = Vec::new();
    for (owner, import) in &snapshot.services {
        let cluster = cluster_name(owner, &import.name);
        let endpoints = import
            .endpoints
            .iter()
            .map(|(address, port)| match address.parse() {
                Ok(ip) => EndpointConfig::Ip(std::net::SocketAddr::new(ip, *port)),
                Err(_) => EndpointConfig::Name { host: address.to_ascii_lowercase(), port: *port },
            })
            .collect();
        let alpn = if import.protocol.http2() { "h2" } else { "http/1.1" };
        config.clusters.push(ClusterConfig {
            name: cluster.clone(),
            endpoints,
            connect_timeout: Duration::from_secs(5),
            max_retries: 3,
            retry_budget: None,
            http2: import.protocol.http2(),
            tls: Some(spec.tls.client_spec(import.sni.as_deref(), sans(&import.sans), alpn)),
            dns_refresh: Duration::from_secs(5),
        });
        let mut route = RouteConfig::new(cluster.clone(), PathMatch::default(), RouteTarget::Cluster(cluster));
        route.matcher.hosts = vec![import.fqdn.clone()];
        routes.push(route);
    }
    for (fqdn, gone) in &snapshot.withdrawn {
        let body = format!("federated service {} ({fqdn}) {}\n", gone.name, gone.why);
        let target = RouteTarget::Direct { status: 503, body: Bytes::from(body) };
        let mut route = RouteConfig::new(
            format!("federation/{}/{}/withdrawn", gone.owner, gone.name),
            PathMatch::default(),
            target,
        );
        route.matcher.hosts = vec![fqdn.clone()];
        routes.push(route);
    }
    for listener in &mut config.listeners {
        if let ListenerKind::Http(http) = &mut listener.kind {
            http.routes.splice(0..0, routes.iter().cloned());
        }
    }
}

/// Follows every owner of `spec` on a thread of its own, and reloads the proxy when the
/// registry changes (changes arriving together make one reload). Per owner, the admin
/// listener's stats show `meshwork_federation_connected`, `_services`, `_updates_total` and
/// `_nacks_total`.
pub fn start(
    spec: ConsumerSpec,
    imports: Arc<Imports>,
    reloader: Arc<Reloader>,
    services: Arc<meshwork_wasm_host::Services>,
) -> anyhow::Result<()> {
    let registry = imports.clone();
    let observer: Observer = Arc::new(move |event: &Event| {
        let metric = |kind: &str, owner: &str| format!("meshwork_federation_{kind};.;owner=.={owner}");
        let m = &services.metrics;
        match event {
            Event::Connected { owner } => m.gauge(&metric("connected", owner)).record(1),
            Event::Disconnected { owner, .. } | Event::Stopped { owner, .. } => {
                m.gauge(&metric("connected", owner)).record(0)
            }
            Event::Nacked { consumer: owner, .. } => {
                m.counter(&metric("nacks_total", owner)).increment(1).unwrap_or(())
            }
            Event::Upserted { owner, .. } | Event::Deleted { owner, .. } => {
                m.counter(&metric("updates_total", owner)).increment(1).unwrap_or(())
            }
            _ => {}
        }
        if let Event::Synced { owner, .. }
        | Event::Upserted { owner, .. }
        | Event::Deleted { owner, .. }
        | Event::Expired { owner, .. } = event
        {
            m.gauge(&metric("services", owner)).record(registry.count(owner) as u64);
        }
        match event {
            Event::Stopped { .. } | Event::Nacked { .. } => tracing::error!("federation: {event}"),
            Event::Disconnected { .. } | Event::Expired { .. } => tracing::warn!("federation: {event}"),
            // One line per imported service is for debugging; the sync line sums them up.
            Event::Upserted { .. } => tracing::debug!("federation: {event}"),
            _ => tracing::info!("federation: {event}"),
        }
    });
    std::thread::Builder::new().name("federation".into()).spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(r) => r,
            Err(e) => return tracing::error!("federation runtime failed: {e}"),
        };
        runtime.block_on(async move {
            let spec = Arc::new(spec);
            for owner in &spec.owners {
                tokio::spawn(super::consumer::follow(owner.clone(), spec.clone(), imports.clone(), observer.clone()));
            }
            let mut versions = imports.watch();
            while versions.changed().await.is_ok() {
                // Let a burst (the catalog arriving) settle into one reload.
                tokio::time::sleep(Duration::from_millis(20)).await;
                versions.borrow_and_update();
                let reloader = reloader.clone();
                match tokio::task::spawn_blocking(move || reloader.refresh_imports()).await {
                    Ok(Ok(report)) => tracing::info!("federation: {report}"),
                    Ok(Err(e)) => tracing::error!("federation: the imported services did not load: {e:#}"),
                    Err(e) => tracing::error!("federation: reload failed: {e}"),
                }
            }
        });
    })?;
    Ok(())
}
