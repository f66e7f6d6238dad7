//! Envoy: the intent as an Envoy v3 static bootstrap — what a user would hand to Envoy. The
//! `envoy-config` target runs it with `meshwork run --envoy-config`; the `envoy` target runs a
//! real `envoy -c` when one is on PATH. Envoy takes the first route that matches, so routes are
//! written in Gateway API's precedence order (as Gateway API implementations on Envoy do).

use serde_json::{Value, json};

use super::meshwork::{meshwork_artifacts, meshwork_implementation};
use super::{Adapter, Env, Rendered, Unsupported, file_artifact, which};
use crate::intent::{Action, HeaderModifier, Intent, PathMatch, PathRewrite, Route};
use crate::outcome::{Artifact, Implementation};

/// Which program serves the bootstrap.
pub enum Runner {
    /// `meshwork run --envoy-config`.
    Meshwork,
    /// `envoy -c`, found on PATH.
    Envoy,
}

pub struct Envoy {
    pub runner: Runner,
}

impl Adapter for Envoy {
    fn name(&self) -> &'static str {
        match self.runner {
            Runner::Meshwork => "envoy-config",
            Runner::Envoy => "envoy",
        }
    }

    fn unavailable(&self) -> Option<String> {
        match self.runner {
            Runner::Meshwork => None,
            Runner::Envoy => which("envoy").is_none().then(|| "no envoy binary on PATH".to_owned()),
        }
    }

    fn implementation(&self) -> Implementation {
        match self.runner {
            Runner::Meshwork => meshwork_implementation(&std::env::current_exe().unwrap_or_default()),
            Runner::Envoy => Implementation {
                project: "envoy".into(),
                version: which("envoy")
                    .and_then(|e| std::process::Command::new(e).arg("--version").output().ok())
                    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                    .unwrap_or_else(|| "unknown".into()),
                organization: "envoyproxy".into(),
                url: "https://www.envoyproxy.io".into(),
            },
        }
    }

    fn artifacts(&self, env: &Env) -> Vec<Artifact> {
        match self.runner {
            Runner::Meshwork => meshwork_artifacts(env),
            Runner::Envoy => which("envoy").and_then(|e| file_artifact("envoy", &e)).into_iter().collect(),
        }
    }

    fn render(&self, intent: &Intent, env: &Env) -> Result<Rendered, Unsupported> {
        if !intent.clusters.is_empty() {
            return Err(Unsupported("cluster retry policies are not written into Envoy bootstraps yet".into()));
        }
        let text = serde_json::to_string_pretty(&bootstrap(intent, env)).map_err(|e| Unsupported(e.to_string()))?;
        let file = env.dir.join("envoy.json");
        std::fs::write(&file, &text).map_err(|e| Unsupported(format!("cannot write {}: {e}", file.display())))?;
        let command = match self.runner {
            Runner::Meshwork => {
                vec![
                    env.meshwork.display().to_string(),
                    "run".into(),
                    "--envoy-config".into(),
                    file.display().to_string(),
                ]
            }
            Runner::Envoy => vec![
                which("envoy").map(|e| e.display().to_string()).unwrap_or_else(|| "envoy".into()),
                "-c".into(),
                file.display().to_string(),
                "--concurrency".into(),
                "1".into(),
            ],
        };
        Ok(Rendered {
            configuration: text,
            config_file: file,
            command,
            metrics_url: Some(format!("http://{}/stats/prometheus", env.admin)),
        })
    }
}

fn socket(addr: std::net::SocketAddr) -> Value {
    json!({"socket_address": {"address": addr.ip().to_string(), "port_value": addr.port()}})
}

/// The whole bootstrap.
pub fn bootstrap(intent: &Intent, env: &Env) -> Value {
    let mut routes: Vec<&Route> = intent.routes.iter().collect();
    // Stable: ties keep their order, as Gateway API asks.
    routes.sort_by_key(|r| std::cmp::Reverse(precedence(r)));
    let mut http_filters: Vec<Value> = intent
        .filters
        .iter()
        .map(|f| {
            json!({
                "name": "envoy.filters.http.wasm",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                    "config": {
                        "name": f.name,
                        "configuration": {
                            "@type": "type.googleapis.com/google.protobuf.StringValue",
                            "value": f.configuration.to_string(),
                        },
                        "vm_config": {
                            "vm_id": f.name,
                            "runtime": "envoy.wasm.runtime.v8",
                            "code": {"local": {"filename": env.filters.join(format!("{}.wasm", f.name)).display().to_string()}},
                        },
                    },
                },
            })
        })
        .collect();
    http_filters.push(json!({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
    }));
    let clusters: Vec<Value> = intent
        .all_backends()
        .iter()
        .map(|name| {
            json!({
                "name": name,
                "type": "STATIC",
                "connect_timeout": "1s",
                "load_assignment": {
                    "cluster_name": name,
                    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket(env.backends[name])}}]}],
                },
            })
        })
        .collect();
    json!({
        "admin": {"address": socket(env.admin)},
        "static_resources": {
            "listeners": [{
                "name": "main",
                "address": socket(env.listen),
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "conformance",
                        "route_config": {
                            "name": "conformance",
                            "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes.iter().map(|r| route(r)).collect::<Vec<_>>()}],
                        },
                        "http_filters": http_filters,
                    },
                }]}],
            }],
            "clusters": clusters,
        },
    })
}

