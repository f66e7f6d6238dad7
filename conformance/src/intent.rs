//! What a conformance test asks of the implementation under test, independent of any one
//! implementation: echo backends, routes (matches, weighted backends, redirects, rewrites,
//! header modifiers, local answers) and the pattern filters in front of them. Each adapter
//! turns an [`Intent`] into its implementation's configuration, or says what it cannot express.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

/// The whole configuration one test needs.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Intent {
    /// Echo backends (`meshwork upstream --name <name>`) the routes may send to.
    pub backends: Vec<String>,
    /// In order; [`Precedence`] says how a request picks one.
    pub routes: Vec<Route>,
    /// Pattern filters in front of the routes, in order (meshwork's proxy-wasm filters).
    pub filters: Vec<Filter>,
    /// Per backend, cluster settings beyond its address (retry admission, health checks…).
    pub clusters: BTreeMap<String, ClusterOptions>,
    /// Backends that have an address but nothing serving it (a dead upstream); a check may
    /// start one there later ([`crate::probe::Probe::start_backend`]).
    pub absent: Vec<String>,
    /// A rate-limit service (`meshwork ratelimit-service`) with these limits
    /// (envoyproxy/ratelimit's YAML), reachable as the backend `ratelimit`.
    pub ratelimit_service: Option<String>,
}

impl Intent {
    /// Every backend name a configuration may refer to: echo backends, absent ones and the
    /// rate-limit service.
    pub fn all_backends(&self) -> Vec<String> {
        let mut all: Vec<String> = self.backends.iter().chain(&self.absent).cloned().collect();
        if self.ratelimit_service.is_some() {
            all.push("ratelimit".into());
        }
        all
    }
}

/// How the route of a request is chosen (Gateway API's HTTPRoute precedence): an exact path
/// before a longer prefix before a shorter one, then routes with a method match, then those
/// with more header matches, then more query matches, then the earlier route.
#[derive(Clone, Copy, Debug)]
pub struct Precedence;

#[derive(Clone, Debug, Serialize)]
pub struct Route {
    pub name: String,
    pub path: PathMatch,
    /// Any of these methods; empty matches all.
    pub methods: Vec<String>,
    /// Every one of these request headers has exactly this value (names lower-case).
    pub headers: Vec<(String, String)>,
    /// Every one of these query parameters has exactly this value.
    pub query: Vec<(String, String)>,
    pub action: Action,
    /// Replace the path before forwarding (not with [`Action::Redirect`]).
    pub rewrite: Option<PathRewrite>,
    pub request_headers: HeaderModifier,
    pub response_headers: HeaderModifier,
    /// The whole-request timeout.
    pub timeout: Option<Duration>,
}

impl Route {
    /// A route of `path` to one backend, with nothing else.
    pub fn to(name: &str, path: PathMatch, backend: &str) -> Route {
        Route {
            name: name.into(),
            path,
            methods: Vec::new(),
            headers: Vec::new(),
            query: Vec::new(),
            action: Action::Backends(vec![(backend.into(), 1)]),
            rewrite: None,
            request_headers: HeaderModifier::default(),
            response_headers: HeaderModifier::default(),
            timeout: None,
        }
    }

    /// A route of `path` that the proxy answers itself.
    pub fn respond(name: &str, path: PathMatch, status: u16) -> Route {
        Route { action: Action::Respond { status, body: String::new() }, ..Route::to(name, path, "") }
    }

    /// True when this route has matches beyond its path.
    pub fn has_request_matches(&self) -> bool {
        !self.methods.is_empty() || !self.headers.is_empty() || !self.query.is_empty()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PathMatch {
    Exact(String),
    /// Gateway API's PathPrefix: whole segments (`/v1` matches `/v1` and `/v1/x`, not `/v10`).
    Prefix(String),
    /// The whole path matches this regular expression (SMI's pathRegex).
    Regex(String),
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// To these backends, by weight.
    Backends(Vec<(String, u32)>),
    Redirect(Redirect),
    /// To the backend this request header names (set by a filter: health checking, traffic
    /// split).
    ClusterHeader(String),
    /// The proxy answers with this status and body.
    Respond {
        status: u16,
        body: String,
    },
}

/// Gateway API's RequestRedirect: what is not given is kept from the request.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    pub port: Option<u16>,
    pub path: Option<PathRewrite>,
    /// Gateway API's default, 302, when not given.
    pub status: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PathRewrite {
    /// The whole path becomes this.
    Full(String),
    /// The route's matched prefix becomes this (Gateway API's ReplacePrefixMatch).
    Prefix(String),
}

/// Gateway API's HTTPHeaderFilter.
#[derive(Clone, Debug, Default, Serialize)]
pub struct HeaderModifier {
    pub set: Vec<(String, String)>,
    pub add: Vec<(String, String)>,
    pub remove: Vec<String>,
}

impl HeaderModifier {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// A meshwork pattern filter: its name in `filters/` and its JSON configuration.
#[derive(Clone, Debug, Serialize)]
pub struct Filter {
    pub name: String,
    pub configuration: serde_json::Value,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ClusterOptions {
    /// Concurrent retries the cluster admits (Envoy's max_retries circuit breaker).
    pub max_retries: Option<u32>,
    /// Retries in flight as a percentage of requests in flight (Envoy's retry budget).
    pub retry_budget_percent: Option<f64>,
}
