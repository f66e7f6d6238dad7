//! One suite per Service Mesh Pattern, run through meshwork's pattern filters (proxy-wasm):
//! retries (conditions, budget, per-try timeout), circuit breaking (opens, answers locally,
//! half-opens, closes), timeouts, local rate limiting (exact counts), bulkheads (in-flight cap,
//! no leaked places) and fault injection (ratio within binomial bounds). The behaviour is
//! observed from outside: statuses, timings and what the echo backend counted.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Test, ensure};
use crate::check;
use crate::intent::{Action, Filter, Intent, PathMatch, Route};
use crate::outcome::{Level, SuiteName};

fn with_filter(name: &str, configuration: Value) -> Intent {
    Intent {
        backends: vec!["app".into()],
        routes: vec![Route::to("app", PathMatch::Prefix("/".into()), "app")],
        filters: vec![Filter { name: name.into(), configuration }],
        ..Intent::default()
    }
}

fn retry(configuration: Value) -> Intent {
    with_filter("retry", configuration)
}

async fn by_key(p: &crate::probe::Probe, key: &str) -> Result<u64, String> {
    Ok(p.backend_stats("app").await?["by_key"][key].as_u64().unwrap_or(0))
}

/// Sends `n` requests at once; their statuses, sorted.
async fn concurrent(p: &crate::probe::Probe, path: &str, n: usize) -> Result<Vec<u16>, String> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (p, path) = (p.clone(), path.to_owned());
            tokio::spawn(async move { p.get(&path).await.map(|r| r.status) })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.map_err(|e| e.to_string())??);
    }
    statuses.sort_unstable();
    Ok(statuses)
}

fn route_timeout(timeout: Duration) -> Intent {
    let mut route = Route::to("app", PathMatch::Prefix("/".into()), "app");
    route.timeout = Some(timeout);
    Intent { backends: vec!["app".into()], routes: vec![route], ..Intent::default() }
}

/// Backends `a` (up) and `b` (down until the check starts it), a route to the one the
/// health-check filter names in `x-target`, and the filter with this configuration.
fn health(active: Value, passive: Value) -> Intent {
    Intent {
        backends: vec!["a".into()],
        absent: vec!["b".into()],
        routes: vec![Route {
            action: Action::ClusterHeader("x-target".into()),
            ..Route::to("app", PathMatch::Prefix("/".into()), "")
        }],
        filters: vec![Filter {
            name: "health-check".into(),
            configuration: json!({
                "targets": [{"cluster": "a"}, {"cluster": "b"}],
                "route_header": "x-target",
                "active": active,
                "passive": passive,
            }),
        }],
        ..Intent::default()
    }
}

fn probing() -> Value {
    json!({"path": "/healthz", "interval": "200ms", "timeout": "100ms", "unhealthy_threshold": 1, "healthy_threshold": 1})
}

/// The global rate-limit filter asking the rate-limit service per `x-user`; `limits` is the
/// service's file (None: the service is down).
fn global(limits: Option<&str>, failure_mode_deny: bool) -> Intent {
    let mut intent = with_filter(
        "global-rate-limit",
        json!({
            "domain": "conformance",
            "rate_limit_service": {"cluster": "ratelimit"},
            "timeout": "250ms",
            "failure_mode_deny": failure_mode_deny,
            "rate_limits": [{"actions": [{"request_headers": {"header_name": "x-user", "descriptor_key": "user"}}]}],
        }),
    );
    match limits {
        Some(l) => intent.ratelimit_service = Some(l.to_owned()),
        None => intent.absent.push("ratelimit".into()),
    }
    intent
}

/// Per day, so that a test never straddles a window's end (windows are aligned to the clock).
fn per_day(n: u32) -> String {
    format!("domain: conformance\ndescriptors:\n  - key: user\n    rate_limit: {{unit: day, requests_per_unit: {n}}}\n")
}

fn backoff(base: &str) -> Intent {
    retry(json!({"mode": "callout", "max_retries": 3, "retry_on": ["5xx"], "timeout": "5s",
        "backoff": {"base": base, "max": "1s"}, "budget": null}))
}

