//! nginx as a target: Debian 12's nginx-light 1.22, so stock modules only (no headers-more, no
//! njs). Every match is a `map` over the raw path, the method, a header or the query string; the
//! `if`s in `location /` try the routes in [`Precedence`] order and hand the request to the
//! route's named location, which proxies, redirects or answers.
//!
//! The helpers marked `pub(super)` hold what the haproxy adapter shares: route order, regex
//! quoting, prefix splicing and redirect ports, so that both render the same semantics.
//!
//! [`Precedence`]: crate::intent::Precedence

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::config_text::*;
use super::{Adapter, Env, Rendered, Unsupported, file_artifact, which};
use crate::intent::{Action, HeaderModifier, Intent, PathMatch, PathRewrite, Route};
use crate::outcome::{Artifact, Implementation};

#[derive(Clone, Copy, Debug, Default)]
pub struct Nginx;

fn binary() -> Option<PathBuf> {
    which("nginx")
}

impl Adapter for Nginx {
    fn name(&self) -> &'static str {
        "nginx"
    }

    fn unavailable(&self) -> Option<String> {
        binary().is_none().then(|| "nginx is not installed (not on PATH, in /usr/sbin or /sbin)".to_owned())
    }

    fn implementation(&self) -> Implementation {
        // `nginx -v` prints `nginx version: nginx/1.22.1` on stderr.
        let version = binary()
            .and_then(|b| banner(&b, "-v"))
            .and_then(|b| b.split("nginx/").nth(1).and_then(|v| v.split_whitespace().next()).map(str::to_owned))
            .unwrap_or_else(|| "unknown".into());
        Implementation {
            project: "nginx".into(),
            version,
            organization: "F5 NGINX".into(),
            url: "https://nginx.org".into(),
        }
    }

    fn artifacts(&self, _env: &Env) -> Vec<Artifact> {
        binary().and_then(|b| file_artifact("nginx", &b)).into_iter().collect()
    }

    fn render(&self, intent: &Intent, env: &Env) -> Result<Rendered, Unsupported> {
        let configuration = config(intent, env)?;
        let config_file = env.dir.join("nginx.conf");
        write(&config_file, &configuration)?;
        let program = binary().unwrap_or_else(|| PathBuf::from("/usr/sbin/nginx"));
        Ok(Rendered {
            configuration,
            command: vec![
                program.display().to_string(),
                "-p".into(),
                env.dir.display().to_string(),
                "-c".into(),
                config_file.display().to_string(),
                "-g".into(),
                "daemon off;".into(),
            ],
            config_file,
            metrics_url: None,
        })
    }
}

/// Response headers nginx writes itself: `add_header` would send a second one and
/// `proxy_hide_header` cannot take nginx's own away.
const NGINX_OWN_RESPONSE_HEADERS: &[&str] =
    &["server", "date", "content-length", "content-type", "transfer-encoding", "connection", "keep-alive", "location"];

