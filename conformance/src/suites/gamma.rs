//! Gateway API GAMMA, profile MESH-HTTP (gateway-api conformance/tests/mesh): the mesh tests,
//! against the echo backends `echo`, `echo-v1` and `echo-v2`. A mesh client calls the service
//! `echo`; here that is the listener under test. Redirects are checked by `Location` and status.

use super::{Test, ensure};
use crate::check;
use crate::intent::{Action, HeaderModifier, Intent, PathMatch, PathRewrite, Redirect, Route};
use crate::outcome::{Level, SuiteName};

const SPEC: &str = "Gateway API v1.3 HTTPRoute (GEP-1426 mesh)";

fn echo_intent(routes: Vec<Route>) -> Intent {
    Intent { backends: vec!["echo".into(), "echo-v1".into(), "echo-v2".into()], routes, ..Intent::default() }
}

fn prefix(p: &str) -> PathMatch {
    PathMatch::Prefix(p.into())
}

fn basic() -> Intent {
    echo_intent(vec![Route::to("echo", prefix("/"), "echo")])
}

fn split(v1: &str, v2: &str) -> Intent {
    echo_intent(vec![Route::to("v1", prefix("/v1"), v1), Route::to("v2", prefix("/v2"), v2)])
}

fn header_matching(use_headers: bool) -> Intent {
    let mut one = Route::to("version-one", prefix("/"), "echo-v1");
    let mut two = Route::to("version-two", prefix("/"), "echo-v2");
    let mut two_on_v2 = Route::to("v2-and-version-two", prefix("/v2"), "echo-v1");
    if use_headers {
        one.headers = vec![("version".into(), "one".into())];
        two.headers = vec![("version".into(), "two".into())];
        two_on_v2.headers = vec![("version".into(), "two".into())];
    }
    echo_intent(vec![one, two, two_on_v2, Route::to("default", prefix("/"), "echo")])
}

fn query_matching(use_query: bool) -> Intent {
    let mut whale = Route::to("whale", prefix("/"), "echo-v1");
    let mut dolphin = Route::to("dolphin", prefix("/"), "echo-v2");
    let mut both = Route::to("both", prefix("/"), "echo");
    if use_query {
        whale.query = vec![("animal".into(), "whale".into())];
        dolphin.query = vec![("animal".into(), "dolphin".into())];
        both.query = vec![("animal".into(), "dolphin".into()), ("color".into(), "blue".into())];
    }
    echo_intent(vec![whale, dolphin, both])
}

fn method_matching(use_method: bool) -> Intent {
    let mut post = Route::to("post", prefix("/"), "echo-v1");
    if use_method {
        post.methods = vec!["POST".into()];
    }
    echo_intent(vec![post, Route::to("rest", prefix("/"), "echo-v2")])
}

fn weighted(v1: u32, v2: u32) -> Intent {
    let mut r = Route::to("weighted", prefix("/"), "echo-v1");
    r.action = Action::Backends(vec![("echo-v1".into(), v1), ("echo-v2".into(), v2)]);
    echo_intent(vec![r])
}

fn redirect_route(path: &str, redirect: Redirect) -> Route {
    Route { action: Action::Redirect(redirect), ..Route::to(path, prefix(path), "") }
}

fn redirects(status: u16) -> Intent {
    echo_intent(vec![
        redirect_route(
            "/hostname-redirect",
            Redirect { hostname: Some("example.org".into()), status: Some(301), ..Redirect::default() },
        ),
        redirect_route(
            "/host-and-status",
            Redirect { hostname: Some("example.org".into()), status: Some(status), ..Redirect::default() },
        ),
        redirect_route(
            "/full-path",
            Redirect {
                path: Some(PathRewrite::Full("/full-path-replaced".into())),
                status: Some(302),
                ..Redirect::default()
            },
        ),
        redirect_route(
            "/prefix",
            Redirect {
                path: Some(PathRewrite::Prefix("/replaced-prefix".into())),
                status: Some(302),
                ..Redirect::default()
            },
        ),
        redirect_route("/port", Redirect { port: Some(8083), status: Some(302), ..Redirect::default() }),
        redirect_route("/scheme", Redirect { scheme: Some("https".into()), status: Some(302), ..Redirect::default() }),
        redirect_route(
            "/303",
            Redirect { hostname: Some("example.org".into()), status: Some(303), ..Redirect::default() },
        ),
        redirect_route(
            "/307",
            Redirect { hostname: Some("example.org".into()), status: Some(307), ..Redirect::default() },
        ),
        redirect_route(
            "/308",
            Redirect { hostname: Some("example.org".into()), status: Some(308), ..Redirect::default() },
        ),
        Route::to("rest", prefix("/"), "echo"),
    ])
}

