//! What the adapters that write a proxy's configuration file (nginx, HAProxy) share: route
//! order, regular expressions for paths and queries, prefix replacement, redirect targets, the
//! checks on names and values both file formats need, and the tests' common kit.

use std::cmp::Reverse;
use std::net::SocketAddr;
use std::path::Path;

use super::{Env, Unsupported};
use crate::intent::{Intent, PathMatch, Redirect, Route};

/// Lines of configuration, indented four spaces a level.
#[derive(Default)]
pub(crate) struct Lines(pub(crate) String);

impl Lines {
    pub(crate) fn line(&mut self, depth: usize, text: impl AsRef<str>) {
        for _ in 0..depth {
            self.0.push_str("    ");
        }
        self.0.push_str(text.as_ref());
        self.0.push('\n');
    }
}

/// Request headers that belong to a connection: the proxy writes its own.
pub(crate) const HOP_BY_HOP: &[&str] =
    &["connection", "keep-alive", "transfer-encoding", "content-length", "te", "upgrade", "proxy-connection"];

/// Pattern filters and cluster options are meshwork's proxy-wasm filters; only a proxy-wasm
/// host runs them.
pub(crate) fn reject_meshwork_only(intent: &Intent, target: &str) -> Result<(), Unsupported> {
    if let Some(f) = intent.filters.first() {
        return Err(Unsupported(format!("the {:?} filter is a proxy-wasm module, which {target} cannot load", f.name)));
    }
    let options = intent.clusters.iter().find(|(_, o)| o.max_retries.is_some() || o.retry_budget_percent.is_some());
    if let Some((name, _)) = options {
        return Err(Unsupported(format!(
            "backend {name:?}: retry admission (max_retries, retry budgets) is a meshwork proxy-wasm filter, which {target} cannot load"
        )));
    }
    if intent.ratelimit_service.is_some() {
        return Err(Unsupported(format!("{target} does not speak Envoy's rate-limit service API")));
    }
    Ok(())
}

/// Route indices in the order a request tries them: Gateway API's precedence as meshwork ranks
/// it (an exact path, then the longest prefix as written, regular expressions below every
/// prefix; then a method match, more header matches, more query matches; then file order).
/// Every criterion is a property of the route, so the first match in this order is the one.
pub(crate) fn precedence_order(routes: &[Route]) -> Vec<usize> {
    let key = |r: &Route| {
        let path = match &r.path {
            PathMatch::Exact(p) => (2, p.len()),
            PathMatch::Prefix(p) => (1, p.len()),
            PathMatch::Regex(_) => (0, 0),
        };
        (path, !r.methods.is_empty(), r.headers.len(), r.query.len())
    };
    let mut order: Vec<usize> = (0..routes.len()).collect();
    order.sort_by_key(|&i| (Reverse(key(&routes[i])), i));
    order
}

/// `s` as a PCRE pattern matching exactly these bytes: every byte but letters, digits, `/`,
/// `-` and `_` as `\xHH`, so nothing in it is special to PCRE or to a config file's quoting.
pub(crate) fn regex_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_') {
            out.push(b as char);
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// The anchored regex a raw request path must match (segment-wise for prefixes).
pub(crate) fn path_regex(path: &PathMatch) -> Result<String, Unsupported> {
    match path {
        PathMatch::Exact(p) => Ok(format!("^{}$", regex_literal(check_path(p)?))),
        PathMatch::Prefix(p) => Ok(format!("^{}(?:/|$)", regex_literal(check_path(p)?.trim_end_matches('/')))),
        PathMatch::Regex(r) => {
            let anchored = format!("^(?:{r})$");
            regex::Regex::new(&anchored).map_err(|e| Unsupported(format!("path regex {r:?}: {e}")))?;
            Ok(anchored)
        }
    }
}

/// A query parameter `name=value` anywhere in the raw query string (a bare `name` has the
/// value "").
pub(crate) fn query_regex(name: &str, value: &str) -> String {
    let eq = if value.is_empty() { "=?" } else { "=" };
    format!("(?:^|&){}{eq}{}(?:&|$)", regex_literal(name), regex_literal(value))
}