fn config(intent: &Intent, env: &Env) -> Result<String, Unsupported> {
    reject_meshwork_only(intent, "nginx")?;
    let path = |name: &str| quote_plain(&env.dir.join(name).display().to_string());
    let mut http = Lines::default();
    let mut dispatch = Lines::default();
    let mut locations = Lines::default();
    for (i, route) in intent.routes.iter().enumerate() {
        render_route(i, route, env, &mut http, &mut locations)?;
    }
    for i in precedence_order(&intent.routes) {
        dispatch.line(3, format!("if ($mw_r{i}) {{ error_page 418 = @mw_r{i}; return 418; }}"));
    }

    let mut c = Lines::default();
    c.line(0, "# meshwork-conformance: one test's routes for nginx-light 1.22 (stock modules only).");
    c.line(0, "# One process, so that stopping the command leaves nothing listening and nothing runs as");
    c.line(0, "# another user; every file it writes is in this directory; errors go to stderr.");
    c.line(0, "master_process off;");
    c.line(0, format!("pid {};", path("nginx.pid")));
    c.line(0, format!("lock_file {};", path("nginx.lock")));
    c.line(0, "error_log stderr warn;");
    c.line(0, "events { worker_connections 1024; }");
    c.line(0, "http {");
    c.line(1, "access_log off;");
    for (directive, dir) in [
        ("client_body_temp_path", "client_body"),
        ("proxy_temp_path", "proxy"),
        ("fastcgi_temp_path", "fastcgi"),
        ("uwsgi_temp_path", "uwsgi"),
        ("scgi_temp_path", "scgi"),
    ] {
        c.line(1, format!("{directive} {};", path(dir)));
    }
    c.line(1, "default_type text/plain;");
    c.line(1, "client_max_body_size 0;");
    c.line(1, "proxy_http_version 1.1;");
    c.line(1, "proxy_connect_timeout 1s;");
    c.line(1, "proxy_read_timeout 30s;");
    c.line(1, "proxy_send_timeout 30s;");
    c.line(1, "# One try at the chosen backend, and its Location passed on unchanged, as meshwork does.");
    c.line(1, "proxy_next_upstream off;");
    c.line(1, "proxy_redirect off;");
    c.line(1, "# nginx strings have no escape for `$`: a literal dollar is written ${mw_dollar}.");
    c.line(1, "geo $mw_dollar { default \"$\"; }");
    c.line(1, "# Paths are matched as sent ($uri would be decoded and normalised).");
    c.line(1, "map $request_uri $mw_path { \"~^(?<mw_path_raw>[^?]*)\" $mw_path_raw; }");
    c.line(1, "# For redirects: the Host header's name, and its port (the listener's when it has none).");
    c.line(1, "map $http_host $mw_hostname { \"~^(?<mw_host_name>.+):[0-9]+$\" $mw_host_name; default $http_host; }");
    let listen_port = match env.listen.port() {
        80 => String::new(),
        p => format!(":{p}"),
    };
    c.line(
        1,
        format!(
            "map $http_host $mw_port {{ \"~:80$\" \"\"; \"~:(?<mw_host_port>[0-9]+)$\" \":${{mw_host_port}}\"; default \"{listen_port}\"; }}"
        ),
    );
    c.0.push_str(&http.0);
    c.line(1, "server {");
    c.line(2, format!("listen {};", env.listen));
    c.line(2, "location / {");
    c.0.push_str(&dispatch.0);
    c.line(3, "return 404;");
    c.line(2, "}");
    c.0.push_str(&locations.0);
    c.line(1, "}");
    c.line(0, "}");
    Ok(c.0)
}

