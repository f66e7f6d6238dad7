//! SMI (archived; its successor is GAMMA): v1alpha4 TrafficSplit, v1alpha3 TrafficTarget with
//! HTTPRouteGroup (access control by path regex, method and header; by identity), and
//! TrafficMetrics. The service `website` has versions `website-v1` and `website-v2`; each
//! object is expressed as the routes it means.

use super::{Test, ensure};
use crate::check;
use crate::intent::{Action, Intent, PathMatch, Route};
use crate::outcome::{Level, SuiteName};

const SPLIT: &str = "SMI traffic-split v1alpha4";
const ACCESS: &str = "SMI traffic-access v1alpha3, traffic-specs v1alpha4 HTTPRouteGroup";
const METRICS: &str = "SMI traffic-metrics v1alpha1";

fn website(routes: Vec<Route>) -> Intent {
    Intent { backends: vec!["website-v1".into(), "website-v2".into()], routes, ..Intent::default() }
}

/// TrafficSplit `{service: website, backends: [{website-v1, w1}, {website-v2, w2}]}`.
fn split(w1: u32, w2: u32) -> Intent {
    let mut r = Route::to("website", PathMatch::Prefix("/".into()), "website-v1");
    r.action = Action::Backends(vec![("website-v1".into(), w1), ("website-v2".into(), w2)]);
    website(vec![r])
}

/// TrafficSplit with `matches: [HTTPRouteGroup canary]`: only requests the group matches are
/// split (here all to v2); the rest go to the root service (v1).
fn split_with_matches(use_match: bool) -> Intent {
    let mut canary = Route::to("canary", PathMatch::Prefix("/".into()), "website-v2");
    if use_match {
        canary.headers = vec![("x-canary".into(), "yes".into())];
    }
    website(vec![canary, Route::to("root", PathMatch::Prefix("/".into()), "website-v1")])
}

/// TrafficTarget allowing HTTPRouteGroup matches: `metrics` (GET /metrics), `api` (any method
/// on /api/.*), `admin` (header x-user-type: admin on /admin/.*). Everything else is denied
/// (403), as SMI's deny-by-default access mode.
fn access(enforced: bool) -> Intent {
    let mut metrics = Route::to("metrics", PathMatch::Regex("/metrics".into()), "website-v1");
    metrics.methods = vec!["GET".into()];
    let api = Route::to("api", PathMatch::Regex("/api/.*".into()), "website-v1");
    let mut admin = Route::to("admin", PathMatch::Regex("/admin/.*".into()), "website-v1");
    admin.headers = vec![("x-user-type".into(), "admin".into())];
    let deny = if enforced {
        Route::respond("deny", PathMatch::Regex(".*".into()), 403)
    } else {
        Route::to("deny", PathMatch::Regex(".*".into()), "website-v1")
    };
    website(vec![metrics, api, admin, deny])
}

async fn status_of(
    p: &crate::probe::Probe,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    want: u16,
) -> Result<(), String> {
    let reply = p.send(method, path, headers).await?;
    ensure(reply.status == want, || format!("{method} {path} {headers:?}: expected {want}, got {}", reply.status))
}

