//! HAProxy 2.6 as a target. The frontend's ACLs match the raw path, method, whole header
//! fields and the raw query string; `use_backend` lines in [`Precedence`] order pick the
//! route; each route is a backend that proxies (weighted round robin), redirects or answers
//! (`http-request return`).
//!
//! Quoting: regexes go in single quotes (nothing is interpreted there), other text in double
//! quotes with `\`, `"` and `$` escaped; log-format text also doubles `%`.
//!
//! [`Precedence`]: crate::intent::Precedence

use std::path::PathBuf;

use super::config_text::{
    HOP_BY_HOP, Lines, Port, banner, check_hostname, check_method, check_path, check_value, header_name, header_value,
    live_backends, matched_stem, path_regex, precedence_order, query_regex, redirect_status, redirect_target,
    regex_literal, reject_meshwork_only, respond_status, splice, write,
};
use super::{Adapter, Env, Rendered, Unsupported, file_artifact, which};
use crate::intent::{Action, HeaderModifier, Intent, PathMatch, PathRewrite, Route};
use crate::outcome::{Artifact, Implementation};

#[derive(Clone, Copy, Debug, Default)]
pub struct Haproxy;

fn binary() -> Option<PathBuf> {
    which("haproxy")
}

/// HAProxy's largest server weight.
const MAX_WEIGHT: u32 = 256;

impl Adapter for Haproxy {
    fn name(&self) -> &'static str {
        "haproxy"
    }

    fn unavailable(&self) -> Option<String> {
        binary().is_none().then(|| "haproxy is not installed (not on PATH, in /usr/sbin or /sbin)".to_owned())
    }

    fn implementation(&self) -> Implementation {
        // `haproxy -v` prints `HAProxy version 2.6.12-1+deb12u4 2026/10/17 - https://haproxy.org/`.
        let version = binary()
            .and_then(|b| banner(&b, "-v"))
            .and_then(|b| b.split("version ").nth(1).and_then(|v| v.split_whitespace().next()).map(str::to_owned))
            .unwrap_or_else(|| "unknown".into());
        Implementation {
            project: "haproxy".into(),
            version,
            organization: "HAProxy Technologies".into(),
            url: "https://www.haproxy.org".into(),
        }
    }

    fn artifacts(&self, _env: &Env) -> Vec<Artifact> {
        binary().and_then(|b| file_artifact("haproxy", &b)).into_iter().collect()
    }

    fn render(&self, intent: &Intent, env: &Env) -> Result<Rendered, Unsupported> {
        let configuration = config(intent, env)?;
        let config_file = env.dir.join("haproxy.cfg");
        write(&config_file, &configuration)?;
        let program = binary().unwrap_or_else(|| PathBuf::from("/usr/sbin/haproxy"));
        Ok(Rendered {
            configuration,
            command: vec![program.display().to_string(), "-db".into(), "-f".into(), config_file.display().to_string()],
            config_file,
            metrics_url: None,
        })
    }
}

fn config(intent: &Intent, env: &Env) -> Result<String, Unsupported> {
    reject_meshwork_only(intent, "haproxy")?;
    let mut acls = Lines::default();
    let mut backends = Lines::default();
    let mut conditions = Vec::new();
    for (i, route) in intent.routes.iter().enumerate() {
        conditions.push(render_route(i, route, env, &mut acls, &mut backends)?);
    }

    let mut c = Lines::default();
    c.line(0, "# meshwork-conformance: one test's routes for HAProxy 2.6. One process in the foreground (-db).");
    c.line(0, "defaults");
    c.line(1, "mode http");
    c.line(1, "timeout connect 1s");
    c.line(1, "timeout client 30s");
    c.line(1, "timeout server 30s");
    c.line(0, "frontend mw");
    c.line(1, format!("bind {}", env.listen));
    c.line(1, "# The path as sent, before a route rewrites it; the Host's name and port for redirects");
    c.line(1, "# (the listener's port when the Host has none).");
    c.line(1, "http-request set-var(txn.mw_path) path");
    c.line(1, "http-request set-var(txn.mw_host) req.hdr(host),regsub(:[0-9]+$,)");
    c.line(1, format!("http-request set-var(txn.mw_port) int({})", env.listen.port()));
    c.line(1, "http-request set-var(txn.mw_port) req.hdr(host),regsub(^.*:,) if { req.hdr(host) -m reg :[0-9]+$ }");
    c.0.push_str(&acls.0);
    for i in precedence_order(&intent.routes) {
        c.line(1, format!("use_backend mw_r{i} if {}", conditions[i]));
    }
    c.line(1, "default_backend mw_none");
    c.line(0, "backend mw_none");
    c.line(1, "http-request return status 404");
    c.0.push_str(&backends.0);
    Ok(c.0)
}