/// The maps that decide whether route `i` matches (`$mw_r{i}` is 1 or 0), its upstream and its
/// named location `@mw_r{i}`.
fn render_route(i: usize, route: &Route, env: &Env, http: &mut Lines, loc: &mut Lines) -> Result<(), Unsupported> {
    let r = format!("mw_r{i}");
    http.line(1, format!("# route {i} {}", comment(&route.name)));
    let mut parts = vec![(format!("{r}_path"), "$mw_path".to_owned(), path_regex(&route.path)?)];
    if !route.methods.is_empty() {
        let methods =
            route.methods.iter().map(|m| check_method(m).map(regex_literal)).collect::<Result<Vec<_>, _>>()?;
        parts.push((format!("{r}_method"), "$request_method".into(), format!("^(?:{})$", methods.join("|"))));
    }
    for (j, (name, value)) in route.headers.iter().enumerate() {
        if value.is_empty() {
            return Err(Unsupported(format!(
                "route {:?}: nginx cannot tell a header {name:?} sent empty from one not sent",
                route.name
            )));
        }
        check_value(value)?;
        parts.push((
            format!("{r}_header{j}"),
            format!("$http_{}", header_variable(name)?),
            format!("^{}$", regex_literal(value)),
        ));
    }
    for (j, (name, value)) in route.query.iter().enumerate() {
        parts.push((format!("{r}_query{j}"), "$args".into(), query_regex(name, value)));
    }
    if let [(_, source, regex)] = parts.as_slice() {
        http.line(1, format!("map {source} ${r} {{ {} 1; default 0; }}", quote_regex(regex)));
    } else {
        for (var, source, regex) in &parts {
            http.line(1, format!("map {source} ${var} {{ {} 1; default 0; }}", quote_regex(regex)));
        }
        let key: String = parts.iter().map(|(var, _, _)| format!("${{{var}}}")).collect();
        http.line(1, format!("map \"{key}\" ${r} {{ \"{}\" 1; default 0; }}", "1".repeat(parts.len())));
    }

    loc.line(2, format!("location @{r} {{"));
    match &route.action {
        Action::Backends(backends) => {
            let live = live_backends(route, backends, env)?;
            if live.is_empty() {
                // Gateway API: a rule whose every backend has weight 0 answers 500.
                response_headers(&route.response_headers, false, loc)?;
                loc.line(3, "return 500;");
            } else {
                http.line(1, format!("upstream {r} {{"));
                for (name, addr, weight) in &live {
                    // max_fails=0: an erring backend keeps its share, as the weights say.
                    http.line(2, format!("server {addr} weight={weight} max_fails=0; # {}", comment(name)));
                }
                http.line(2, "keepalive 16;");
                http.line(1, "}");
                let target = match &route.rewrite {
                    None => format!("http://{r}"),
                    Some(PathRewrite::Full(p)) => {
                        format!("\"http://{r}{}${{is_args}}${{args}}\"", quote_inner(check_path(p)?))
                    }
                    Some(PathRewrite::Prefix(p)) => {
                        prefix_map(&r, &route.path, p, http)?;
                        format!("http://{r}${{{r}_uri}}${{is_args}}${{args}}")
                    }
                };
                loc.line(3, format!("proxy_pass {target};"));
                request_headers(&r, &route.request_headers, http, loc)?;
                response_headers(&route.response_headers, true, loc)?;
                if let Some(t) = route.timeout {
                    // nginx's timeouts are per read and write, which a backend that answers
                    // late (what the timeout tests do) meets as a whole-request timeout.
                    let ms = t.as_millis().max(1);
                    loc.line(3, format!("proxy_connect_timeout {}ms;", ms.min(1000)));
                    loc.line(3, format!("proxy_read_timeout {ms}ms;"));
                    loc.line(3, format!("proxy_send_timeout {ms}ms;"));
                }
            }
        }
        Action::Redirect(redirect) => {
            let status = redirect_status(redirect)?;
            let (scheme, port) = redirect_target(redirect)?;
            let host = match &redirect.hostname {
                Some(h) => quote_inner(check_hostname(h)?),
                None => "${mw_hostname}".into(),
            };
            let port = match port {
                Port::Omit => String::new(),
                Port::Static(p) => format!(":{p}"),
                Port::FromRequest => "${mw_port}".into(),
            };
            let path = match &redirect.path {
                None => "${request_uri}".into(),
                Some(PathRewrite::Full(p)) => format!("{}${{is_args}}${{args}}", quote_inner(check_path(p)?)),
                Some(PathRewrite::Prefix(p)) => {
                    prefix_map(&r, &route.path, p, http)?;
                    format!("${{{r}_uri}}${{is_args}}${{args}}")
                }
            };
            response_headers(&route.response_headers, false, loc)?;
            loc.line(3, format!("return {status} \"{scheme}://{host}{port}{path}\";"));
        }
        Action::ClusterHeader(_) => {
            return Err(Unsupported(format!(
                "route {:?}: a backend named by a header a proxy-wasm filter sets needs proxy-wasm",
                route.name
            )));
        }
        Action::Respond { status, body } => {
            let status = respond_status(*status, body)?;
            if [301, 302, 303, 307, 308].contains(&status) {
                return Err(Unsupported(format!(
                    "route {:?}: nginx's `return {status}` is a redirect and needs a Location",
                    route.name
                )));
            }
            if body.contains('\0') {
                return Err(Unsupported(format!("route {:?}: a body with a NUL byte", route.name)));
            }
            response_headers(&route.response_headers, false, loc)?;
            loc.line(3, format!("return {status} {};", quote(body)));
        }
    }
    loc.line(2, "}");
    Ok(())
}

