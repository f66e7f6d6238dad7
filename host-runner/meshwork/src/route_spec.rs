//! A route: which requests it takes (path, methods, headers, query) and what it does with them
//! (a cluster, clusters by weight, a redirect, a local answer; a path rewrite and header
//! changes on the way). The semantics are Envoy's route matching and Gateway API's HTTPRoute
//! filters, which agree on everything meshwork implements; both files translate into this.

use std::cmp::Reverse;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};

#[derive(Clone, Debug)]
pub struct RouteConfig {
    pub name: String,
    pub matcher: RouteMatch,
    pub target: RouteTarget,
    /// The whole-request timeout (Envoy's route timeout); None disables it.
    pub timeout: Option<Duration>,
    /// The path sent upstream instead of the client's (not for redirects).
    pub rewrite: Option<PathRewrite>,
    pub request_headers: HeaderMods,
    pub response_headers: HeaderMods,
}

impl RouteConfig {
    /// A route taking every request with `path`, changing nothing.
    pub fn new(name: impl Into<String>, path: PathMatch, target: RouteTarget) -> RouteConfig {
        RouteConfig {
            name: name.into(),
            matcher: RouteMatch { path, ..RouteMatch::default() },
            target,
            timeout: Some(Duration::from_secs(15)),
            rewrite: None,
            request_headers: HeaderMods::default(),
            response_headers: HeaderMods::default(),
        }
    }
}

/// Everything a request must have for a route to take it.
#[derive(Clone, Debug, Default)]
pub struct RouteMatch {
    pub path: PathMatch,
    /// Any of these host names, lower case (`*.example.com` takes one more label); empty takes
    /// every host. Envoy's virtual host domains, Gateway API's hostnames.
    pub hosts: Vec<String>,
    /// Any of these; empty takes every method.
    pub methods: Vec<Method>,
    /// All of these.
    pub headers: Vec<HeaderMatch>,
    /// All of these query parameters, with exactly these values (as sent, not decoded).
    pub query: Vec<(String, String)>,
}

impl RouteMatch {
    pub fn matches(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> bool {
        (self.hosts.is_empty() || host_of(uri, headers).is_some_and(|h| self.hosts.iter().any(|p| host_matches(p, &h))))
            && self.path.matches(uri.path())
            && (self.methods.is_empty() || self.methods.contains(method))
            && self.headers.iter().all(|h| h.matches(headers))
            && self.query.iter().all(|(name, value)| query_has(uri.query(), name, value))
    }

    /// Gateway API's precedence among matching routes, greatest first: a route for the
    /// request's host over one for every host, then an exact path, then
    /// the longest prefix, then a method match, then the most header matches, then the most
    /// query matches. Regular expressions rank below every prefix. Ties keep file order.
    pub fn precedence(&self) -> impl Ord {
        let path = match &self.path {
            PathMatch::Exact(p) => (2, p.len()),
            PathMatch::Prefix(p) | PathMatch::SeparatedPrefix(p) => (1, p.len()),
            PathMatch::Regex(_) => (0, 0),
        };
        (!self.hosts.is_empty(), path, !self.methods.is_empty(), self.headers.len(), self.query.len())
    }
}

/// The request's host, lower case and without a port: the URI's authority (HTTP/2, absolute
/// form), else the Host header.
pub fn host_of(uri: &Uri, headers: &HeaderMap) -> Option<String> {
    let authority = match uri.authority() {
        Some(a) => a.host().to_owned(),
        None => {
            let host = headers.get(http::header::HOST)?.to_str().ok()?;
            host.parse::<http::uri::Authority>().ok()?.host().to_owned()
        }
    };
    Some(authority.trim_end_matches('.').to_ascii_lowercase())
}

fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => host.split_once('.').is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        None => pattern == host,
    }
}

fn query_has(query: Option<&str>, name: &str, value: &str) -> bool {
    query.is_some_and(|q| {
        q.split('&').any(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            k == name && v == value
        })
    })
}

/// Which paths a route takes (the query is never part of the path).
#[derive(Clone, Debug)]
pub enum PathMatch {
    /// Paths starting with this ("/" matches all): Envoy's `prefix`.
    Prefix(String),
    /// This path exactly.
    Exact(String),
    /// Whole segments: `/v1` takes `/v1`, `/v1/` and `/v1/x`, not `/v10` (Envoy's
    /// `path_separated_prefix`, Gateway API's PathPrefix).
    SeparatedPrefix(String),
    /// The whole path matches (Envoy's `safe_regex`, SMI's pathRegex).
    Regex(regex::Regex),
}