fn rewrites(active: bool) -> Intent {
    let mut p = Route::to("prefix", prefix("/prefix/one"), "echo");
    let mut f = Route::to("full", prefix("/full/one"), "echo");
    if active {
        p.rewrite = Some(PathRewrite::Prefix("/one".into()));
        f.rewrite = Some(PathRewrite::Full("/one".into()));
    }
    echo_intent(vec![p, f, Route::to("rest", prefix("/"), "echo")])
}

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect()
}

fn request_headers(active: bool) -> Intent {
    let mut r = Route::to("headers", prefix("/"), "echo");
    if active {
        r.request_headers = HeaderModifier {
            set: pairs(&[("x-header-set", "set-overwrites-values")]),
            add: pairs(&[("x-header-add", "add-appends-values")]),
            remove: vec!["x-header-remove".into()],
        };
    }
    echo_intent(vec![r])
}

fn response_headers(active: bool) -> Intent {
    let mut r = Route::to("headers", prefix("/"), "echo");
    if active {
        r.response_headers = HeaderModifier {
            set: pairs(&[("x-header-set", "set-overwrites-values")]),
            add: pairs(&[("x-header-add", "add-appends-values")]),
            remove: vec!["x-header-remove".into()],
        };
    }
    echo_intent(vec![r])
}

fn named_rules() -> Intent {
    echo_intent(vec![Route::to("name-v1", prefix("/v1"), "echo-v1"), Route::to("name-v2", prefix("/v2"), "echo-v2")])
}

/// What the echo backend at the end of `path` must be.
async fn expect_backend(
    p: &crate::probe::Probe,
    path: &str,
    headers: &[(&str, &str)],
    backend: &str,
) -> Result<(), String> {
    let reply = p.send("GET", path, headers).await?;
    ensure(reply.status == 200 && reply.backend() == backend, || {
        format!("GET {path} {headers:?}: expected 200 from {backend}, got {} from {:?}", reply.status, reply.backend())
    })
}

async fn expect_redirect(p: &crate::probe::Probe, path: &str, status: u16, location: &str) -> Result<(), String> {
    let reply = p.get(path).await?;
    ensure(reply.status == status && reply.header("location") == Some(location), || {
        format!("GET {path}: expected {status} to {location}, got {} to {:?}", reply.status, reply.header("location"))
    })
}