fn half_open(probes: u32) -> Intent {
    with_filter("circuit-breaker", json!({"consecutive_failures": 2, "cool_down": "400ms", "half_open_probes": probes}))
}

fn breaker(consecutive_failures: u32) -> Intent {
    with_filter(
        "circuit-breaker",
        json!({"consecutive_failures": consecutive_failures, "cool_down": "500ms", "half_open_probes": 1}),
    )
}

pub static TESTS: &[Test] = &[
    Test {
        id: "patterns/retry/retries-5xx-until-success",
        suite: SuiteName::Patterns,
        test: "retry",
        spec: "Service Mesh Patterns: retry",
        level: Level::Core,
        features: &["retry"],
        needs: &["proxy-wasm"],
        intent: || retry(json!({"mode": "envoy", "max_retries": 2, "retry_on": ["5xx"], "budget": null})),
        check: check!(|p| {
            let reply = p.get("/?status=503&fail_first=2&key=r1").await?;
            let attempts = by_key(&p, "r1").await?;
            ensure(reply.status == 200 && attempts == 3, || {
                format!(
                    "fails twice then recovers: client saw {}, the backend {attempts} attempts (want 200, 3)",
                    reply.status
                )
            })?;
            // Never more than max_retries.
            let reply = p.get("/?status=503&key=r2").await?;
            let attempts = by_key(&p, "r2").await?;
            ensure(reply.status == 503 && attempts == 3, || {
                format!("always failing: client saw {}, the backend {attempts} attempts (want 503, 3)", reply.status)
            })
        }),
        known_bad: Some(|| retry(json!({"mode": "envoy", "max_retries": 0, "retry_on": ["5xx"], "budget": null}))),
        statistics: None,
    },
    Test {
        id: "patterns/retry/budget-never-exceeded",
        suite: SuiteName::Patterns,
        test: "retry",
        spec: "Service Mesh Patterns: retry budget",
        level: Level::Core,
        features: &["retry", "retry-budget"],
        needs: &["proxy-wasm"],
        intent: || {
            retry(json!({"mode": "envoy", "max_retries": 2, "retry_on": ["5xx"],
                "budget": {"ratio": 0.2, "min_per_second": 1, "window": "10s"}}))
        },
        check: check!(|p| {
            // 50 requests to an upstream that always fails: retries may be 20 % of requests
            // plus one a second.
            let start = Instant::now();
            let t = p.tally("/?status=503&key=b", &[], 50).await?;
            let seconds = start.elapsed().as_secs_f64().ceil() + 1.0;
            let retries = by_key(&p, "b").await?.saturating_sub(50);
            let allowed = (0.2 * 50.0 + seconds) as u64;
            ensure(retries <= allowed && t.status(503) == 50, || {
                format!("{retries} retries for 50 failing requests; the budget allows {allowed}")
            })
        }),
        known_bad: Some(|| retry(json!({"mode": "envoy", "max_retries": 2, "retry_on": ["5xx"], "budget": null}))),
        statistics: None,
    },
    Test {
        id: "patterns/retry/per-try-timeout",
        suite: SuiteName::Patterns,
        test: "retry",
        spec: "Service Mesh Patterns: retry",
        level: Level::Core,
        features: &["retry", "per-try-timeout"],
        needs: &["proxy-wasm"],
        intent: || {
            retry(
                json!({"mode": "envoy", "max_retries": 2, "retry_on": ["5xx"], "per_try_timeout": "100ms", "budget": null}),
            )
        },
        check: check!(|p| {
            // The first try hangs for 2 s; the second is answered at once.
            let start = Instant::now();
            let reply = p.get("/?delay=2s&fail_first=1&key=t").await?;
            let took = start.elapsed();
            ensure(reply.status == 200 && took < Duration::from_millis(1500), || {
                format!("{} after {took:?}: a hung try must be abandoned after 100 ms and retried", reply.status)
            })
        }),
        known_bad: Some(|| retry(json!({"mode": "envoy", "max_retries": 2, "retry_on": ["5xx"], "budget": null}))),
        statistics: None,
    },
    Test {
        id: "patterns/circuit-breaking/opens-half-opens-closes",
        suite: SuiteName::Patterns,
        test: "circuit-breaking",
        spec: "Service Mesh Patterns: circuit breaker",
        level: Level::Core,
        features: &["circuit-breaking"],
        needs: &["proxy-wasm"],
        intent: || breaker(3),
        check: check!(|p| {
            for _ in 0..3 {
                p.get("/?status=503").await?;
            }
            let before = p.backend_requests("app").await?;
            let open = p.get("/").await?;
            let after = p.backend_requests("app").await?;
            ensure(open.status == 503 && after == before, || {
                format!(
                    "after 3 failures: {} and the backend saw {} more (want a local 503)",
                    open.status,
                    after - before
                )
            })?;
            tokio::time::sleep(Duration::from_millis(650)).await;
            let probe = p.get("/").await?;
            ensure(probe.status == 200 && probe.backend() == "app", || {
                format!("after the cool-down the probe got {} (want the backend's 200)", probe.status)
            })?;
            let closed = p.tally("/", &[], 5).await?;
            ensure(closed.backend("app") == 5, || format!("after a good probe: {:?} (want closed)", closed.statuses))
        }),
        known_bad: Some(|| breaker(1000)),
        statistics: None,
    },
    Test {
        id: "patterns/circuit-breaking/failed-probe-reopens",
        suite: SuiteName::Patterns,
        test: "circuit-breaking",
        spec: "Service Mesh Patterns: circuit breaker",
        level: Level::Core,
        features: &["circuit-breaking"],
        needs: &["proxy-wasm"],
        intent: || breaker(3),
        check: check!(|p| {
            for _ in 0..3 {
                p.get("/?status=503").await?;
            }
            tokio::time::sleep(Duration::from_millis(650)).await;
            let probe = p.get("/?status=503").await?;
            let before = p.backend_requests("app").await?;
            let again = p.get("/").await?;
            let after = p.backend_requests("app").await?;
            ensure(probe.backend() == "app" && again.status == 503 && after == before, || {
                format!(
                    "a failed probe must open it again: next answer {} with {} backend requests",
                    again.status,
                    after - before
                )
            })
        }),
        known_bad: Some(|| breaker(1000)),
        statistics: None,
    },
    Test {
        id: "patterns/timeouts/deadline",
        suite: SuiteName::Patterns,
        test: "timeouts",
        spec: "Service Mesh Patterns: timeout",
        level: Level::Core,
        features: &["timeouts"],
        needs: &["proxy-wasm"],
        intent: || with_filter("timeout", json!({"mode": "envoy", "timeout": "200ms"})),
        check: check!(|p| {
            let start = Instant::now();
            let reply = p.get("/?delay=3s").await?;
            let took = start.elapsed();
            ensure(
                reply.status == 504 && took >= Duration::from_millis(150) && took < Duration::from_millis(2000),
                || format!("{} after {took:?} (want 504 at 200 ms)", reply.status),
            )?;
            let fast = p.get("/?delay=10ms").await?;
            ensure(fast.status == 200, || format!("a fast request got {}", fast.status))
        }),
        known_bad: Some(|| with_filter("timeout", json!({"mode": "envoy", "timeout": "10s"}))),
        statistics: None,
    },
    Test {
        id: "patterns/timeouts/route-deadline",
        suite: SuiteName::Patterns,
        test: "timeouts",
        spec: "Service Mesh Patterns: timeout (the route's own, as a mesh's route table sets it)",
        level: Level::Core,
        features: &["timeouts"],
        needs: &[],
        intent: || route_timeout(Duration::from_millis(200)),
        check: check!(|p| {
            let start = Instant::now();
            let reply = p.get("/?delay=3s").await?;
            let took = start.elapsed();
            ensure(
                reply.status == 504 && took >= Duration::from_millis(150) && took < Duration::from_millis(2000),
                || format!("{} after {took:?} (want 504 at 200 ms)", reply.status),
            )?;
            let fast = p.get("/?delay=10ms").await?;
            ensure(fast.status == 200, || format!("a fast request got {}", fast.status))
        }),
        known_bad: Some(|| route_timeout(Duration::from_secs(10))),
        statistics: None,
    },
    Test {
        id: "patterns/rate-limiting/local-exact-count",
        suite: SuiteName::Patterns,
        test: "rate-limiting",
        spec: "Service Mesh Patterns: rate limiting (local)",
        level: Level::Core,
        features: &["local-rate-limiting"],
        needs: &["proxy-wasm"],
        intent: || with_filter("local-rate-limit", json!({"rate": 5, "period": "60s", "burst": 5})),
        check: check!(|p| {
            let t = p.tally("/", &[], 8).await?;
            ensure(t.status(200) == 5 && t.status(429) == 3 && t.backend("app") == 5, || {
                format!("8 requests against 5 per minute: {:?}", t.statuses)
            })
        }),
        known_bad: Some(|| with_filter("local-rate-limit", json!({"rate": 100, "period": "60s", "burst": 100}))),
        statistics: None,
    },
    Test {
        id: "patterns/bulkhead/in-flight-cap-and-no-leak",
        suite: SuiteName::Patterns,
        test: "bulkhead",
        spec: "Service Mesh Patterns: bulkhead",
        level: Level::Core,
        features: &["bulkhead"],
        needs: &["proxy-wasm"],
        intent: || with_filter("bulkhead", json!({"max_concurrent": 2, "max_queued": 0})),
        check: check!(|p| {
            let statuses = concurrent(&p, "/?delay=600ms", 6).await?;
            ensure(statuses == [200, 200, 503, 503, 503, 503], || {
                format!("6 slow requests against 2 places: {statuses:?}")
            })?;
            // The places are free again.
            let again = concurrent(&p, "/?delay=100ms", 2).await?;
            ensure(again == [200, 200], || format!("after they ended: {again:?} (a place leaked)"))
        }),
        known_bad: Some(|| with_filter("bulkhead", json!({"max_concurrent": 10, "max_queued": 0}))),
        statistics: None,
    },
    Test {
        id: "patterns/fault-injection/abort-ratio",
        suite: SuiteName::Patterns,
        test: "fault-injection",
        spec: "Service Mesh Patterns: fault injection",
        level: Level::Core,
        features: &["fault-injection"],
        needs: &["proxy-wasm"],
        intent: || with_filter("fault-injection", json!({"abort": {"http_status": 503, "percentage": 50}})),
        check: check!(|p| {
            // 400 requests: the aborted share is within 3.89 sd (±9.7 points) of 0.5 but for
            // 1e-4 of samples; aborted requests never reach the backend.
            let t = p.tally("/", &[], 400).await?;
            let share = t.status(503) as f64 / 400.0;
            let reached = p.backend_requests("app").await?;
            ensure((share - 0.5).abs() <= 0.097 && reached as usize == t.status(200), || {
                format!(
                    "aborted share {share:.3} (want 0.5 ± 0.097); backend saw {reached}, clients {} × 200",
                    t.status(200)
                )
            })
        }),
        known_bad: Some(|| with_filter("fault-injection", json!({"abort": {"http_status": 503, "percentage": 100}}))),
        statistics: Some("400 requests, ±9.7 points at p = 0.5: false failure 1e-4"),
    },
    Test {
        id: "patterns/retry/backoff-spacing",
        suite: SuiteName::Patterns,
        test: "retry",
        spec: "Service Mesh Patterns: retry (jittered exponential back-off)",
        level: Level::Core,
        features: &["retry", "backoff"],
        needs: &["proxy-wasm"],
        intent: || backoff("100ms"),
        check: check!(|p| {
            // Three retries after 100 ms-based fully jittered exponential back-off: the waits are
            // uniform below 100, 300 and 700 ms (mean 550 ms in all, sd 222 ms). Ten requests'
            // mean is above 277 ms but for 1e-4 of samples, and none can wait over 1.1 s.
            let tasks: Vec<_> = (0..10)
                .map(|i| {
                    let p = p.clone();
                    tokio::spawn(async move {
                        let start = Instant::now();
                        let r = p.get(&format!("/?status=503&key=backoff{i}")).await;
                        r.map(|r| (r.status, start.elapsed()))
                    })
                })
                .collect();
            let mut took = Vec::new();
            for t in tasks {
                let (status, elapsed) = t.await.map_err(|e| e.to_string())??;
                ensure(status == 503, || format!("an always-failing request ended {status}"))?;
                took.push(elapsed);
            }
            let mean = took.iter().sum::<Duration>() / took.len() as u32;
            let longest = took.iter().max().copied().unwrap_or_default();
            for i in 0..10 {
                let attempts = by_key(&p, &format!("backoff{i}")).await?;
                ensure(attempts == 4, || format!("request {i}: {attempts} attempts (want 1 + 3 retries)"))?;
            }
            ensure(mean >= Duration::from_millis(277) && longest < Duration::from_millis(1600), || {
                format!("mean time for 3 retries {mean:?} (want ≥ 277 ms), longest {longest:?} (want < 1.1 s + slack)")
            })
        }),
        known_bad: Some(|| backoff("1ms")),
        statistics: Some("10 requests of 3 retries: mean ≥ 277 ms (3.89 sd below 550 ms): false failure 1e-4"),
    },
    Test {
        id: "patterns/circuit-breaking/half-open-probe-count",
        suite: SuiteName::Patterns,
        test: "circuit-breaking",
        spec: "Service Mesh Patterns: circuit breaker (half-open)",
        level: Level::Core,
        features: &["circuit-breaking"],
        needs: &["proxy-wasm"],
        intent: || half_open(2),
        check: check!(|p| {
            for _ in 0..2 {
                p.get("/?status=503").await?;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            let before = p.backend_requests("app").await?;
            // Half-open admits exactly two probes at once; the rest are answered locally.
            let statuses = concurrent(&p, "/?delay=300ms", 5).await?;
            let probes = p.backend_requests("app").await? - before;
            ensure(probes == 2 && statuses == [200, 200, 503, 503, 503], || {
                format!("half-open with 2 probes: {probes} reached the backend, statuses {statuses:?}")
            })
        }),
        known_bad: Some(|| half_open(5)),
        statistics: None,
    },
    Test {
        id: "patterns/bulkhead/no-leak-on-reset",
        suite: SuiteName::Patterns,
        test: "bulkhead",
        spec: "Service Mesh Patterns: bulkhead",
        level: Level::Core,
        features: &["bulkhead"],
        needs: &["proxy-wasm"],
        intent: || with_filter("bulkhead", json!({"max_concurrent": 2, "max_queued": 0})),
        check: check!(|p| {
            // Two clients take both places and hang up before their answers.
            let abandoned: Vec<_> = (0..2)
                .map(|_| {
                    let p = p.clone();
                    tokio::spawn(
                        async move { tokio::time::timeout(Duration::from_millis(150), p.get("/?delay=2s")).await },
                    )
                })
                .collect();
            for a in abandoned {
                let _ = a.await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            let again = concurrent(&p, "/?delay=100ms", 2).await?;
            ensure(again == [200, 200], || format!("after two clients reset: {again:?} (a place leaked)"))
        }),
        known_bad: Some(|| with_filter("bulkhead", json!({"max_concurrent": 1, "max_queued": 0}))),
        statistics: None,
    },
    Test {
        id: "patterns/health-checking/active-ejection-and-return",
        suite: SuiteName::Patterns,
        test: "health-checking",
        spec: "Service Mesh Patterns: health checking",
        level: Level::Core,
        features: &["health-checking"],
        needs: &["proxy-wasm"],
        intent: || health(probing(), Value::Null),
        check: check!(|p| {
            // b is down: after a probe round, every request goes to a.
            tokio::time::sleep(Duration::from_millis(600)).await;
            let t = p.tally("/", &[], 20).await?;
            ensure(t.backend("a") == 20, || {
                format!("with b down: {:?} {:?} (want all 20 on a)", t.backends, t.statuses)
            })?;
            // b comes back: within a few probe rounds it takes requests again.
            p.start_backend("b").await?;
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let t = p.tally("/", &[], 4).await?;
                if t.backend("b") > 0 && t.status(200) == 4 {
                    return Ok(());
                }
                if Instant::now() > deadline {
                    return Err(format!("b came back but got no request within 5 s: {:?}", t.backends));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }),
        known_bad: Some(|| health(Value::Null, Value::Null)),
        statistics: None,
    },
    Test {
        id: "patterns/health-checking/passive-ejection",
        suite: SuiteName::Patterns,
        test: "health-checking",
        spec: "Service Mesh Patterns: outlier detection",
        level: Level::Core,
        features: &["health-checking", "outlier-detection"],
        needs: &["proxy-wasm"],
        intent: || {
            health(Value::Null, json!({"consecutive_5xx": 2, "base_ejection_time": "30s", "max_ejection_percent": 100}))
        },
        check: check!(|p| {
            // Requests alternate between a and the dead b until b has failed twice in a row.
            let first = p.tally("/", &[], 10).await?;
            let then = p.tally("/", &[], 10).await?;
            ensure(first.status(503) <= 2 && then.backend("a") == 10, || {
                format!(
                    "first 10: {:?}, next 10: {:?} (b must be ejected after 2 failures)",
                    first.statuses, then.backends
                )
            })
        }),
        known_bad: Some(|| health(Value::Null, Value::Null)),
        statistics: None,
    },
    Test {
        id: "patterns/rate-limiting/global-exact-count",
        suite: SuiteName::Patterns,
        test: "rate-limiting",
        spec: "Service Mesh Patterns: rate limiting (global, Envoy's rate-limit service API)",
        level: Level::Core,
        features: &["global-rate-limiting"],
        needs: &["proxy-wasm"],
        intent: || global(Some(&per_day(5)), false),
        check: check!(|p| {
            let alice = p.tally("/", &[("x-user", "alice")], 8).await?;
            let bob = p.tally("/", &[("x-user", "bob")], 2).await?;
            ensure(alice.status(200) == 5 && alice.status(429) == 3 && bob.status(200) == 2, || {
                format!("5 a day per user: alice {:?}, bob {:?}", alice.statuses, bob.statuses)
            })
        }),
        known_bad: Some(|| global(Some(&per_day(100)), false)),
        statistics: None,
    },
    Test {
        id: "patterns/rate-limiting/global-fails-closed-when-asked",
        suite: SuiteName::Patterns,
        test: "rate-limiting",
        spec: "Service Mesh Patterns: rate limiting (global; failure mode)",
        level: Level::Core,
        features: &["global-rate-limiting"],
        needs: &["proxy-wasm"],
        intent: || global(None, true),
        check: check!(|p| {
            let t = p.tally("/", &[("x-user", "alice")], 3).await?;
            ensure(t.status(500) == 3 && p.backend_requests("app").await? == 0, || {
                format!("service down, failure_mode_deny: {:?} (want 500s, nothing upstream)", t.statuses)
            })
        }),
        known_bad: Some(|| global(None, false)),
        statistics: None,
    },
    Test {
        id: "patterns/rate-limiting/global-fails-open-by-default",
        suite: SuiteName::Patterns,
        test: "rate-limiting",
        spec: "Service Mesh Patterns: rate limiting (global; failure mode)",
        level: Level::Core,
        features: &["global-rate-limiting"],
        needs: &["proxy-wasm"],
        intent: || global(None, false),
        check: check!(|p| {
            let t = p.tally("/", &[("x-user", "alice")], 3).await?;
            ensure(t.status(200) == 3, || format!("service down, fail open: {:?} (want 200s)", t.statuses))
        }),
        known_bad: Some(|| global(None, true)),
        statistics: None,
    },
];