/// `$mw_r{i}_uri`: the path with the route's matched prefix replaced, for a rewrite or a redirect.
fn prefix_map(r: &str, matched: &PathMatch, replacement: &str, http: &mut Lines) -> Result<(), Unsupported> {
    if !replacement.is_empty() {
        check_path(replacement)?;
    }
    let stem = regex_literal(matched_stem(matched));
    let s = splice(replacement);
    let slash = format!("^{stem}(?<{r}_rest>/.*)$");
    let other = format!("^{stem}(?<{r}_other>[^/].*)$");
    http.line(
        1,
        format!(
            "map $mw_path ${r}_uri {{ {} \"{}${{{r}_rest}}\"; {} \"{}${{{r}_other}}\"; default {}; }}",
            quote_regex(&slash),
            quote_inner(&s.before_slash),
            quote_regex(&other),
            quote_inner(&s.before_other),
            quote(&s.alone)
        ),
    );
    Ok(())
}

/// What a header ends as upstream, applying remove, then set, then add (meshwork's order).
enum Outcome {
    Removed,
    Fixed(String),
    /// The client's value (if any), then these.
    Appended(Vec<String>),
}

fn request_headers(r: &str, m: &HeaderModifier, http: &mut Lines, loc: &mut Lines) -> Result<(), Unsupported> {
    let mut plan: BTreeMap<String, (String, Outcome)> = BTreeMap::new();
    for name in &m.remove {
        plan.insert(request_header_name(name)?, (name.clone(), Outcome::Removed));
    }
    for (name, value) in &m.set {
        plan.insert(request_header_name(name)?, (name.clone(), Outcome::Fixed(header_value(value)?.to_owned())));
    }
    for (name, value) in &m.add {
        let value = header_value(value)?.to_owned();
        let entry =
            plan.entry(request_header_name(name)?).or_insert_with(|| (name.clone(), Outcome::Appended(Vec::new())));
        match &mut entry.1 {
            Outcome::Removed => entry.1 = Outcome::Fixed(value),
            Outcome::Fixed(v) => *v = format!("{v}, {value}"),
            Outcome::Appended(values) => values.push(value),
        }
    }
    if plan.get("host").is_some_and(|(_, o)| matches!(o, Outcome::Removed)) {
        return Err(Unsupported("removing Host: an HTTP/1.1 request upstream needs one".into()));
    }
    if !plan.contains_key("host") {
        loc.line(3, "proxy_set_header Host $http_host;");
    }
    loc.line(3, "proxy_set_header Connection \"\";");
    for (k, (lower, (name, outcome))) in plan.iter().enumerate() {
        match outcome {
            // An empty value is how nginx leaves a header out.
            Outcome::Removed => loc.line(3, format!("proxy_set_header {name} \"\";")),
            Outcome::Fixed(v) => loc.line(3, format!("proxy_set_header {name} {};", quote(v))),
            Outcome::Appended(values) => {
                // nginx-light cannot send a second field of a name the client sent, so the
                // added value joins the client's in one field: "old, new", which RFC 9110
                // §5.3 makes the same header (and what an echo of both fields shows). nginx
                // 1.22's $http_* holds only the first field of a repeated header.
                let var = format!("$http_{}", header_variable(lower)?);
                let joined = values.join(", ");
                http.line(
                    1,
                    format!(
                        "map {var} ${r}_add{k} {{ \"\" {}; default \"${{{}}}, {}\"; }}",
                        quote(&joined),
                        &var[1..],
                        quote_inner(&joined)
                    ),
                );
                loc.line(3, format!("proxy_set_header {name} ${r}_add{k};"));
            }
        }
    }
    Ok(())
}