pub static TESTS: &[Test] = &[
    Test {
        id: "smi/TrafficSplit/weights-80-20",
        suite: SuiteName::Smi,
        test: "TrafficSplit",
        spec: SPLIT,
        level: Level::Core,
        features: &["TrafficSplit"],
        needs: &[],
        intent: || split(80, 20),
        check: check!(|p| {
            // 400 requests: the v1 share is within 3.89 standard deviations (±7.8 points) of
            // 0.8 but for 1e-4 of samples.
            let t = p.tally("/", &[], 400).await?;
            let share = t.backend("website-v1") as f64 / 400.0;
            ensure((share - 0.8).abs() <= 0.078 && t.backend("website-v2") > 0, || {
                format!("website-v1 share {share:.3} (want 0.80 ± 0.078); {:?}", t.backends)
            })
        }),
        known_bad: Some(|| split(20, 80)),
        statistics: Some("400 requests, ±7.8 points at p = 0.8: false failure 1e-4"),
    },
    Test {
        id: "smi/TrafficSplit/zero-weight-gets-nothing",
        suite: SuiteName::Smi,
        test: "TrafficSplit",
        spec: SPLIT,
        level: Level::Core,
        features: &["TrafficSplit"],
        needs: &[],
        intent: || split(100, 0),
        check: check!(|p| {
            let t = p.tally("/", &[], 100).await?;
            ensure(t.backend("website-v1") == 100, || format!("{:?}: website-v2 has weight 0", t.backends))
        }),
        known_bad: Some(|| split(50, 50)),
        statistics: None,
    },
    Test {
        id: "smi/TrafficSplit/matches-limit-the-split",
        suite: SuiteName::Smi,
        test: "TrafficSplit",
        spec: SPLIT,
        level: Level::Core,
        features: &["TrafficSplit", "HTTPRouteGroup"],
        needs: &[],
        intent: || split_with_matches(true),
        check: check!(|p| {
            let canary = p.tally("/", &[("x-canary", "yes")], 20).await?;
            let rest = p.tally("/", &[], 20).await?;
            ensure(canary.backend("website-v2") == 20 && rest.backend("website-v1") == 20, || {
                format!("matching requests went to {:?}, the others to {:?}", canary.backends, rest.backends)
            })
        }),
        known_bad: Some(|| split_with_matches(false)),
        statistics: None,
    },
    Test {
        id: "smi/TrafficTarget/path-regex-allows",
        suite: SuiteName::Smi,
        test: "TrafficTarget",
        spec: ACCESS,
        level: Level::Core,
        features: &["TrafficTarget", "HTTPRouteGroup"],
        needs: &[],
        intent: || access(true),
        check: check!(|p| {
            status_of(&p, "GET", "/api/items", &[], 200).await?;
            status_of(&p, "GET", "/metrics", &[], 200).await?;
            status_of(&p, "GET", "/private", &[], 403).await?;
            status_of(&p, "GET", "/metrics/more", &[], 403).await
        }),
        known_bad: Some(|| access(false)),
        statistics: None,
    },
    Test {
        id: "smi/TrafficTarget/methods",
        suite: SuiteName::Smi,
        test: "TrafficTarget",
        spec: ACCESS,
        level: Level::Core,
        features: &["TrafficTarget", "HTTPRouteGroup"],
        needs: &[],
        intent: || access(true),
        check: check!(|p| {
            status_of(&p, "GET", "/metrics", &[], 200).await?;
            status_of(&p, "DELETE", "/metrics", &[], 403).await?;
            status_of(&p, "DELETE", "/api/items", &[], 200).await
        }),
        known_bad: Some(|| {
            let mut i = access(true);
            i.routes[0].methods.clear();
            i
        }),
        statistics: None,
    },
    Test {
        id: "smi/TrafficTarget/headers",
        suite: SuiteName::Smi,
        test: "TrafficTarget",
        spec: ACCESS,
        level: Level::Core,
        features: &["TrafficTarget", "HTTPRouteGroup"],
        needs: &[],
        intent: || access(true),
        check: check!(|p| {
            status_of(&p, "GET", "/admin/users", &[("x-user-type", "admin")], 200).await?;
            status_of(&p, "GET", "/admin/users", &[("x-user-type", "guest")], 403).await?;
            status_of(&p, "GET", "/admin/users", &[], 403).await
        }),
        known_bad: Some(|| {
            let mut i = access(true);
            i.routes[2].headers.clear();
            i
        }),
        statistics: None,
    },
    Test {
        id: "smi/TrafficTarget/source-identity",
        suite: SuiteName::Smi,
        test: "TrafficTarget",
        spec: ACCESS,
        level: Level::Core,
        features: &["TrafficTarget"],
        // Sources are ServiceAccounts: the client's mTLS identity decides. No target here
        // issues mesh identities, so this is reported as unsupported everywhere.
        needs: &["mtls-identity"],
        intent: || access(true),
        check: check!(|p| {
            let _ = p;
            Err("identity checks need mTLS identities".into())
        }),
        known_bad: None,
        statistics: None,
    },
    Test {
        id: "smi/TrafficMetrics/edge-counts",
        suite: SuiteName::Smi,
        test: "TrafficMetrics",
        spec: METRICS,
        level: Level::Core,
        features: &["TrafficMetrics"],
        needs: &["metrics"],
        intent: || {
            website(vec![
                Route::to("v1", PathMatch::Prefix("/v1".into()), "website-v1"),
                Route::to("v2", PathMatch::Prefix("/v2".into()), "website-v2"),
            ])
        },
        check: check!(|p| {
            // The metrics of each edge (proxy → backend) count exactly the requests sent on it.
            p.tally("/v1", &[], 30).await?;
            p.tally("/v2", &[], 20).await?;
            let metrics = p.metrics().await?;
            for (cluster, want) in [("website-v1", 30.0), ("website-v2", 20.0)] {
                let got = crate::probe::sample(&metrics, "meshwork_upstream_rq_time_us_count", &[("cluster", cluster)]);
                ensure(got == Some(want), || {
                    format!("{cluster}: the metrics count {got:?} requests, the suite sent {want}")
                })?;
            }
            Ok(())
        }),
        known_bad: Some(|| {
            website(vec![
                Route::to("v1", PathMatch::Prefix("/v1".into()), "website-v2"),
                Route::to("v2", PathMatch::Prefix("/v2".into()), "website-v1"),
            ])
        }),
        statistics: None,
    },
];