/// The ACLs of route `i` and its backend `mw_r{i}`; returns the `use_backend` condition.
fn render_route(i: usize, route: &Route, env: &Env, acls: &mut Lines, be: &mut Lines) -> Result<String, Unsupported> {
    let r = format!("mw_r{i}");
    acls.line(1, format!("# route {i} {:?}", route.name));
    let mut names = vec![format!("{r}_path")];
    acls.line(1, format!("acl {r}_path path -m reg {}", sq(&path_regex(&route.path)?)));
    if !route.methods.is_empty() {
        let methods = route.methods.iter().map(|m| check_method(m)).collect::<Result<Vec<_>, _>>()?;
        acls.line(1, format!("acl {r}_method method {}", methods.join(" ")));
        names.push(format!("{r}_method"));
    }
    for (j, (name, value)) in route.headers.iter().enumerate() {
        check_value(value)?;
        // fhdr: the whole field, commas and all (hdr would split the value at commas).
        let regex = format!("^{}$", regex_literal(value));
        acls.line(1, format!("acl {r}_header{j} req.fhdr({}) -m reg {}", header_name(name)?, sq(&regex)));
        names.push(format!("{r}_header{j}"));
    }
    for (j, (name, value)) in route.query.iter().enumerate() {
        acls.line(1, format!("acl {r}_query{j} query -m reg {}", sq(&query_regex(name, value))));
        names.push(format!("{r}_query{j}"));
    }

    be.line(0, format!("backend {r}"));
    match &route.action {
        Action::Backends(backends) => {
            let live = live_backends(route, backends, env)?;
            if live.is_empty() {
                // Gateway API: a rule whose every backend has weight 0 answers 500.
                be.line(1, format!("http-request return status 500{}", local_headers(&route.response_headers)?));
            } else {
                if let Some(t) = route.timeout {
                    // Inactivity timeouts, which a backend that answers late (what the timeout
                    // tests do) meets as a whole-request timeout: 504.
                    let ms = t.as_millis().max(1);
                    be.line(1, format!("timeout server {ms}ms"));
                    be.line(1, format!("timeout connect {}ms", ms.min(1000)));
                }
                request_headers(&route.request_headers, be)?;
                if let Some(rewrite) = &route.rewrite {
                    rewrite_path(&route.path, rewrite, be)?;
                }
                proxied_response_headers(&route.response_headers, be)?;
                be.line(1, "balance roundrobin");
                let divisor = live.iter().fold(0, |g, (_, _, w)| gcd(g, *w));
                for (k, (name, addr, weight)) in live.iter().enumerate() {
                    let weight = weight / divisor;
                    if weight > MAX_WEIGHT {
                        return Err(Unsupported(format!(
                            "route {:?}: weights {:?} do not reduce to HAProxy's 1..{MAX_WEIGHT}",
                            route.name,
                            backends.iter().map(|(_, w)| w).collect::<Vec<_>>()
                        )));
                    }
                    be.line(1, format!("server s{k} {addr} weight {weight} # {name:?}"));
                }
            }
        }
        Action::Redirect(redirect) => {
            let status = redirect_status(redirect)?;
            let (scheme, port) = redirect_target(redirect)?;
            // The request goes nowhere else, so its path is rewritten in place and the
            // Location ends with %[pathq], the new path and the query.
            if let Some(rewrite) = &redirect.path {
                rewrite_path(&route.path, rewrite, be)?;
            }
            let host = match &redirect.hostname {
                Some(h) => lf(check_hostname(h)?),
                None => "%[var(txn.mw_host)]".into(),
            };
            let head = match port {
                Port::Omit => format!("{scheme}://{host}"),
                Port::Static(p) => format!("{scheme}://{host}:{p}"),
                Port::FromRequest => {
                    // A log-format writes an empty sample as `-`, so the port is added only
                    // when there is one to add.
                    be.line(
                        1,
                        format!("http-request set-var-fmt(txn.mw_location) {}", dq(&format!("{scheme}://{host}"))),
                    );
                    be.line(
                        1,
                        "http-request set-var-fmt(txn.mw_location) \"%[var(txn.mw_location)]:%[var(txn.mw_port)]\" if !{ var(txn.mw_port) -m int 80 }",
                    );
                    "%[var(txn.mw_location)]".into()
                }
            };
            be.line(
                1,
                format!(
                    "http-request return status {status} hdr Location {}{}",
                    dq(&format!("{head}%[pathq]")),
                    local_headers(&route.response_headers)?
                ),
            );
        }
        Action::ClusterHeader(_) => {
            return Err(Unsupported(format!(
                "route {:?}: a backend named by a header a proxy-wasm filter sets needs proxy-wasm",
                route.name
            )));
        }
        Action::Respond { status, body } => {
            let status = respond_status(*status, body)?;
            if body.contains('\0') {
                return Err(Unsupported(format!("route {:?}: a body with a NUL byte", route.name)));
            }
            let payload = if body.is_empty() {
                String::new()
            } else {
                format!(" content-type \"text/plain\" string {}", dq(body))
            };
            be.line(
                1,
                format!("http-request return status {status}{payload}{}", local_headers(&route.response_headers)?),
            );
        }
    }
    Ok(names.join(" "))
}