/// `proxied`: the response comes from a backend, whose headers can be hidden; a local answer
/// has no headers to remove but nginx's own.
fn response_headers(m: &HeaderModifier, proxied: bool, loc: &mut Lines) -> Result<(), Unsupported> {
    let all = m.remove.iter().chain(m.set.iter().map(|(n, _)| n)).chain(m.add.iter().map(|(n, _)| n));
    for name in all {
        let lower = header_name(name)?;
        if NGINX_OWN_RESPONSE_HEADERS.contains(&lower.as_str()) {
            return Err(Unsupported(format!(
                "changing the response header {name:?}: nginx writes it itself (headers-more is not in nginx-light)"
            )));
        }
    }
    let mut plan: BTreeMap<String, (String, bool, Vec<String>)> = BTreeMap::new();
    for name in &m.remove {
        plan.insert(header_name(name)?, (name.clone(), true, Vec::new()));
    }
    for (name, value) in &m.set {
        plan.insert(header_name(name)?, (name.clone(), true, vec![header_value(value)?.to_owned()]));
    }
    for (name, value) in &m.add {
        let value = header_value(value)?.to_owned();
        plan.entry(header_name(name)?).or_insert_with(|| (name.clone(), false, Vec::new())).2.push(value);
    }
    for (name, hide, values) in plan.values() {
        if *hide && proxied {
            loc.line(3, format!("proxy_hide_header {name};"));
        }
        for v in values {
            loc.line(3, format!("add_header {name} {} always;", quote(v)));
        }
    }
    Ok(())
}

/// A header name as the suffix of an `$http_` variable: nginx turns `-` into `_` and ignores
/// fields whose names have `_`, so only letters, digits and `-` name one header.
fn header_variable(name: &str) -> Result<String, Unsupported> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(Unsupported(format!("header {name:?}: nginx's $http_ variables name only [A-Za-z0-9-] headers")));
    }
    Ok(name.to_ascii_lowercase().replace('-', "_"))
}

fn request_header_name(name: &str) -> Result<String, Unsupported> {
    let lower = header_name(name)?;
    if HOP_BY_HOP.contains(&lower.as_str()) {
        return Err(Unsupported(format!(
            "changing the request header {name:?}: it belongs to the connection, not the request"
        )));
    }
    Ok(lower)
}

/// `a "q" \ $x` as an nginx double-quoted string whose text is taken literally.
fn quote(s: &str) -> String {
    format!("\"{}\"", quote_inner(s))
}

