//! `meshwork deploy --apply`: the generated documents applied to a cluster the way `kubectl
//! apply --server-side` does — discovery of each kind (a missing CRD says which mesh is not
//! installed), server-side apply with a field manager, optional server dry run, waiting for the
//! kinds whose API reports acceptance, and deletion.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{self, ApiResource, Scope};
use serde_json::Value;

/// The field manager meshwork's changes are recorded under.
pub const FIELD_MANAGER: &str = "meshwork";

#[derive(Clone, Debug, Default)]
pub struct ApplyOptions {
    /// `--dry-run=server`: the API server validates and admits, nothing is stored.
    pub dry_run: bool,
    /// How long to wait for kinds that report acceptance; None: do not wait.
    pub wait: Option<Duration>,
    /// Remove the objects instead.
    pub delete: bool,
}

/// What happened to one document.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    /// `WasmPlugin shop/retry`.
    pub object: String,
    pub action: String,
}

/// The mesh whose CRDs serve an API group, for the message when they are missing.
fn mesh_of(group: &str) -> &'static str {
    match group {
        "extensions.istio.io" | "networking.istio.io" => "Istio",
        "gateway.envoyproxy.io" => "Envoy Gateway",
        "consul.hashicorp.com" => "Consul",
        "kuma.io" => "Kuma",
        "gateway.networking.k8s.io" => "Gateway API",
        _ => "the mesh that defines it",
    }
}

fn gvk_of(doc: &Value) -> anyhow::Result<GroupVersionKind> {
    let api_version = doc["apiVersion"].as_str().context("a document without apiVersion cannot be applied")?;
    let kind = doc["kind"].as_str().context("a document without kind cannot be applied")?;
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    Ok(GroupVersionKind::gvk(group, version, kind))
}

/// The resource serving `gvk`, or an error naming the missing kind and mesh.
async fn resource(client: &kube::Client, gvk: &GroupVersionKind) -> anyhow::Result<(ApiResource, Scope)> {
    let missing = || {
        let plural = format!("{}s", gvk.kind.to_ascii_lowercase());
        anyhow::anyhow!(
            "the server doesn't have a resource type {plural} ({}/{} {}): is {} installed in this cluster?",
            gvk.group,
            gvk.version,
            gvk.kind,
            mesh_of(&gvk.group)
        )
    };
    match discovery::pinned_kind(client, gvk).await {
        Ok((ar, caps)) => Ok((ar, caps.scope)),
        Err(kube::Error::Api(status)) if status.code == 404 => Err(missing()),
        Err(kube::Error::Discovery(_)) => Err(missing()),
        Err(e) => Err(anyhow::Error::new(e).context(format!("discovering {}/{} {}", gvk.group, gvk.version, gvk.kind))),
    }
}

/// Applies (or deletes) `docs` in order; stops at the first failure.
pub async fn apply(client: &kube::Client, docs: &[Value], options: &ApplyOptions) -> anyhow::Result<Vec<Outcome>> {
    let mut outcomes = Vec::new();
    for doc in docs {
        let gvk = gvk_of(doc)?;
        let name = doc["metadata"]["name"].as_str().context("a document without metadata.name")?.to_owned();
        let (ar, scope) = resource(client, &gvk).await?;
        let (api, object): (Api<DynamicObject>, String) = match scope {
            Scope::Namespaced => {
                let ns = doc["metadata"]["namespace"].as_str().unwrap_or(client.default_namespace()).to_owned();
                (Api::namespaced_with(client.clone(), &ns, &ar), format!("{} {ns}/{name}", gvk.kind))
            }
            Scope::Cluster => (Api::all_with(client.clone(), &ar), format!("{} {name}", gvk.kind)),
        };
        let dry = if options.dry_run { " (server dry run)" } else { "" };
        if options.delete {
            let params = DeleteParams { dry_run: options.dry_run, ..DeleteParams::default() };
            match api.delete(&name, &params).await {
                Ok(_) => outcomes.push(Outcome { object, action: format!("deleted{dry}") }),
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    outcomes.push(Outcome { object, action: "not found".into() })
                }
                Err(e) => return Err(anyhow::Error::new(e).context(format!("deleting {object}"))),
            }
            continue;
        }
        let mut params = PatchParams::apply(FIELD_MANAGER).force();
        params.dry_run = options.dry_run;
        api.patch(&name, &params, &Patch::Apply(doc)).await.with_context(|| format!("applying {object}"))?;
        let mut action = format!("applied{dry}");
        if let (Some(wait), false) = (options.wait, options.dry_run) {
            action = accepted(&api, &name, &object, wait).await?;
        }
        outcomes.push(Outcome { object, action });
    }
    Ok(outcomes)
}