/// The request's path rewritten in place: the whole of it, or the matched prefix. Each rule is
/// guarded by the path as sent, so one rule's result never meets the next.
fn rewrite_path(matched: &PathMatch, rewrite: &PathRewrite, be: &mut Lines) -> Result<(), Unsupported> {
    match rewrite {
        PathRewrite::Full(p) => be.line(1, format!("http-request set-path {}", dq(&lf(check_path(p)?)))),
        PathRewrite::Prefix(replacement) => {
            if !replacement.is_empty() {
                check_path(replacement)?;
            }
            let stem = regex_literal(matched_stem(matched));
            let s = splice(replacement);
            for (rest, before) in [("/", &s.before_slash), ("[^/]", &s.before_other)] {
                // replace-path's result is a log-format with \1 for the capture; the capture
                // reference goes in single quotes, where the backslash stays.
                be.line(
                    1,
                    format!(
                        "http-request replace-path {} {}'\\1' if {{ var(txn.mw_path) -m reg {} }}",
                        sq(&format!("^{stem}({rest}.*)$")),
                        dq(&lf(before)),
                        sq(&format!("^{stem}{rest}"))
                    ),
                );
            }
            be.line(
                1,
                format!(
                    "http-request set-path {} if {{ var(txn.mw_path) -m reg {} }}",
                    dq(&lf(&s.alone)),
                    sq(&format!("^{stem}$"))
                ),
            );
        }
    }
    Ok(())
}

/// remove, then set, then add: meshwork's order, which HAProxy's rules keep as written.
fn request_headers(m: &HeaderModifier, be: &mut Lines) -> Result<(), Unsupported> {
    let checked = |name: &str| -> Result<String, Unsupported> {
        let lower = header_name(name)?;
        if HOP_BY_HOP.contains(&lower.as_str()) {
            return Err(Unsupported(format!(
                "changing the request header {name:?}: it belongs to the connection, not the request"
            )));
        }
        Ok(lower)
    };
    for name in &m.remove {
        if checked(name)? == "host" {
            return Err(Unsupported("removing Host: an HTTP/1.1 request upstream needs one".into()));
        }
        be.line(1, format!("http-request del-header {name}"));
    }
    for (name, value) in &m.set {
        checked(name)?;
        be.line(1, format!("http-request set-header {name} {}", dq(&lf(header_value(value)?))));
    }
    for (name, value) in &m.add {
        checked(name)?;
        be.line(1, format!("http-request add-header {name} {}", dq(&lf(header_value(value)?))));
    }
    Ok(())
}

/// Response headers HAProxy frames the message with.
const FRAMING: &[&str] = &["content-length", "transfer-encoding", "connection"];

fn response_header_name(name: &str) -> Result<String, Unsupported> {
    let lower = header_name(name)?;
    if FRAMING.contains(&lower.as_str()) {
        return Err(Unsupported(format!("changing the response header {name:?}: HAProxy frames the response with it")));
    }
    Ok(lower)
}

