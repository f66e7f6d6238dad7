//! `traffic-split`: picks a backend for each request by rules and weights, and names it in the
//! routing header that Envoy's `cluster_header` routes and meshwork's router both follow.
//!
//! Rules (header and path conditions) are tried in order; the first that matches chooses the
//! backends, else the default backends do. Among them one is picked by weight, at random or, with
//! `hash_on`, by a hash of a request header so a caller keeps its backend. The filter always
//! writes the routing header (or removes it when nothing matches), so a client cannot pick its
//! own backend by sending the header.

use std::rc::Rc;

use meshwork_filter_support::config::{self, header_name};
use meshwork_filter_support::{Random, configured, property_string, tagged};
use meshwork_traffic_split::{Backend, Chosen, HeaderMatch, Request, RequestMatch, Routes, Rule, Split, ValueMatch};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};
use serde::Deserialize;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(SplitRoot::default()) });
}}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct HeaderConfig {
    name: String,
    value: Option<String>,
    prefix: Option<String>,
    present: Option<bool>,
}

#[derive(Deserialize, Debug, Clone, Default)]
#[serde(deny_unknown_fields)]
struct MatchConfig {
    #[serde(default)]
    headers: Vec<HeaderConfig>,
    path_prefix: Option<String>,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct BackendConfig {
    name: String,
    #[serde(default = "one")]
    weight: u32,
}

fn one() -> u32 {
    1
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct RuleConfig {
    /// Names the rule in metrics; `rule-<index>` when absent.
    name: Option<String>,
    #[serde(rename = "match", default)]
    when: MatchConfig,
    backends: Vec<BackendConfig>,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum HashOn {
    /// Requests with the same value of this header go to the same backend.
    Header(String),
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_header")]
    header: String,
    #[serde(default)]
    rules: Vec<RuleConfig>,
    /// For requests no rule matches.
    #[serde(default)]
    backends: Vec<BackendConfig>,
    hash_on: Option<HashOn>,
}

fn default_header() -> String {
    "x-meshwork-cluster".into()
}

fn header_match(field: &str, h: HeaderConfig) -> Result<HeaderMatch, String> {
    let name = header_name(&format!("{field}.name"), &h.name)?;
    let value = match (h.value, h.prefix, h.present) {
        (Some(v), None, None) => ValueMatch::Exact(v),
        (None, Some(p), None) => ValueMatch::Prefix(p),
        (None, None, Some(true)) => ValueMatch::Present,
        _ => return Err(format!("{field} ({name}): give exactly one of value, prefix or present: true")),
    };
    Ok(HeaderMatch { name, value })
}

fn split(field: &str, backends: Vec<BackendConfig>) -> Result<Split, String> {
    for (i, b) in backends.iter().enumerate() {
        if b.name.is_empty() {
            return Err(format!("{field}[{i}].name is empty"));
        }
    }
    Split::new(backends.into_iter().map(|b| Backend { name: b.name, weight: b.weight }).collect())
        .map_err(|e| format!("{field} {e}"))
}

struct Splitter {
    header: String,
    routes: Routes,
    hash_on: Option<String>,
    /// Whether choosing needs the request headers at all.
    reads_headers: bool,
    random: Random,
    /// Counter ids per rule, per backend; then the default's; then "no backend".
    rule_metrics: Vec<Vec<u32>>,
    default_metrics: Vec<u32>,
    unmatched_metric: u32,
}

#[derive(Default)]
struct SplitRoot {
    splitter: Option<Rc<Splitter>>,
}

impl SplitRoot {
    fn configure(&mut self, bytes: &[u8]) -> Result<(), String> {
        let config: Config = config::parse(bytes)?;
        let header = header_name("header", &config.header)?;
        let plugin = property_string(&["plugin_name"]).unwrap_or_else(|| "traffic-split".into());
        let counter = |rule: &str, backend: &str| {
            let name = tagged(
                "meshwork_traffic_split_requests_total",
                &[("plugin", &plugin), ("rule", rule), ("backend", backend)],
            );
            hostcalls::define_metric(MetricType::Counter, &name).unwrap_or(0)
        };
        let mut rules = Vec::with_capacity(config.rules.len());
        let mut rule_metrics = Vec::with_capacity(config.rules.len());
        for (i, rule) in config.rules.into_iter().enumerate() {
            let field = format!("rules[{i}]");
            let headers = rule
                .when
                .headers
                .into_iter()
                .enumerate()
                .map(|(j, h)| header_match(&format!("{field}.match.headers[{j}]"), h))
                .collect::<Result<Vec<_>, _>>()?;
            let split = split(&format!("{field}.backends"), rule.backends)?;
            let label = rule.name.unwrap_or_else(|| format!("rule-{i}"));
            rule_metrics.push(split.backends().iter().map(|b| counter(&label, &b.name)).collect());
            rules.push(Rule { when: RequestMatch { headers, path_prefix: rule.when.path_prefix }, split });
        }
        let default = if config.backends.is_empty() { None } else { Some(split("backends", config.backends)?) };
        if rules.is_empty() && default.is_none() {
            return Err("give backends, rules or both".into());
        }
        let default_metrics = default
            .as_ref()
            .map_or_else(Vec::new, |s| s.backends().iter().map(|b| counter("default", &b.name)).collect());
        let hash_on = match config.hash_on {
            Some(HashOn::Header(h)) => Some(header_name("hash_on.header", &h)?),
            None => None,
        };
        let reads_headers = hash_on.is_some() || rules.iter().any(|r| !r.when.headers.is_empty());
        self.splitter = Some(Rc::new(Splitter {
            header,
            routes: Routes { rules, default },
            hash_on,
            reads_headers,
            random: Random::default(),
            rule_metrics,
            default_metrics,
            unmatched_metric: counter("none", "none"),
        }));
        Ok(())
    }
}

impl Context for SplitRoot {}

impl RootContext for SplitRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        configured("traffic-split", self.configure(&bytes))
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(TrafficSplit { splitter: self.splitter.clone()? }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct TrafficSplit {
    splitter: Rc<Splitter>,
}

/// The request as the rules see it.
struct RequestView {
    path: String,
    headers: Vec<(String, String)>,
}

impl Request for RequestView {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
    fn path(&self) -> &str {
        &self.path
    }
}

impl Context for TrafficSplit {}

impl HttpContext for TrafficSplit {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let s = Rc::clone(&self.splitter);
        let view = if s.reads_headers {
            let headers = self.get_http_request_headers();
            let path = headers.iter().find(|(k, _)| k == ":path").map_or_else(String::new, |(_, v)| v.clone());
            RequestView { path, headers }
        } else {
            let path = if s.routes.rules.is_empty() {
                String::new()
            } else {
                self.get_http_request_header(":path").unwrap_or_default()
            };
            RequestView { path, headers: Vec::new() }
        };
        let Some((chosen, split)) = s.routes.select(&view) else {
            // No backend for this request: never let the client's own header choose one.
            self.set_http_request_header(&s.header, None);
            let _ = hostcalls::increment_metric(s.unmatched_metric, 1);
            return Action::Continue;
        };
        let draw = match s.hash_on.as_deref().and_then(|h| view.header(h)) {
            Some(value) => meshwork_traffic_split::sticky_draw(value.as_bytes()),
            None => s.random.next_u64(),
        };
        let (index, backend) = split.pick_index(draw);
        self.set_http_request_header(&s.header, Some(&backend.name));
        let metric = match chosen {
            Chosen::Rule(i) => s.rule_metrics[i][index],
            Chosen::Default => s.default_metrics[index],
        };
        let _ = hostcalls::increment_metric(metric, 1);
        Action::Continue
    }
}