pub static TESTS: &[Test] = &[
    Test {
        id: "gamma/MeshBasic/echo-answers",
        suite: SuiteName::Gamma,
        test: "MeshBasic",
        spec: SPEC,
        level: Level::Core,
        features: &["Mesh", "HTTPRoute"],
        needs: &[],
        intent: basic,
        check: check!(|p| { expect_backend(&p, "/", &[], "echo").await }),
        known_bad: Some(|| Intent { routes: vec![Route::respond("nothing", prefix("/"), 503)], ..basic() }),
        statistics: None,
    },
    Test {
        id: "gamma/MeshTrafficSplit/path-selects-version",
        suite: SuiteName::Gamma,
        test: "MeshTrafficSplit",
        spec: SPEC,
        level: Level::Core,
        features: &["Mesh", "HTTPRoute"],
        needs: &[],
        intent: || split("echo-v1", "echo-v2"),
        check: check!(|p| {
            expect_backend(&p, "/v1", &[], "echo-v1").await?;
            expect_backend(&p, "/v2", &[], "echo-v2").await?;
            // A prefix takes whole segments.
            let other = p.get("/v10").await?;
            ensure(other.status == 404, || format!("GET /v10: expected 404 (no route), got {}", other.status))
        }),
        known_bad: Some(|| split("echo-v2", "echo-v1")),
        statistics: None,
    },
    Test {
        id: "gamma/MeshHTTPRouteMatching/headers-and-paths",
        suite: SuiteName::Gamma,
        test: "MeshHTTPRouteMatching",
        spec: SPEC,
        level: Level::Core,
        features: &["Mesh", "HTTPRoute"],
        needs: &[],
        intent: || header_matching(true),
        check: check!(|p| {
            expect_backend(&p, "/", &[("version", "one")], "echo-v1").await?;
            expect_backend(&p, "/", &[("version", "two")], "echo-v2").await?;
            expect_backend(&p, "/v2", &[("version", "two")], "echo-v1").await?;
            expect_backend(&p, "/", &[("version", "three")], "echo").await?;
            expect_backend(&p, "/", &[], "echo").await
        }),
        known_bad: Some(|| header_matching(false)),
        statistics: None,
    },
    Test {
        id: "gamma/MeshHTTPRouteQueryParamMatching/query-selects-backend",
        suite: SuiteName::Gamma,
        test: "MeshHTTPRouteQueryParamMatching",
        spec: SPEC,
        level: Level::Extended,
        features: &["Mesh", "HTTPRoute", "HTTPRouteQueryParamMatching"],
        needs: &[],
        intent: || query_matching(true),
        check: check!(|p| {
            expect_backend(&p, "/?animal=whale", &[], "echo-v1").await?;
            expect_backend(&p, "/?animal=dolphin", &[], "echo-v2").await?;
            expect_backend(&p, "/?animal=dolphin&color=blue", &[], "echo").await?;
            let none = p.get("/?animal=shark").await?;
            ensure(none.status == 404, || format!("GET /?animal=shark: expected 404, got {}", none.status))
        }),
        known_bad: Some(|| query_matching(false)),
        statistics: None,
    },
    Test {
        id: "gamma/MeshHTTPRouteMethodMatching/method-selects-backend",
        suite: SuiteName::Gamma,
        test: "MeshHTTPRouteMethodMatching",
        spec: SPEC,
        level: Level::Extended,
        features: &["Mesh", "HTTPRoute", "HTTPRouteMethodMatching"],
        needs: &[],
        intent: || method_matching(true),
        check: check!(|p| {
            let post = p.send("POST", "/", &[]).await?;
            ensure(post.backend() == "echo-v1", || format!("POST /: expected echo-v1, got {:?}", post.backend()))?;
            expect_backend(&p, "/", &[], "echo-v2").await
        }),
        known_bad: Some(|| method_matching(false)),
        statistics: None,
    },
    Test {
        id: "gamma/MeshHTTPRouteWeight/70-30",
        suite: SuiteName::Gamma,
        test: "MeshHTTPRouteWeight",
        spec: SPEC,
        level: Level::Core,
        features: &["Mesh", "HTTPRoute"],
        needs: &[],
        intent: || weighted(70, 30),
        check: check!(|p| {
            // GAMMA's rule: 500 requests, each share within 5 points of its weight. One sample's
            // false-failure rate is 1.5e-2 (sd 2.05 points at p = 0.7); up to three samples
            // bring it to 3.2e-6 (GAMMA allows ten).
            let mut last = String::new();
            for _ in 0..3 {
                let t = p.tally("/", &[], 500).await?;
                let v1 = t.backend("echo-v1") as f64 / 500.0;
                let v2 = t.backend("echo-v2") as f64 / 500.0;
                if (v1 - 0.7).abs() <= 0.05 && (v2 - 0.3).abs() <= 0.05 {
                    return Ok(());
                }
                last = format!("shares v1 {v1:.3}, v2 {v2:.3} (want 0.70/0.30 ± 0.05); statuses {:?}", t.statuses);
            }
            Err(last)
        }),
        known_bad: Some(|| weighted(30, 70)),
        statistics: Some("500 requests, ±5 points, up to 3 samples: false failure 3.2e-6"),
    },
    Test {
        id: "gamma/MeshHTTPRouteRedirectHostAndStatus/hostname-and-status",
        suite: SuiteName::Gamma,
        test: "MeshHTTPRouteRedirectHostAndStatus",
        spec: SPEC,
        level: Level::Core,
        features: &["Mesh", "HTTPRoute"],
        needs: &[],
        intent: || redirects(301),
        check: check!(|p| {
            let port = p.listen.port();
            expect_redirect(&p, "/hostname-redirect", 301, &format!("http://example.org:{port}/hostname-redirect"))
                .await?;
            expect_redirect(&p, "/host-and-status", 301, &format!("http://example.org:{port}/host-and-status")).await?;
            // A Host without a port: the listener's port (Gateway API's rule), not 80.
            let reply = p.send("GET", "/hostname-redirect", &[("host", "echo")]).await?;
            let want = format!("http://example.org:{port}/hostname-redirect");
            ensure(reply.status == 301 && reply.header("location") == Some(want.as_str()), || {
                format!("Host `echo`: expected 301 to {want}, got {} to {:?}", reply.status, reply.header("location"))
            })
        }),
        known_bad: Some(|| redirects(302)),
        statistics: None,
    },
    Test {
        id: "gamma/MeshHTTPRouteRedirectPath/full-and-prefix",
        suite: SuiteName::Gamma,
        test: "MeshHTTPRouteRedirectPath",
        spec: SPEC,
        level: Level::Extended,
        features: &["Mesh", "HTTPRoute", "HTTPRoutePathRedirect"],
        needs: &[],
        intent: || redirects(301),
        check: check!(|p| {
            let host = p.host();
            expect_redirect(&p, "/full-path/x?q=1", 302, &format!("http://{host}/full-path-replaced?q=1")).await?;
            expect_redirect(&p, "/prefix/one", 302, &format!("http://{host}/replaced-prefix/one")).await
        }),
        known_bad: Some(|| {
            let mut i = redirects(301);
            for r in &mut i.routes {
                if let Action::Redirect(d) = &mut r.action {
                    d.path = None;
                }
            }
            i
        }),
        statistics: None,
    },
    Test {
        id: "gamma/MeshHTTPRouteRedirectPort/port",
        suite: SuiteName::Gamma,
        test: "MeshHTTPRouteRedirectPort",
        spec: SPEC,
        level: Level::Extended,
        features: &["Mesh", "HTTPRoute", "HTTPRoutePortRedirect"],
        needs: &[],
        intent: || redirects(301),
        check: check!(|p| { expect_redirect(&p, "/port", 302, "http://127.0.0.1:8083/port").await }),
        known_bad: Some(|| {
            let mut i = redirects(301);
            i.routes.retain(|r| r.name != "/port");
            i
        }),
        statistics: None,
    },
    Test {
        id: "gamma/MeshHTTPRouteSchemeRedirect/https-drops-the-port",
        suite: SuiteName::Gamma,
        test: "MeshHTTPRouteSchemeRedirect",
        spec: SPEC,
        level: Level::Extended,
        features: &["Mesh", "HTTPRoute", "HTTPRouteSchemeRedirect"],
        needs: &[],
        intent: || redirects(301),
        // A scheme without a port redirects to that scheme's well-known port, left out.
        check: check!(|p| { expect_redirect(&p, "/scheme", 302, "https://127.0.0.1/scheme").await }),
        known_bad: Some(|| {
            let mut i = redirects(301);
            i.routes.retain(|r| r.name != "/scheme");
            i
        }),
        statistics: None,
    },
    Test {
        id: "gamma/MeshHTTPRouteRedirectStatus/303-307-308",
        suite: SuiteName::Gamma,
        test: "MeshHTTPRoute303Redirect",
        spec: SPEC,
        level: Level::Extended,
        features: &[
            "Mesh",
            "HTTPRoute",
            "HTTPRoute303RedirectStatusCode",
            "HTTPRoute307RedirectStatusCode",
            "HTTPRoute308RedirectStatusCode",
        ],
        needs: &[],
        intent: || redirects(301),
        check: check!(|p| {
            let port = p.listen.port();
            for s in [303, 307, 308] {
                expect_redirect(&p, &format!("/{s}"), s, &format!("http://example.org:{port}/{s}")).await?;
            }
            Ok(())
        }),
        known_bad: Some(|| {
            let mut i = redirects(301);
            for r in &mut i.routes {
                if let Action::Redirect(d) = &mut r.action {
                    d.status = Some(302);
                }
            }
            i
        }),
        statistics: None,
    },
    Test {
        id: "gamma/MeshHTTPRouteRewritePath/prefix-and-full",
        suite: SuiteName::Gamma,
        test: "MeshHTTPRouteRewritePath",
        spec: SPEC,
        level: Level::Extended,
        features: &["Mesh", "HTTPRoute", "HTTPRoutePathRewrite"],
        needs: &[],
        intent: || rewrites(true),
        check: check!(|p| {
            for (sent, arrived) in
                [("/prefix/one/two", "/one/two"), ("/full/one/two", "/one"), ("/prefix/one?q=x", "/one?q=x")]
            {
                let reply = p.get(sent).await?;
                let path = reply.echo.as_ref().map(|e| e.path.as_str()).unwrap_or("");
                ensure(path == arrived, || format!("GET {sent}: the backend saw {path:?}, expected {arrived:?}"))?;
            }
            Ok(())
        }),
        known_bad: Some(|| rewrites(false)),
        statistics: None,
    },
    Test {
        id: "gamma/MeshHTTPRouteRequestHeaderModifier/set-add-remove",
        suite: SuiteName::Gamma,
        test: "MeshHTTPRouteRequestHeaderModifier",
        spec: SPEC,
        level: Level::Core,
        features: &["Mesh", "HTTPRoute"],
        needs: &[],
        intent: || request_headers(true),
        check: check!(|p| {
            let reply = p
                .send(
                    "GET",
                    "/",
                    &[("x-header-set", "original"), ("x-header-add", "original"), ("x-header-remove", "gone")],
                )
                .await?;
            let seen = |n| reply.upstream_header(n).map(str::to_owned);
            ensure(seen("x-header-set").as_deref() == Some("set-overwrites-values"), || {
                format!("x-header-set arrived as {:?}", seen("x-header-set"))
            })?;
            // The echo joins repeated fields with ", ".
            ensure(seen("x-header-add").as_deref() == Some("original, add-appends-values"), || {
                format!("x-header-add arrived as {:?}", seen("x-header-add"))
            })?;
            ensure(seen("x-header-remove").is_none(), || "x-header-remove arrived".into())
        }),
        known_bad: Some(|| request_headers(false)),
        statistics: None,
    },
    Test {
        id: "gamma/MeshHTTPRouteResponseHeaderModifier/set-add-remove",
        suite: SuiteName::Gamma,
        test: "MeshHTTPRouteResponseHeaderModifier",
        spec: SPEC,
        level: Level::Extended,
        features: &["Mesh", "HTTPRoute", "HTTPRouteResponseHeaderModification"],
        needs: &[],
        intent: || response_headers(true),
        check: check!(|p| {
            // The echo backend answers with the headers `header=` asks for.
            let reply = p
                .get("/?header=x-header-set:original&header=x-header-add:original&header=x-header-remove:gone")
                .await?;
            ensure(reply.header_all("x-header-set") == ["set-overwrites-values"], || {
                format!("x-header-set: {:?}", reply.header_all("x-header-set"))
            })?;
            ensure(reply.header_all("x-header-add") == ["original", "add-appends-values"], || {
                format!("x-header-add: {:?}", reply.header_all("x-header-add"))
            })?;
            ensure(reply.header("x-header-remove").is_none(), || "x-header-remove reached the client".into())
        }),
        known_bad: Some(|| response_headers(false)),
        statistics: None,
    },
    Test {
        id: "gamma/MeshHTTPRouteNamedRule/named-rules-route",
        suite: SuiteName::Gamma,
        test: "MeshHTTPRouteNamedRule",
        spec: SPEC,
        level: Level::Extended,
        features: &["Mesh", "HTTPRoute", "HTTPRouteNamedRouteRule"],
        needs: &[],
        intent: named_rules,
        check: check!(|p| {
            expect_backend(&p, "/v1", &[], "echo-v1").await?;
            expect_backend(&p, "/v2", &[], "echo-v2").await
        }),
        known_bad: Some(|| Intent { routes: vec![Route::to("name-v1", prefix("/"), "echo-v1")], ..named_rules() }),
        statistics: None,
    },
];