/// The inside of [`quote`], for splicing next to variables.
fn quote_inner(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '$' => out.push_str("${mw_dollar}"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out
}

/// A double-quoted string where nginx expands no variables (file paths).
fn quote_plain(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A map's regex source value (`~` and case-sensitive). nginx turns `\\` into `\`, and every
/// other backslash sequence but `\"`, `\'`, `\n`, `\r`, `\t` through as it is, so doubling every
/// backslash hands PCRE the regex unchanged.
fn quote_regex(regex: &str) -> String {
    format!("\"~{}\"", regex.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A route name for a `#` comment.
fn comment(s: &str) -> String {
    format!("{s:?}")
}

#[cfg(test)]
mod tests {
    use super::super::config_text::testkit::*;
    use super::*;
    use crate::intent::{ClusterOptions, Filter, Redirect};

    #[test]
    fn precedence_orders_exact_then_longest_prefix_then_matches_then_file_order() {
        let prefix = |p: &str| PathMatch::Prefix(p.into());
        let mut routes = vec![
            Route::to("regex", PathMatch::Regex("/.*".into()), "a"),
            Route::to("short", prefix("/v"), "a"),
            Route::to("long", prefix("/v1"), "a"),
            Route::to("exact", PathMatch::Exact("/v1".into()), "a"),
            Route::to("headers", prefix("/v"), "a"),
            Route::to("method", prefix("/v"), "a"),
            Route::to("short-again", prefix("/v"), "a"),
        ];
        routes[4].headers = pairs(&[("a", "1"), ("b", "2")]);
        routes[5].methods = vec!["GET".into()];
        assert_eq!(precedence_order(&routes), vec![3, 2, 5, 4, 1, 6, 0]);
    }

    #[test]
    fn prefix_splices_follow_meshwork() {
        // (replacement, rest) → new path, as host-runner/meshwork/src/route_spec.rs has them.
        let apply = |repl: &str, rest: &str| {
            let s = splice(repl);
            match rest {
                "" => s.alone,
                r if r.starts_with('/') => format!("{}{r}", s.before_slash),
                r => format!("{}{r}", s.before_other),
            }
        };
        assert_eq!(apply("/one", "/two"), "/one/two");
        assert_eq!(apply("/", "/two"), "/two");
        assert_eq!(apply("/", ""), "/");
        assert_eq!(apply("/one", ""), "/one");
        assert_eq!(apply("", "/two"), "/two");
        assert_eq!(apply("", ""), "/");
        assert_eq!(apply("/xyz/", "/bar"), "/xyz/bar");
        assert_eq!(apply("/one", "two"), "/one/two");
    }

    #[test]
    fn redirect_ports_follow_gateway_api() {
        let target = |scheme: Option<&str>, port| {
            redirect_target(&Redirect { scheme: scheme.map(str::to_owned), port, ..Redirect::default() }).unwrap()
        };
        assert_eq!(target(None, None), ("http".into(), Port::FromRequest));
        assert_eq!(target(Some("https"), None), ("https".into(), Port::Omit));
        assert_eq!(target(None, Some(80)), ("http".into(), Port::Omit));
        assert_eq!(target(Some("https"), Some(443)), ("https".into(), Port::Omit));
        assert_eq!(target(Some("https"), Some(80)), ("https".into(), Port::Static(80)));
        assert_eq!(target(None, Some(8083)), ("http".into(), Port::Static(8083)));
    }

    #[test]
    fn regex_literals_match_only_themselves() {
        let text = "/a.b$c(d)?e+ \"f\\g";
        let re = regex::Regex::new(&format!("^{}$", regex_literal(text))).unwrap();
        assert!(re.is_match(text));
        assert!(!re.is_match("/aXb$c(d)?e+ \"f\\g"));
        let q = regex::Regex::new(&query_regex("a", "1")).unwrap();
        assert!(q.is_match("x=2&a=1") && q.is_match("a=1&b") && !q.is_match("a=12") && !q.is_match("ba=1"));
    }

    #[test]
    fn filters_and_cluster_options_are_unsupported() {
        let dir = tempfile::tempdir().unwrap();
        let env = env(dir.path(), nowhere(&["echo"]));
        let basic = Intent {
            backends: vec!["echo".into()],
            routes: vec![Route::to("r", PathMatch::Prefix("/".into()), "echo")],
            ..Intent::default()
        };
        let filtered = Intent {
            filters: vec![Filter { name: "retry".into(), configuration: serde_json::json!({}) }],
            ..basic.clone()
        };
        assert!(Nginx.render(&filtered, &env).unwrap_err().0.contains("proxy-wasm"));
        let mut clustered = basic.clone();
        clustered.clusters.insert("echo".into(), ClusterOptions { max_retries: Some(3), ..ClusterOptions::default() });
        assert!(Nginx.render(&clustered, &env).unwrap_err().0.contains("max_retries"));
        let mut server = basic.clone();
        server.routes[0].response_headers.remove = vec!["Server".into()];
        assert!(Nginx.render(&server, &env).unwrap_err().0.contains("headers-more"));
        let mut empty = basic;
        empty.routes[0].headers = pairs(&[("version", "")]);
        assert!(Nginx.render(&empty, &env).is_err());
    }

    #[test]
    fn rendered_configurations_pass_nginx_t() {
        let Some(nginx) = binary() else {
            eprintln!("skipped: nginx is not installed");
            return;
        };
        assert!(Nginx.unavailable().is_none());
        let version = Nginx.implementation().version;
        assert!(version.starts_with(|c: char| c.is_ascii_digit()), "nginx -v gave version {version:?}");
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Nginx.artifacts(&env(dir.path(), nowhere(&[])))[0].sha256.len(), 64);
        for (what, intent) in samples() {
            let dir = tempfile::tempdir().unwrap();
            let env = env(dir.path(), nowhere(&["echo", "v1", "v2"]));
            let rendered = Nginx.render(&intent, &env).unwrap_or_else(|e| panic!("{what}: {e}"));
            let (d, f) = (env.dir.display().to_string(), rendered.config_file.display().to_string());
            if let Err(out) = check(&nginx, &["-t", "-q", "-p", &d, "-c", &f]) {
                panic!("{what}: nginx -t rejects\n{}\n{out}", rendered.configuration);
            }
        }
    }

    #[test]
    fn nginx_routes_rewrites_redirects_and_answers() {
        if binary().is_none() {
            eprintln!("skipped: nginx is not installed");
            return;
        }
        serves_the_sample_behaviour(&Nginx);
    }
}