/// Waits until the object's status says it was accepted (a condition `Accepted`, `Synced`,
/// `Ready` or `Programmed` that is True) and fails when one is False. Kinds whose API
/// reports no status (Istio's WasmPlugin, Kuma's policies) are not waited for.
async fn accepted(api: &Api<DynamicObject>, name: &str, object: &str, wait: Duration) -> anyhow::Result<String> {
    let deadline = Instant::now() + wait;
    loop {
        let current = api.get(name).await.with_context(|| format!("reading {object}"))?;
        let status = current.data.get("status").cloned().unwrap_or(Value::Null);
        let conditions: Vec<&Value> = status["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(
                status["ancestors"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|a| a["conditions"].as_array().into_iter().flatten()),
            )
            .filter(|c| matches!(c["type"].as_str(), Some("Accepted" | "Synced" | "Ready" | "Programmed")))
            .collect();
        if let Some(bad) = conditions.iter().find(|c| c["status"] == "False") {
            bail!(
                "{object} was not accepted: {} {}: {}",
                bad["type"].as_str().unwrap_or_default(),
                bad["reason"].as_str().unwrap_or_default(),
                bad["message"].as_str().unwrap_or_default()
            );
        }
        if !conditions.is_empty() && conditions.iter().all(|c| c["status"] == "True") {
            return Ok("applied and accepted".into());
        }
        if Instant::now() > deadline {
            return Ok(if status.is_null() {
                "applied (this kind reports no status to wait for)".into()
            } else {
                format!("applied; not accepted after {} s", wait.as_secs())
            });
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use std::pin::pin;

    use http::{Request, Response, StatusCode};
    use kube::client::Body;
    use serde_json::json;

    use super::*;

    fn wasm_plugin() -> Value {
        json!({
            "apiVersion": "extensions.istio.io/v1alpha1",
            "kind": "WasmPlugin",
            "metadata": {"name": "retry", "namespace": "shop"},
            "spec": {"url": "oci://registry.example/meshwork/retry:0.1.0", "pluginConfig": {"max_retries": 3}},
        })
    }

    fn resources(kind: &str, plural: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": "extensions.istio.io/v1alpha1",
            "resources": [{"name": plural, "singularName": "", "namespaced": true, "kind": kind,
                "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]}],
        }))
        .unwrap()
    }

    async fn body(request: Request<Body>) -> Value {
        serde_json::from_slice(&request.into_body().collect_bytes().await.unwrap()).unwrap()
    }

    #[tokio::test]
    async fn applies_server_side_with_the_field_manager_and_dry_run() {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let server = tokio::spawn(async move {
            let mut handle = pin!(handle);
            let (request, send) = handle.next_request().await.expect("discovery");
            assert_eq!(request.method(), http::Method::GET);
            assert_eq!(request.uri().path(), "/apis/extensions.istio.io/v1alpha1");
            send.send_response(Response::new(Body::from(resources("WasmPlugin", "wasmplugins"))));
            let (request, send) = handle.next_request().await.expect("apply");
            assert_eq!(request.method(), http::Method::PATCH);
            assert_eq!(request.uri().path(), "/apis/extensions.istio.io/v1alpha1/namespaces/shop/wasmplugins/retry");
            let query = request.uri().query().unwrap_or_default().to_owned();
            for part in ["fieldManager=meshwork", "force=true", "dryRun=All"] {
                assert!(query.contains(part), "{query}");
            }
            assert_eq!(request.headers()[http::header::CONTENT_TYPE], "application/apply-patch+yaml");
            let sent = body(request).await;
            assert_eq!(sent, wasm_plugin());
            send.send_response(Response::new(Body::from(serde_json::to_vec(&sent).unwrap())));
        });
        let client = kube::Client::new(service, "default");
        let options = ApplyOptions { dry_run: true, ..ApplyOptions::default() };
        let outcomes = apply(&client, &[wasm_plugin()], &options).await.unwrap();
        assert_eq!(
            outcomes,
            [Outcome { object: "WasmPlugin shop/retry".into(), action: "applied (server dry run)".into() }]
        );
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_missing_crd_names_the_mesh() {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let server = tokio::spawn(async move {
            let mut handle = pin!(handle);
            let (_, send) = handle.next_request().await.expect("discovery");
            let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "message": "the server could not find the requested resource", "reason": "NotFound", "code": 404});
            let mut response = Response::new(Body::from(serde_json::to_vec(&status).unwrap()));
            *response.status_mut() = StatusCode::NOT_FOUND;
            send.send_response(response);
        });
        let client = kube::Client::new(service, "default");
        let err = apply(&client, &[wasm_plugin()], &ApplyOptions::default()).await.unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("doesn't have a resource type wasmplugins") && text.contains("Istio"), "{text}");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn deletes_and_waits_for_acceptance() {
        let policy = json!({
            "apiVersion": "gateway.envoyproxy.io/v1alpha1",
            "kind": "EnvoyExtensionPolicy",
            "metadata": {"name": "edge", "namespace": "web"},
            "spec": {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "app"}]},
        });
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let served = policy.clone();
        let server = tokio::spawn(async move {
            let mut handle = pin!(handle);
            let list = serde_json::to_vec(&json!({
                "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "gateway.envoyproxy.io/v1alpha1",
                "resources": [{"name": "envoyextensionpolicies", "singularName": "", "namespaced": true,
                    "kind": "EnvoyExtensionPolicy", "verbs": ["get", "patch", "delete"]}],
            }))
            .unwrap();
            let path = "/apis/gateway.envoyproxy.io/v1alpha1/namespaces/web/envoyextensionpolicies/edge";
            // Apply, then a read that shows acceptance.
            let (_, send) = handle.next_request().await.expect("discovery");
            send.send_response(Response::new(Body::from(list.clone())));
            let (request, send) = handle.next_request().await.expect("apply");
            assert_eq!((request.method().clone(), request.uri().path()), (http::Method::PATCH, path));
            send.send_response(Response::new(Body::from(serde_json::to_vec(&served).unwrap())));
            let (request, send) = handle.next_request().await.expect("status");
            assert_eq!((request.method().clone(), request.uri().path()), (http::Method::GET, path));
            let mut accepted = served.clone();
            accepted["status"] = json!({"ancestors": [{"conditions": [{"type": "Accepted", "status": "True"}]}]});
            send.send_response(Response::new(Body::from(serde_json::to_vec(&accepted).unwrap())));
            // Delete.
            let (_, send) = handle.next_request().await.expect("discovery");
            send.send_response(Response::new(Body::from(list)));
            let (request, send) = handle.next_request().await.expect("delete");
            assert_eq!((request.method().clone(), request.uri().path()), (http::Method::DELETE, path));
            send.send_response(Response::new(Body::from(serde_json::to_vec(&served).unwrap())));
        });
        let client = kube::Client::new(service, "default");
        let waiting = ApplyOptions { wait: Some(Duration::from_secs(5)), ..ApplyOptions::default() };
        let outcomes = apply(&client, std::slice::from_ref(&policy), &waiting).await.unwrap();
        assert_eq!(outcomes[0].action, "applied and accepted");
        let deleting = ApplyOptions { delete: true, ..ApplyOptions::default() };
        let outcomes = apply(&client, &[policy], &deleting).await.unwrap();
        assert_eq!(outcomes[0].action, "deleted");
        server.await.unwrap();
    }
}