/// What ReplacePrefixMatch replaces: the prefix without its trailing `/` (the whole path for
/// an exact match, nothing for a regex), as meshwork takes it.
pub(crate) fn matched_stem(path: &PathMatch) -> &str {
    match path {
        PathMatch::Exact(p) => p,
        PathMatch::Prefix(p) => p.trim_end_matches('/'),
        PathMatch::Regex(_) => "",
    }
}

/// The new path when ReplacePrefixMatch `replacement` meets what follows the matched stem,
/// split by that rest's shape: it is `before_slash + rest` for a rest starting with `/`,
/// `before_other + rest` for any other, and `alone` when nothing follows. This is meshwork's
/// splice: `/prefix/one` with `/prefix` → `/` gives `/one`, never `//one`.
pub(crate) struct Splice {
    pub(crate) before_slash: String,
    pub(crate) before_other: String,
    pub(crate) alone: String,
}

pub(crate) fn splice(replacement: &str) -> Splice {
    Splice {
        before_slash: replacement.strip_suffix('/').unwrap_or(replacement).to_owned(),
        before_other: if replacement.ends_with('/') { replacement.to_owned() } else { format!("{replacement}/") },
        alone: if replacement.is_empty() { "/".to_owned() } else { replacement.to_owned() },
    }
}

/// Where a redirect's port comes from.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Port {
    /// The scheme's well-known port: left out of the Location.
    Omit,
    Static(u16),
    /// The request's: the Host header's port, else the listener's; left out when it is 80.
    FromRequest,
}

/// The redirect's scheme and port by Gateway API's rules: a given port is kept unless it is
/// the scheme's own; a scheme without a port means its well-known port; neither keeps the
/// request's port.
pub(crate) fn redirect_target(r: &Redirect) -> Result<(String, Port), Unsupported> {
    let scheme = r.scheme.clone().unwrap_or_else(|| "http".into());
    let valid = scheme.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
        && scheme.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    if !valid {
        return Err(Unsupported(format!("redirect scheme {scheme:?} is not a URI scheme")));
    }
    let port = match (r.port, &r.scheme) {
        (Some(p), _) if (scheme == "http" && p == 80) || (scheme == "https" && p == 443) => Port::Omit,
        (Some(p), _) => Port::Static(p),
        (None, Some(_)) => Port::Omit,
        (None, None) => Port::FromRequest,
    };
    Ok((scheme, port))
}

/// The redirect's status: 301 unless given; only the redirect statuses.
pub(crate) fn redirect_status(r: &Redirect) -> Result<u16, Unsupported> {
    match r.status.unwrap_or(302) {
        s @ (301 | 302 | 303 | 307 | 308) => Ok(s),
        s => Err(Unsupported(format!("redirect status {s} is not a redirect status"))),
    }
}

pub(crate) fn respond_status(status: u16, body: &str) -> Result<u16, Unsupported> {
    if !(200..=599).contains(&status) || status == 444 {
        return Err(Unsupported(format!("answering with status {status}")));
    }
    if matches!(status, 204 | 304) && !body.is_empty() {
        return Err(Unsupported(format!("a {status} answer with a body")));
    }
    Ok(status)
}

/// Backends with a positive weight: (name, address, weight).
pub(crate) fn live_backends<'a>(
    route: &Route,
    backends: &'a [(String, u32)],
    env: &Env,
) -> Result<Vec<(&'a str, SocketAddr, u32)>, Unsupported> {
    let mut live = Vec::new();
    for (name, weight) in backends {
        let addr = env.backends.get(name).ok_or_else(|| {
            Unsupported(format!("route {:?}: backend {name:?} has no address in this run", route.name))
        })?;
        if *weight > 0 {
            live.push((name.as_str(), *addr, *weight));
        }
    }
    Ok(live)
}

/// A path as written in a route, rewrite or redirect: visible ASCII from `/`, without `?` or `#`.
pub(crate) fn check_path(p: &str) -> Result<&str, Unsupported> {
    if !p.starts_with('/') || !p.bytes().all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#') {
        return Err(Unsupported(format!("path {p:?}: not an absolute path of visible ASCII without ? or #")));
    }
    Ok(p)
}

pub(crate) fn check_hostname(h: &str) -> Result<&str, Unsupported> {
    if h.is_empty() || !h.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']')) {
        return Err(Unsupported(format!("redirect hostname {h:?}")));
    }
    Ok(h)
}

pub(crate) fn check_method(m: &str) -> Result<&str, Unsupported> {
    if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_')) {
        return Err(Unsupported(format!("method {m:?}")));
    }
    Ok(m)
}