fn proxied_response_headers(m: &HeaderModifier, be: &mut Lines) -> Result<(), Unsupported> {
    for name in &m.remove {
        response_header_name(name)?;
        be.line(1, format!("http-response del-header {name}"));
    }
    for (name, value) in &m.set {
        response_header_name(name)?;
        be.line(1, format!("http-response set-header {name} {}", dq(&lf(header_value(value)?))));
    }
    for (name, value) in &m.add {
        response_header_name(name)?;
        be.line(1, format!("http-response add-header {name} {}", dq(&lf(header_value(value)?))));
    }
    Ok(())
}

/// `hdr` arguments of an `http-request return`: a local answer has no headers to remove, and a
/// set one is the only one of its name.
fn local_headers(m: &HeaderModifier) -> Result<String, Unsupported> {
    for name in &m.remove {
        response_header_name(name)?;
    }
    let mut out = String::new();
    let set_names: Vec<String> = m.set.iter().map(|(n, _)| n.to_ascii_lowercase()).collect();
    for (k, (name, value)) in m.set.iter().enumerate() {
        // A later set of the same name replaces an earlier one.
        if set_names[k + 1..].contains(&name.to_ascii_lowercase()) {
            continue;
        }
        response_header_name(name)?;
        out.push_str(&format!(" hdr {name} {}", dq(&lf(header_value(value)?))));
    }
    for (name, value) in &m.add {
        response_header_name(name)?;
        out.push_str(&format!(" hdr {name} {}", dq(&lf(header_value(value)?))));
    }
    Ok(out)
}

/// Text for a log-format: `%` starts a sample there.
fn lf(s: &str) -> String {
    s.replace('%', "%%")
}

/// A double-quoted argument: HAProxy expands `$VAR` and backslash escapes inside, so `\`, `"`
/// and `$` are escaped and line breaks written as escapes.
fn dq(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '$' => out.push_str("\\$"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A single-quoted argument (taken as written); a `'` closes the quotes, is escaped, and
/// reopens them, as HAProxy joins adjacent quoted parts.
fn sq(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::super::config_text::testkit::*;
    use super::*;

    #[test]
    fn weights_reduce_to_haproxys_range() {
        let dir = tempfile::tempdir().unwrap();
        let env = env(dir.path(), nowhere(&["a", "b"]));
        let mut route = Route::to("w", PathMatch::Prefix("/".into()), "a");
        route.action = Action::Backends(vec![("a".into(), 7000), ("b".into(), 3000)]);
        let intent = Intent { backends: vec!["a".into(), "b".into()], routes: vec![route], ..Intent::default() };
        let text = Haproxy.render(&intent, &env).unwrap().configuration;
        assert!(text.contains("weight 7 ") && text.contains("weight 3 "), "{text}");
        let mut odd = intent;
        odd.routes[0].action = Action::Backends(vec![("a".into(), 1000), ("b".into(), 1)]);
        assert!(Haproxy.render(&odd, &env).unwrap_err().0.contains("256"));
    }

    #[test]
    fn quoting_keeps_text_literal() {
        assert_eq!(dq("a \"b\" $c \\d"), "\"a \\\"b\\\" \\$c \\\\d\"");
        assert_eq!(sq("it's"), "'it'\\''s'");
        assert_eq!(lf("100%"), "100%%");
    }

    #[test]
    fn rendered_configurations_pass_haproxy_c() {
        let Some(haproxy) = binary() else {
            eprintln!("skipped: haproxy is not installed");
            return;
        };
        assert!(Haproxy.unavailable().is_none());
        let version = Haproxy.implementation().version;
        assert!(version.starts_with(|c: char| c.is_ascii_digit()), "haproxy -v gave version {version:?}");
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Haproxy.artifacts(&env(dir.path(), nowhere(&[])))[0].sha256.len(), 64);
        for (what, intent) in samples() {
            let dir = tempfile::tempdir().unwrap();
            let env = env(dir.path(), nowhere(&["echo", "v1", "v2"]));
            let rendered = Haproxy.render(&intent, &env).unwrap_or_else(|e| panic!("{what}: {e}"));
            let f = rendered.config_file.display().to_string();
            if let Err(out) = check(&haproxy, &["-c", "-q", "-f", &f]) {
                panic!("{what}: haproxy -c rejects\n{}\n{out}", rendered.configuration);
            }
        }
    }

    #[test]
    fn haproxy_routes_rewrites_redirects_and_answers() {
        if binary().is_none() {
            eprintln!("skipped: haproxy is not installed");
            return;
        }
        serves_the_sample_behaviour(&Haproxy);
    }
}