impl Default for PathMatch {
    fn default() -> PathMatch {
        PathMatch::Prefix("/".into())
    }
}

impl PartialEq for PathMatch {
    fn eq(&self, other: &PathMatch) -> bool {
        match (self, other) {
            (PathMatch::Prefix(a), PathMatch::Prefix(b))
            | (PathMatch::Exact(a), PathMatch::Exact(b))
            | (PathMatch::SeparatedPrefix(a), PathMatch::SeparatedPrefix(b)) => a == b,
            (PathMatch::Regex(a), PathMatch::Regex(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

impl PathMatch {
    /// A regular expression that must match a whole path.
    pub fn regex(pattern: &str) -> Result<PathMatch, regex::Error> {
        regex::Regex::new(&format!("^(?:{pattern})$")).map(PathMatch::Regex)
    }

    pub fn matches(&self, path: &str) -> bool {
        let path = path.split('?').next().unwrap_or(path);
        match self {
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
            PathMatch::Exact(p) => path == p,
            PathMatch::SeparatedPrefix(p) => {
                let p = p.trim_end_matches('/');
                path.strip_prefix(p).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            }
            PathMatch::Regex(r) => r.is_match(path),
        }
    }

    /// The path or prefix as written (a regex's anchored form).
    pub fn text(&self) -> &str {
        match self {
            PathMatch::Prefix(p) | PathMatch::Exact(p) | PathMatch::SeparatedPrefix(p) => p,
            PathMatch::Regex(r) => r.as_str(),
        }
    }

    /// Whether it is a path (what must start with `/`), not a pattern.
    pub fn is_literal(&self) -> bool {
        !matches!(self, PathMatch::Regex(_))
    }
}

/// A request header a route needs.
#[derive(Clone, Debug)]
pub struct HeaderMatch {
    pub name: HeaderName,
    pub value: ValueMatch,
    /// Take the requests this would not (Envoy's `invert_match`).
    pub invert: bool,
}

#[derive(Clone, Debug)]
pub enum ValueMatch {
    Exact(String),
    /// The whole value matches.
    Regex(regex::Regex),
    /// The header is there, whatever its value.
    Present,
}

impl HeaderMatch {
    fn matches(&self, headers: &HeaderMap) -> bool {
        let mut values = headers.get_all(&self.name).iter().peekable();
        let found = match &self.value {
            ValueMatch::Present => values.peek().is_some(),
            // Several fields of one name are one comma-joined value (RFC 9110 §5.3), as Envoy
            // matches them.
            value => {
                let fields = values.filter_map(|v| v.to_str().ok()).collect::<Vec<_>>();
                // One field (the usual case) is compared as it is; only several are joined.
                let joined = match fields.as_slice() {
                    [] => None,
                    [one] => Some(std::borrow::Cow::Borrowed(*one)),
                    many => Some(std::borrow::Cow::Owned(many.join(","))),
                };
                joined.is_some_and(|joined| match value {
                    ValueMatch::Exact(e) => joined.as_ref() == e,
                    ValueMatch::Regex(r) => r.is_match(&joined),
                    ValueMatch::Present => true,
                })
            }
        };
        found != self.invert
    }
}

/// Where a route sends its requests.
#[derive(Clone, Debug, PartialEq)]
pub enum RouteTarget {
    Cluster(String),
    /// The cluster named by this request header, as set by a filter (Envoy's `cluster_header`,
    /// how the traffic-split filter picks a version).
    ClusterHeader(String),
    /// Clusters by weight (Envoy's `weighted_clusters`); weights of 0 are never picked and at
    /// least one weight is positive.
    Weighted(Vec<(String, u32)>),
    /// The proxy answers itself (Envoy's `direct_response`).
    Direct {
        status: u16,
        body: Bytes,
    },
    /// The proxy answers with a redirect (Envoy's `redirect`).
    Redirect(Redirect),
}

impl RouteTarget {
    /// The clusters it names.
    pub fn clusters(&self) -> Vec<&str> {
        match self {
            RouteTarget::Cluster(c) => vec![c],
            RouteTarget::Weighted(w) => w.iter().map(|(c, _)| c.as_str()).collect(),
            _ => Vec::new(),
        }
    }
}

/// What is not given is kept from the request.
#[derive(Clone, Debug, PartialEq)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub path: Option<PathRewrite>,
    pub status: u16,
}

#[derive(Clone, Debug)]
pub enum PathRewrite {
    /// The whole path becomes this.
    Full(String),
    /// The route's matched prefix becomes this (Envoy's `prefix_rewrite`, Gateway API's
    /// ReplacePrefixMatch).
    Prefix(String),
    /// Every match of the pattern in the path is replaced (Envoy's `regex_rewrite`); the
    /// substitution is in the regex crate's syntax (see [`PathRewrite::regex_re2`]).
    Regex(regex::Regex, String),
}

impl PartialEq for PathRewrite {
    fn eq(&self, other: &PathRewrite) -> bool {
        match (self, other) {
            (PathRewrite::Full(a), PathRewrite::Full(b)) | (PathRewrite::Prefix(a), PathRewrite::Prefix(b)) => a == b,
            (PathRewrite::Regex(a, x), PathRewrite::Regex(b, y)) => a.as_str() == b.as_str() && x == y,
            _ => false,
        }
    }
}

static RE2_GROUP: std::sync::LazyLock<regex::Regex> =
    std::sync::LazyLock::new(|| regex::Regex::new(r"\\([0-9])").expect("a valid pattern"));

impl PathRewrite {
    /// Envoy's `regex_rewrite`, whose substitution is RE2's (`\1` for a group): translated
    /// once here into the regex crate's `${1}`, not on every request.
    pub fn regex_re2(pattern: regex::Regex, substitution: &str) -> PathRewrite {
        PathRewrite::Regex(pattern, RE2_GROUP.replace_all(substitution, "$${$1}").into_owned())
    }

    /// The new path and query for a request the route `matched` took. The query is kept.
    pub fn apply(&self, matched: &PathMatch, uri: &Uri) -> String {
        let path = uri.path();
        let rewritten = match self {
            PathRewrite::Full(p) => p.clone(),
            PathRewrite::Regex(pattern, substitution) => pattern.replace_all(path, substitution.as_str()).into_owned(),
            PathRewrite::Prefix(replacement) => {
                let prefix = match matched {
                    PathMatch::Prefix(p) | PathMatch::Exact(p) => p.as_str(),
                    PathMatch::SeparatedPrefix(p) => p.trim_end_matches('/'),
                    PathMatch::Regex(_) => "",
                };
                let rest = path.strip_prefix(prefix).unwrap_or(path);
                // `/prefix/one` with `/prefix` → `/` gives `/one`, not `//one`.
                match (replacement.ends_with('/'), rest.starts_with('/')) {
                    (true, true) => format!("{}{rest}", &replacement[..replacement.len() - 1]),
                    (false, false) if !rest.is_empty() && !replacement.is_empty() => format!("{replacement}/{rest}"),
                    _ if replacement.is_empty() && !rest.starts_with('/') => format!("/{rest}"),
                    _ => format!("{replacement}{rest}"),
                }
            }
        };
        match uri.query() {
            Some(q) => format!("{rewritten}?{q}"),
            None => rewritten,
        }
    }
}

impl Redirect {
    /// The `Location` for a request with this scheme, `Host` and target, which arrived on
    /// `listener_port`. Without a port in the redirect: a new scheme's well-known port, else the
    /// request's (its `Host`'s, else the listener's); the scheme's default port is left out of
    /// the URL (Gateway API's rules).
    pub fn location(
        &self,
        matched: &PathMatch,
        scheme: &str,
        host: Option<&str>,
        uri: &Uri,
        listener_port: Option<u16>,
    ) -> String {
        let (request_host, request_port) = match host {
            Some(h) => match h.rsplit_once(':').filter(|(_, p)| p.parse::<u16>().is_ok() && !h.ends_with(']')) {
                Some((name, port)) => (name, port.parse().ok()),
                None => (h, None),
            },
            None => ("", None),
        };
        let scheme_out = self.scheme.as_deref().unwrap_or(scheme);
        let default_port = |s: &str| if s.eq_ignore_ascii_case("https") { 443 } else { 80 };
        let port = match (self.port, &self.scheme) {
            (Some(p), _) => p,
            (None, Some(s)) => default_port(s),
            (None, None) => request_port.or(listener_port).unwrap_or(default_port(scheme)),
        };
        let host_out = self.host.as_deref().unwrap_or(request_host);
        let path = match &self.path {
            Some(rewrite) => rewrite.apply(matched, uri),
            None => uri.path_and_query().map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
        };
        if port == default_port(scheme_out) {
            format!("{scheme_out}://{host_out}{path}")
        } else {
            format!("{scheme_out}://{host_out}:{port}{path}")
        }
    }
}

/// Header changes a route makes (Envoy's `*_headers_to_add` / `*_headers_to_remove`,
/// Gateway API's HTTPHeaderFilter): set replaces, add appends, remove deletes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HeaderMods {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub add: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

impl HeaderMods {
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

/// The route a request takes among `routes`: the first that matches when `first_match`
/// (Envoy's rule), else the one of greatest [`RouteMatch::precedence`], earlier on ties.
pub fn select<'r, R>(
    routes: &'r [R],
    matcher: impl Fn(&R) -> &RouteMatch,
    first_match: bool,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Option<&'r R> {
    let mut matching = routes.iter().enumerate().filter(|(_, r)| matcher(r).matches(method, uri, headers));
    if first_match {
        return matching.next().map(|(_, r)| r);
    }
    matching.max_by_key(|(i, r)| (matcher(r).precedence(), Reverse(*i))).map(|(_, r)| r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(s: &str) -> Uri {
        s.parse().unwrap()
    }

    fn route(path: PathMatch) -> RouteMatch {
        RouteMatch { path, ..RouteMatch::default() }
    }

    #[test]
    fn host_routes_take_their_hosts_first() {
        let any = route(PathMatch::Prefix("/".into()));
        let echo = RouteMatch { hosts: vec!["echo.mesh-a.example".into()], ..any.clone() };
        let wild = RouteMatch { hosts: vec!["*.mesh-a.example".into()], ..any.clone() };
        let routes = [any, echo, wild];
        let pick = |host: &str, uri: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(http::header::HOST, HeaderValue::from_str(host).unwrap());
            let chosen = select(&routes, |r| r, false, &Method::GET, &super::tests::uri(uri), &headers).unwrap();
            routes.iter().position(|r| std::ptr::eq(r, chosen)).unwrap()
        };
        assert_eq!(pick("Echo.Mesh-A.example:8080", "/x"), 1, "exact host, any case, port ignored");
        assert_eq!(pick("other.mesh-a.example", "/x"), 2, "a wildcard takes one label");
        assert_eq!(pick("a.b.mesh-a.example", "/x"), 0, "but not two");
        assert_eq!(pick("ignored", "http://echo.mesh-a.example/x"), 1, "the URI's authority wins over Host");
    }

    #[test]
    fn separated_prefixes_take_whole_segments() {
        let p = PathMatch::SeparatedPrefix("/v1".into());
        assert!(p.matches("/v1") && p.matches("/v1/") && p.matches("/v1/x") && p.matches("/v1?a=b"));
        assert!(!p.matches("/v10") && !p.matches("/v"));
        assert!(PathMatch::Prefix("/v1".into()).matches("/v10"), "Envoy's prefix is a string prefix");
        let r = PathMatch::regex("/api/v[0-9]+").unwrap();
        assert!(r.matches("/api/v2") && !r.matches("/api/v2/x") && !r.matches("/x/api/v2"));
    }

    #[test]
    fn precedence_is_gateway_apis() {
        let mut by_header = route(PathMatch::SeparatedPrefix("/".into()));
        by_header.headers.push(HeaderMatch {
            name: HeaderName::from_static("version"),
            value: ValueMatch::Exact("two".into()),
            invert: false,
        });
        let mut by_method = route(PathMatch::SeparatedPrefix("/".into()));
        by_method.methods.push(Method::POST);
        let mut by_query = route(PathMatch::SeparatedPrefix("/".into()));
        by_query.query.push(("lang".into(), "en".into()));
        let routes = vec![
            route(PathMatch::SeparatedPrefix("/".into())),
            by_query,
            by_header,
            by_method,
            route(PathMatch::SeparatedPrefix("/v2".into())),
            route(PathMatch::Exact("/v2/exact".into())),
        ];
        let pick = |m: Method, u: &str, h: &[(&'static str, &'static str)]| {
            let mut headers = HeaderMap::new();
            for (k, v) in h {
                headers.insert(*k, HeaderValue::from_static(v));
            }
            let r = select(&routes, |r| r, false, &m, &uri(u), &headers).unwrap();
            routes.iter().position(|x| std::ptr::eq(x, r)).unwrap()
        };
        assert_eq!(pick(Method::GET, "/", &[]), 0);
        assert_eq!(pick(Method::GET, "/?lang=en", &[]), 1);
        assert_eq!(pick(Method::GET, "/?lang=en", &[("version", "two")]), 2, "headers before query");
        assert_eq!(pick(Method::POST, "/?lang=en", &[("version", "two")]), 3, "method before headers");
        assert_eq!(pick(Method::POST, "/v2/x", &[("version", "two")]), 4, "a longer prefix before all");
        assert_eq!(pick(Method::GET, "/v2/exact", &[]), 5);
        assert_eq!(
            select(&routes, |r| r, true, &Method::GET, &uri("/v2/exact"), &HeaderMap::new()).map(|r| r.path.text()),
            Some("/")
        );
    }

    #[test]
    fn header_matches() {
        let m = |value, invert| HeaderMatch { name: HeaderName::from_static("x-a"), value, invert };
        let mut h = HeaderMap::new();
        h.append("x-a", HeaderValue::from_static("1"));
        h.append("x-a", HeaderValue::from_static("2"));
        assert!(m(ValueMatch::Exact("1,2".into()), false).matches(&h));
        assert!(!m(ValueMatch::Exact("1".into()), false).matches(&h));
        assert!(m(ValueMatch::Exact("1".into()), true).matches(&h));
        assert!(m(ValueMatch::Regex(regex::Regex::new("^1,[0-9]$").unwrap()), false).matches(&h));
        assert!(m(ValueMatch::Present, false).matches(&h));
        assert!(!m(ValueMatch::Present, false).matches(&HeaderMap::new()));
        assert!(!m(ValueMatch::Exact(String::new()), false).matches(&HeaderMap::new()));
    }

    #[test]
    fn rewrites_replace_the_matched_prefix_or_the_path() {
        let prefix = PathMatch::SeparatedPrefix("/prefix".into());
        let r = |to: &str, u: &str| PathRewrite::Prefix(to.into()).apply(&prefix, &uri(u));
        assert_eq!(r("/one", "/prefix/two?x=1"), "/one/two?x=1");
        assert_eq!(r("/", "/prefix/two"), "/two");
        assert_eq!(r("/", "/prefix"), "/");
        assert_eq!(r("/one", "/prefix"), "/one");
        assert_eq!(r("", "/prefix/two"), "/two");
        assert_eq!(PathRewrite::Full("/full".into()).apply(&prefix, &uri("/prefix/two?q")), "/full?q");
        let regex = PathRewrite::regex_re2(regex::Regex::new("^/prefix/([a-z]+)$").unwrap(), "/\\1/x");
        assert_eq!(regex.apply(&prefix, &uri("/prefix/two?q")), "/two/x?q");
    }

    #[test]
    fn redirect_locations_follow_gateway_api() {
        let any = PathMatch::default();
        let redirect = |scheme: Option<&str>, host: Option<&str>, port| Redirect {
            scheme: scheme.map(Into::into),
            host: host.map(Into::into),
            port,
            path: None,
            status: 302,
        };
        let u = uri("/a?b=c");
        assert_eq!(
            redirect(None, Some("example.org"), None).location(&any, "http", Some("svc:8080"), &u, None),
            "http://example.org:8080/a?b=c"
        );
        assert_eq!(
            redirect(Some("https"), None, None).location(&any, "http", Some("svc:8080"), &u, None),
            "https://svc/a?b=c"
        );
        assert_eq!(
            redirect(None, None, Some(80)).location(&any, "http", Some("svc:8080"), &u, None),
            "http://svc/a?b=c"
        );
        assert_eq!(
            redirect(Some("https"), None, Some(8443)).location(&any, "http", Some("svc"), &u, None),
            "https://svc:8443/a?b=c"
        );
        assert_eq!(redirect(None, None, None).location(&any, "http", Some("svc"), &u, None), "http://svc/a?b=c");
        let with_path = Redirect { path: Some(PathRewrite::Full("/new".into())), ..redirect(None, None, None) };
        assert_eq!(with_path.location(&any, "http", Some("svc:81"), &u, None), "http://svc:81/new?b=c");
    }

    #[test]
    fn header_mods_set_add_and_remove() {
        let mut h = HeaderMap::new();
        h.insert("keep", HeaderValue::from_static("1"));
        h.insert("gone", HeaderValue::from_static("1"));
        h.insert("set", HeaderValue::from_static("old"));
        h.insert("add", HeaderValue::from_static("first"));
        HeaderMods {
            set: vec![(HeaderName::from_static("set"), HeaderValue::from_static("new"))],
            add: vec![(HeaderName::from_static("add"), HeaderValue::from_static("second"))],
            remove: vec![HeaderName::from_static("gone")],
        }
        .apply(&mut h);
        assert_eq!(h.get_all("set").iter().collect::<Vec<_>>(), ["new"]);
        assert_eq!(h.get_all("add").iter().collect::<Vec<_>>(), ["first", "second"]);
        assert!(!h.contains_key("gone") && h.contains_key("keep"));
    }
}
