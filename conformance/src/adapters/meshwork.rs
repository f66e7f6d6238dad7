//! meshwork itself: the intent as meshwork's YAML (`meshwork run --config`), pattern filters
//! as proxy-wasm modules in front of the routes.

use serde_json::{Value, json};

use super::{Adapter, Env, Rendered, Unsupported, file_artifact};
use crate::intent::{Action, HeaderModifier, Intent, PathMatch, PathRewrite, Route};
use crate::outcome::{Artifact, Implementation};

pub struct Meshwork {
    pub binary: std::path::PathBuf,
}

impl Adapter for Meshwork {
    fn name(&self) -> &'static str {
        "meshwork"
    }

    fn unavailable(&self) -> Option<String> {
        (!self.binary.is_file()).then(|| format!("{} does not exist", self.binary.display()))
    }

    fn implementation(&self) -> Implementation {
        meshwork_implementation(&self.binary)
    }

    fn artifacts(&self, env: &Env) -> Vec<Artifact> {
        meshwork_artifacts(env)
    }

    fn render(&self, intent: &Intent, env: &Env) -> Result<Rendered, Unsupported> {
        let clusters: Vec<Value> = intent
            .all_backends()
            .iter()
            .map(|name| {
                let mut c = json!({"name": name, "endpoints": [env.backends[name].to_string()]});
                if let Some(o) = intent.clusters.get(name) {
                    if let Some(n) = o.max_retries {
                        c["max_retries"] = json!(n);
                    }
                    if let Some(p) = o.retry_budget_percent {
                        c["retry_budget"] = json!({"percent": p});
                    }
                }
                c
            })
            .collect();
        let filters: Vec<Value> = intent
            .filters
            .iter()
            .map(|f| {
                json!({
                    "name": f.name,
                    "module": env.filters.join(format!("{}.wasm", f.name)).display().to_string(),
                    "configuration": f.configuration,
                })
            })
            .collect();
        let config = json!({
            "listen": env.listen.to_string(),
            "admin": env.admin.to_string(),
            "workers": 1,
            "clusters": clusters,
            "routes": intent.routes.iter().map(route).collect::<Vec<_>>(),
            "filters": filters,
        });
        let text = serde_json::to_string_pretty(&config).map_err(|e| Unsupported(e.to_string()))?;
        let file = env.dir.join("meshwork.json");
        std::fs::write(&file, &text).map_err(|e| Unsupported(format!("cannot write {}: {e}", file.display())))?;
        Ok(Rendered {
            configuration: text,
            command: vec![
                env.meshwork.display().to_string(),
                "run".into(),
                "--config".into(),
                file.display().to_string(),
            ],
            config_file: file,
            metrics_url: Some(format!("http://{}/stats/prometheus", env.admin)),
        })
    }
}

/// meshwork's version as `meshwork --version` prints it.
pub fn meshwork_implementation(binary: &std::path::Path) -> Implementation {
    let version = std::process::Command::new(binary)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.split_whitespace().nth(1).map(str::to_owned))
        .unwrap_or_else(|| "unknown".into());
    Implementation {
        project: "meshwork".into(),
        version,
        organization: "meshwork".into(),
        url: "https://github.com/meshwork/meshwork".into(),
    }
}

/// The binary and every product filter module the suites may load.
pub fn meshwork_artifacts(env: &Env) -> Vec<Artifact> {
    let mut artifacts: Vec<Artifact> = file_artifact("meshwork", &env.meshwork).into_iter().collect();
    if let Ok(dir) = std::fs::read_dir(&env.filters) {
        let mut modules: Vec<_> =
            dir.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "wasm")).collect();
        modules.sort();
        for m in modules {
            let name = m.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            artifacts.extend(file_artifact(&format!("filters/{name}"), &m));
        }
    }
    artifacts
}

fn route(r: &Route) -> Value {
    let mut v = json!({"name": r.name});
    match &r.path {
        PathMatch::Exact(p) => v["path"] = json!(p),
        PathMatch::Prefix(p) => v["path_separated_prefix"] = json!(p),
        PathMatch::Regex(p) => v["regex"] = json!(p),
    }
    if !r.methods.is_empty() {
        v["methods"] = json!(r.methods);
    }
    if !r.headers.is_empty() {
        v["headers"] = r.headers.iter().map(|(k, val)| json!({"name": k, "exact": val})).collect();
    }
    if !r.query.is_empty() {
        v["query"] = r.query.iter().map(|(k, val)| (k.clone(), json!(val))).collect::<serde_json::Map<_, _>>().into();
    }
    match &r.action {
        Action::Backends(b) if b.len() == 1 => v["cluster"] = json!(b[0].0),
        Action::Backends(b) => {
            v["backends"] = b.iter().map(|(c, w)| json!({"cluster": c, "weight": w})).collect();
        }
        Action::ClusterHeader(h) => v["cluster_header"] = json!(h),
        Action::Respond { status, body } => v["direct_response"] = json!({"status": status, "body": body}),
        Action::Redirect(d) => {
            let mut redirect = json!({"status": d.status.unwrap_or(302)});
            if let Some(s) = &d.scheme {
                redirect["scheme"] = json!(s);
            }
            if let Some(h) = &d.hostname {
                redirect["host"] = json!(h);
            }
            if let Some(p) = d.port {
                redirect["port"] = json!(p);
            }
            match &d.path {
                Some(PathRewrite::Full(p)) => redirect["path"] = json!(p),
                Some(PathRewrite::Prefix(p)) => redirect["prefix"] = json!(p),
                None => {}
            }
            v["redirect"] = redirect;
        }
    }
    match &r.rewrite {
        Some(PathRewrite::Full(p)) => v["rewrite"] = json!({"path": p}),
        Some(PathRewrite::Prefix(p)) => v["rewrite"] = json!({"prefix": p}),
        None => {}
    }
    if let Some(m) = modifier(&r.request_headers) {
        v["request_headers"] = m;
    }
    if let Some(m) = modifier(&r.response_headers) {
        v["response_headers"] = m;
    }
    if let Some(t) = r.timeout {
        v["timeout"] = json!(format!("{}ms", t.as_millis()));
    }
    v
}

fn modifier(m: &HeaderModifier) -> Option<Value> {
    if m.is_empty() {
        return None;
    }
    let map = |pairs: &[(String, String)]| {
        pairs.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>()
    };
    Some(json!({"set": map(&m.set), "add": map(&m.add), "remove": m.remove}))
}