/// Gateway API's order, as [`crate::intent::Precedence`] describes it.
fn precedence(r: &Route) -> impl Ord {
    let path = match &r.path {
        PathMatch::Exact(p) => (2, p.len()),
        PathMatch::Prefix(p) => (1, p.len()),
        PathMatch::Regex(_) => (0, 0),
    };
    (path, !r.methods.is_empty(), r.headers.len(), r.query.len())
}

fn route(r: &Route) -> Value {
    let mut m = match &r.path {
        PathMatch::Exact(p) => json!({"path": p}),
        // "/" as a separated prefix would need a trailing-slash-free form; "/" takes all.
        PathMatch::Prefix(p) if p == "/" => json!({"prefix": "/"}),
        PathMatch::Prefix(p) => json!({"path_separated_prefix": p.trim_end_matches('/')}),
        PathMatch::Regex(p) => json!({"safe_regex": {"regex": p}}),
    };
    let mut headers: Vec<Value> =
        r.methods.iter().map(|method| json!({"name": ":method", "string_match": {"exact": method}})).collect();
    headers.extend(r.headers.iter().map(|(k, v)| json!({"name": k, "string_match": {"exact": v}})));
    if !headers.is_empty() {
        m["headers"] = json!(headers);
    }
    if !r.query.is_empty() {
        m["query_parameters"] = r.query.iter().map(|(k, v)| json!({"name": k, "string_match": {"exact": v}})).collect();
    }
    let mut v = json!({"name": r.name, "match": m});
    match &r.action {
        Action::Backends(b) => {
            let mut action = if b.len() == 1 {
                json!({"cluster": b[0].0})
            } else {
                json!({"weighted_clusters": {"clusters": b.iter().map(|(c, w)| json!({"name": c, "weight": w})).collect::<Vec<_>>()}})
            };
            if let Some(t) = r.timeout {
                action["timeout"] = json!(format!("{}s", t.as_secs_f64()));
            }
            match &r.rewrite {
                Some(PathRewrite::Prefix(p)) => action["prefix_rewrite"] = json!(p),
                Some(PathRewrite::Full(p)) => {
                    action["regex_rewrite"] = json!({"pattern": {"regex": "^.*$"}, "substitution": p});
                }
                None => {}
            }
            v["route"] = action;
        }
        Action::ClusterHeader(h) => v["route"] = json!({"cluster_header": h}),
        Action::Respond { status, body } => {
            v["direct_response"] = json!({"status": status, "body": {"inline_string": body}})
        }
        Action::Redirect(d) => {
            let code = match d.status.unwrap_or(302) {
                301 => "MOVED_PERMANENTLY",
                303 => "SEE_OTHER",
                307 => "TEMPORARY_REDIRECT",
                308 => "PERMANENT_REDIRECT",
                _ => "FOUND",
            };
            let mut redirect = json!({"response_code": code});
            if let Some(s) = &d.scheme {
                redirect["scheme_redirect"] = json!(s);
            }
            if let Some(h) = &d.hostname {
                redirect["host_redirect"] = json!(h);
            }
            if let Some(p) = d.port {
                redirect["port_redirect"] = json!(p);
            }
            match &d.path {
                Some(PathRewrite::Full(p)) => redirect["path_redirect"] = json!(p),
                Some(PathRewrite::Prefix(p)) => redirect["prefix_rewrite"] = json!(p),
                None => {}
            }
            v["redirect"] = redirect;
        }
    }
    headers_to(&mut v, "request", &r.request_headers);
    headers_to(&mut v, "response", &r.response_headers);
    v
}

fn headers_to(v: &mut Value, which: &str, m: &HeaderModifier) {
    let option =
        |k: &String, val: &String, action: &str| json!({"header": {"key": k, "value": val}, "append_action": action});
    let add: Vec<Value> = m
        .set
        .iter()
        .map(|(k, val)| option(k, val, "OVERWRITE_IF_EXISTS_OR_ADD"))
        .chain(m.add.iter().map(|(k, val)| option(k, val, "APPEND_IF_EXISTS_OR_ADD")))
        .collect();
    if !add.is_empty() {
        v[format!("{which}_headers_to_add")] = json!(add);
    }
    if !m.remove.is_empty() {
        v[format!("{which}_headers_to_remove")] = json!(m.remove);
    }
}