/// A header name both configuration languages take unquoted; lower-cased.
pub(crate) fn header_name(name: &str) -> Result<String, Unsupported> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) {
        return Err(Unsupported(format!("header name {name:?}: only [A-Za-z0-9._-] names are rendered")));
    }
    Ok(name.to_ascii_lowercase())
}

/// A value to send: one line, and not empty (both nginx and haproxy drop an empty one).
pub(crate) fn header_value(v: &str) -> Result<&str, Unsupported> {
    if v.is_empty() {
        return Err(Unsupported("a header with an empty value: the proxy would leave it out".into()));
    }
    check_value(v)
}

pub(crate) fn check_value(v: &str) -> Result<&str, Unsupported> {
    if v.bytes().any(|b| matches!(b, b'\r' | b'\n' | b'\0')) {
        return Err(Unsupported(format!("header value {v:?} has a line break or NUL")));
    }
    Ok(v)
}

/// What `binary arg` prints, stdout and stderr together.
pub(crate) fn banner(binary: &Path, arg: &str) -> Option<String> {
    let out = std::process::Command::new(binary).arg(arg).output().ok()?;
    Some(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

pub(crate) fn write(file: &Path, text: &str) -> Result<(), Unsupported> {
    std::fs::write(file, text).map_err(|e| Unsupported(format!("cannot write {}: {e}", file.display())))
}

#[cfg(test)]
pub(crate) mod testkit {
    //! What both adapters' tests use: sample intents, an environment, echo backends, a raw
    //! HTTP/1.1 client and a served implementation that dies with the test.

    use std::collections::BTreeMap;
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use crate::adapters::{Adapter, Env, Rendered};
    use crate::intent::{Action, HeaderModifier, Intent, PathMatch, PathRewrite, Redirect, Route};

    /// Quotes, dollars, backslashes, percent signs and braces: everything a config language
    /// might take for its own.
    pub const TRICKY: &str = "a \"b\" $c ${d} \\e 100% 'f' #g {h}; i";

    pub fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect()
    }

    fn redirect(name: &str, r: Redirect) -> Route {
        Route { action: Action::Redirect(r), ..Route::to(name, PathMatch::Prefix(format!("/{name}")), "") }
    }

    /// One intent per feature the adapters render.
    pub fn samples() -> Vec<(&'static str, Intent)> {
        let backends: Vec<String> = vec!["echo".into(), "v1".into(), "v2".into()];
        let intent = |routes: Vec<Route>| Intent { backends: backends.clone(), routes, ..Intent::default() };
        let prefix = |p: &str| PathMatch::Prefix(p.into());
        let mut weighted = Route::to("weighted", prefix("/"), "v1");
        weighted.action = Action::Backends(vec![("v1".into(), 70), ("v2".into(), 30), ("echo".into(), 0)]);
        let mut zero = Route::to("zero", prefix("/"), "v1");
        zero.action = Action::Backends(vec![("v1".into(), 0)]);
        let mut header = Route::to("header", prefix("/"), "v2");
        header.headers = pairs(&[("version", "two"), ("x-tricky", TRICKY)]);
        let mut query = Route::to("query", prefix("/q"), "v1");
        query.query = pairs(&[("animal", "whale"), ("flag", "")]);
        let mut method = Route::to("method", PathMatch::Exact("/m".into()), "v1");
        method.methods = vec!["POST".into(), "PUT".into()];
        let regex = Route::to("regex", PathMatch::Regex("/api/v[0-9]+/\"x\"\\.json".into()), "v2");
        let mut rewrites = Vec::new();
        for (i, to) in
            [PathRewrite::Full("/one".into()), PathRewrite::Prefix("/".into()), PathRewrite::Prefix("/new/".into())]
                .into_iter()
                .enumerate()
        {
            let mut r = Route::to(&format!("rewrite{i}"), prefix(&format!("/rw{i}/")), "echo");
            r.rewrite = Some(to);
            rewrites.push(r);
        }
        let mods = HeaderModifier {
            set: pairs(&[("x-set", TRICKY), ("host", "example.org")]),
            add: pairs(&[("x-add", TRICKY), ("x-add", "second")]),
            remove: vec!["x-remove".into()],
        };
        let mut headers = Route::to("headers", prefix("/"), "echo");
        headers.request_headers = mods.clone();
        headers.response_headers = HeaderModifier {
            set: pairs(&[("x-set", TRICKY)]),
            add: pairs(&[("x-add", "1")]),
            remove: vec!["x-remove".into()],
        };
        let mut respond = Route::respond("respond", prefix("/"), 418);
        respond.action = Action::Respond { status: 418, body: format!("{TRICKY}\nsecond line") };
        respond.response_headers.add = pairs(&[("x-add", TRICKY)]);
        let mut slow = Route::to("slow", prefix("/"), "echo");
        slow.timeout = Some(Duration::from_millis(250));
        vec![
            ("basic", intent(vec![Route::to("basic", prefix("/"), "echo")])),
            ("weighted", intent(vec![weighted])),
            ("all weights zero", intent(vec![zero])),
            ("matches", intent(vec![header, query, method, regex, Route::to("rest", prefix("/"), "echo")])),
            (
                "redirects",
                intent(vec![
                    redirect(
                        "host",
                        Redirect { hostname: Some("example.org".into()), status: Some(302), ..Redirect::default() },
                    ),
                    redirect(
                        "full",
                        Redirect { path: Some(PathRewrite::Full("/replaced".into())), ..Redirect::default() },
                    ),
                    redirect("prefix", Redirect { path: Some(PathRewrite::Prefix("/".into())), ..Redirect::default() }),
                    redirect("port", Redirect { port: Some(8083), status: Some(307), ..Redirect::default() }),
                    redirect(
                        "scheme",
                        Redirect { scheme: Some("https".into()), status: Some(308), ..Redirect::default() },
                    ),
                    redirect(
                        "all",
                        Redirect {
                            scheme: Some("https".into()),
                            hostname: Some("example.org".into()),
                            port: Some(8443),
                            path: Some(PathRewrite::Prefix("/x%y".into())),
                            status: Some(303),
                        },
                    ),
                ]),
            ),
            ("rewrites", intent(rewrites)),
            ("header modifiers", intent(vec![headers])),
            ("respond", intent(vec![respond])),
            ("timeout", intent(vec![slow])),
        ]
    }

    pub fn env(dir: &std::path::Path, backends: BTreeMap<String, SocketAddr>) -> Env {
        Env {
            listen: free_port(),
            backends,
            dir: dir.to_path_buf(),
            meshwork: "meshwork".into(),
            filters: "filters".into(),
            admin: free_port(),
        }
    }

    /// Addresses for backends that are never called (configuration checks only).
    pub fn nowhere(names: &[&str]) -> BTreeMap<String, SocketAddr> {
        names
            .iter()
            .enumerate()
            .map(|(i, n)| ((*n).to_owned(), SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16))))
            .collect()
    }

    pub fn free_port() -> SocketAddr {
        TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port")
    }

    /// An HTTP/1.1 backend that answers every request with `X-Backend: <name>` and, as its
    /// body, the request head it received; requests for `/slow…` wait a second first.
    pub fn echo(name: &'static str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind an echo backend");
        let addr = listener.local_addr().expect("its address");
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || answer(name, stream));
            }
        });
        addr
    }

    fn answer(name: &str, mut stream: TcpStream) {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
        }
        if head.split(|&b| b == b' ').nth(1).is_some_and(|target| target.starts_with(b"/slow")) {
            std::thread::sleep(Duration::from_secs(1));
        }
        let reply = format!(
            "HTTP/1.1 200 OK\r\nX-Backend: {name}\r\nX-Extra: from-backend\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            head.len()
        );
        let _ = stream.write_all(reply.as_bytes()).and_then(|()| stream.write_all(&head));
    }

    #[derive(Debug)]
    pub struct Reply {
        pub status: u16,
        pub headers: Vec<(String, String)>,
        pub body: String,
    }

    impl Reply {
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
        }

        pub fn header_all(&self, name: &str) -> Vec<&str> {
            self.headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect()
        }

        /// The request line the echo backend received.
        pub fn upstream_line(&self) -> &str {
            self.body.lines().next().unwrap_or("")
        }

        /// A header the echo backend received, by lower-case name.
        pub fn upstream_header(&self, name: &str) -> Option<&str> {
            self.body
                .lines()
                .skip(1)
                .find_map(|l| l.split_once(": ").filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v))
        }
    }

    /// One request on its own connection; `headers` may include `Host`.
    pub fn request(addr: SocketAddr, method: &str, target: &str, headers: &[(&str, &str)]) -> Reply {
        let mut stream = TcpStream::connect(addr).expect("connect to the implementation");
        stream.set_read_timeout(Some(Duration::from_secs(10))).expect("a read timeout");
        let mut head = format!("{method} {target} HTTP/1.1\r\nConnection: close\r\nContent-Length: 0\r\n");
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            head.push_str(&format!("Host: {addr}\r\n"));
        }
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).expect("send the request");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).expect("read the reply");
        let raw = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
        let mut lines = head.split("\r\n");
        let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
        let headers =
            lines.filter_map(|l| l.split_once(':').map(|(k, v)| (k.to_owned(), v.trim().to_owned()))).collect();
        Reply { status, headers, body: body.to_owned() }
    }

    /// The rendered command, running until dropped.
    pub struct Served(Child);

    impl Drop for Served {
        fn drop(&mut self) {
            // Both targets run as one process, so this takes everything down.
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    pub fn serve(rendered: &Rendered, listen: SocketAddr) -> Served {
        let (program, args) = rendered.command.split_first().expect("a command");
        let log = std::fs::File::create(rendered.config_file.with_extension("log")).expect("a log file");
        let child = Command::new(program)
            .args(args)
            .stdout(log.try_clone().expect("the log again"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start the implementation");
        let mut served = Served(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(listen).is_err() {
            let log = || std::fs::read_to_string(rendered.config_file.with_extension("log")).unwrap_or_default();
            if let Ok(Some(status)) = served.0.try_wait() {
                panic!("{program} exited with {status}:\n{}", log());
            }
            assert!(Instant::now() < deadline, "{program} does not listen on {listen} after 10 s:\n{}", log());
            std::thread::sleep(Duration::from_millis(20));
        }
        served
    }

    /// Runs a configuration check; Err carries its output.
    pub fn check(program: &std::path::Path, args: &[&str]) -> Result<(), String> {
        let out = Command::new(program).args(args).output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
        }
    }

    /// The behaviour both adapters must show, against real echo backends.
    pub fn serves_the_sample_behaviour(adapter: &dyn Adapter) {
        let backends: BTreeMap<String, SocketAddr> =
            [("one", echo("one")), ("two", echo("two"))].into_iter().map(|(n, a)| (n.to_owned(), a)).collect();
        let prefix = |p: &str| PathMatch::Prefix(p.into());
        let mut two = Route::to("two", prefix("/api"), "two");
        two.headers = pairs(&[("x-version", "two")]);
        two.request_headers = HeaderModifier {
            set: pairs(&[("x-set", "set")]),
            add: pairs(&[("x-add", "added")]),
            remove: vec!["x-remove".into()],
        };
        two.response_headers =
            HeaderModifier { set: vec![], add: pairs(&[("x-tricky", TRICKY)]), remove: vec!["x-extra".into()] };
        let mut old = Route::to("old", prefix("/old"), "");
        old.action =
            Action::Redirect(Redirect { path: Some(PathRewrite::Prefix("/new".into())), ..Redirect::default() });
        let mut moved = Route::to("moved", PathMatch::Exact("/moved".into()), "");
        moved.action = Action::Redirect(Redirect {
            scheme: Some("https".into()),
            hostname: Some("example.org".into()),
            status: Some(308),
            ..Redirect::default()
        });
        let mut rewrite = Route::to("rewrite", prefix("/rw/"), "one");
        rewrite.rewrite = Some(PathRewrite::Prefix("/".into()));
        let mut here = Route::respond("here", PathMatch::Exact("/here".into()), 201);
        here.action = Action::Respond { status: 201, body: TRICKY.into() };
        let mut split = Route::to("split", PathMatch::Exact("/split".into()), "one");
        split.action = Action::Backends(vec![("one".into(), 3), ("two".into(), 1)]);
        let mut query = Route::to("query", prefix("/q"), "two");
        query.query = pairs(&[("animal", "whale")]);
        let mut method = Route::to("method", PathMatch::Exact("/m".into()), "two");
        method.methods = vec!["POST".into()];
        let mut slow = Route::to("slow", prefix("/slow"), "one");
        slow.timeout = Some(std::time::Duration::from_millis(200));
        let intent = Intent {
            backends: vec!["one".into(), "two".into()],
            routes: vec![
                Route::to("one", prefix("/api"), "one"),
                two,
                old,
                moved,
                rewrite,
                here,
                split,
                slow,
                query,
                method,
            ],
            ..Intent::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let env = env(dir.path(), backends);
        let rendered = adapter.render(&intent, &env).unwrap();
        let _served = serve(&rendered, env.listen);
        let at = env.listen;
        let port = at.port();

        let r = request(at, "GET", "/api/x", &[("Host", "svc.test:8080")]);
        assert_eq!((r.status, r.header("x-backend")), (200, Some("one")), "{r:?}");
        assert_eq!(r.upstream_header("host"), Some("svc.test:8080"), "the Host header arrives unchanged");
        let r =
            request(at, "GET", "/api", &[("x-version", "two"), ("x-add", "mine"), ("x-remove", "1"), ("x-set", "old")]);
        assert_eq!((r.status, r.header("x-backend")), (200, Some("two")), "a header match wins: {r:?}");
        assert_eq!(r.upstream_header("x-set"), Some("set"), "{r:?}");
        let added: Vec<&str> = r
            .body
            .lines()
            .filter_map(|l| l.split_once(": ").filter(|(k, _)| k.eq_ignore_ascii_case("x-add")).map(|(_, v)| v))
            .collect();
        assert_eq!(added.join(", "), "mine, added", "{r:?}");
        assert_eq!(r.upstream_header("x-remove"), None, "{r:?}");
        assert_eq!(r.header_all("x-tricky"), vec![TRICKY], "{r:?}");
        assert_eq!(r.header("x-extra"), None, "the backend's x-extra is removed: {r:?}");
        let r = request(at, "GET", "/api", &[("x-version", "three")]);
        assert_eq!(r.header("x-backend"), Some("one"), "{r:?}");
        let r = request(at, "GET", "/api", &[("x-version", "two")]);
        assert_eq!(r.upstream_header("x-add"), Some("added"), "an added header the client did not send: {r:?}");
        assert_eq!(request(at, "GET", "/api10", &[]).status, 404, "a prefix takes whole segments");
        assert_eq!(request(at, "GET", "/q?x=1&animal=whale", &[]).header("x-backend"), Some("two"));
        assert_eq!(request(at, "GET", "/q?animal=whales", &[]).status, 404, "a query value matches whole");
        assert_eq!(request(at, "POST", "/m", &[]).header("x-backend"), Some("two"));
        assert_eq!(request(at, "GET", "/m", &[]).status, 404, "a method match");

        let r = request(at, "GET", "/old/x?q=1", &[("Host", "svc.test:8080")]);
        assert_eq!((r.status, r.header("location")), (302, Some("http://svc.test:8080/new/x?q=1")), "{r:?}");
        let r = request(at, "GET", "/old", &[("Host", "svc.test")]);
        assert_eq!(r.header("location"), Some(format!("http://svc.test:{port}/new").as_str()), "{r:?}");
        let r = request(at, "GET", "/old/", &[("Host", "svc.test:80")]);
        assert_eq!(r.header("location"), Some("http://svc.test/new/"), "{r:?}");
        let r = request(at, "GET", "/moved?a=b", &[]);
        assert_eq!((r.status, r.header("location")), (308, Some("https://example.org/moved?a=b")), "{r:?}");

        let r = request(at, "GET", "/rw/x/y?z=1", &[]);
        assert_eq!(r.upstream_line(), "GET /x/y?z=1 HTTP/1.1", "{r:?}");
        let r = request(at, "GET", "/rw/", &[]);
        assert_eq!(r.upstream_line(), "GET / HTTP/1.1", "{r:?}");

        let r = request(at, "GET", "/here", &[]);
        assert_eq!((r.status, r.body.as_str()), (201, TRICKY), "{r:?}");

        let mut ones = 0;
        for _ in 0..40 {
            if request(at, "GET", "/split", &[]).header("x-backend") == Some("one") {
                ones += 1;
            }
        }
        assert!((27..=33).contains(&ones), "3:1 over 40 requests gave {ones} to one");

        assert_eq!(request(at, "GET", "/slow", &[]).status, 504, "a backend slower than the route timeout");
    }
}
