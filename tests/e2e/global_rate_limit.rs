//! The global-rate-limit filter through `meshwork run`, against `meshwork ratelimit-service`
//! (in memory, or sharing a real redis-server) and the sample app: exact limits across
//! workers and across proxies, limits per descriptor value, the failure modes, and the
//! service's own API and configuration errors.

use std::net::SocketAddr;
use std::time::Duration;

use meshwork_e2e::*;
use serde_json::{Value, json};

const HOUR: u64 = 3600;

/// A proxy with two workers, the sample app as its route and the filter in front, reaching
/// the rate-limit service at `service`.
fn limited_proxy(up: &Upstream, service: SocketAddr, config: Value) -> Proxy {
    proxy(&format!(
        "workers: 2\nclusters: [{}, {{name: ratelimit, endpoints: [\"{service}\"]}}]\nroute: {{cluster: app, name: app}}\nfilters:\n  - name: grl\n    module: {}\n    configuration: {config}\n",
        cluster("app", up),
        wasm("global-rate-limit").display(),
    ))
}

/// The filter's configuration: domain `edge`, the service at cluster `ratelimit`, a timeout
/// generous enough for a loaded test machine, and `rate_limits`; `extra` adds or overrides.
fn filter_config(rate_limits: Value, extra: Value) -> Value {
    let mut config = json!({
        "domain": "edge",
        "rate_limit_service": {"cluster": "ratelimit"},
        "timeout": "5s",
        "rate_limits": rate_limits,
    });
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        config[k] = v;
    }
    config
}

fn generic_rule(value: &str) -> Value {
    json!([{"actions": [{"generic_key": {"descriptor_value": value}}]}])
}

fn statuses(results: &[Result<Reply, String>]) -> Vec<u16> {
    results.iter().map(|r| r.as_ref().expect("every request is answered").status).collect()
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

fn outcome(p: &Proxy, outcome: &str) -> i64 {
    p.stat_sum("meshwork_global_rate_limit_requests_total", &[("outcome", outcome)])
}

/// Envoy's rate-limit gRPC client, as the filter speaks it with `protocol: grpc`: the same
/// exact limit and headers, over `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`
/// to the service's gRPC face; a service that is gone is a failure the failure mode decides.
#[test]
fn the_grpc_form_of_the_api_limits_the_same() {
    let up = upstream("app");
    let service = ratelimit_service(
        "domain: edge\ndescriptors:\n  - key: generic_key\n    value: all\n    rate_limit: {unit: hour, requests_per_unit: 5}\n",
        None,
    );
    let dead = refusing_port();
    let config = |cluster: &str, deny: bool| {
        filter_config(
            generic_rule("all"),
            json!({"rate_limit_service": {"cluster": cluster, "protocol": "grpc"}, "failure_mode_deny": deny}),
        )
    };
    let p = proxy(&format!(
        "workers: 2\nclusters: [{}, {{name: rls, endpoints: [\"{}\"], http2: true}}]\nroute: {{cluster: app}}\nfilters:\n  - {{name: grl, module: {}, configuration: {}}}\n",
        cluster("app", &up),
        service.addr,
        wasm("global-rate-limit").display(),
        config("rls", false),
    ));
    fresh_window(HOUR, Duration::from_secs(60));
    let codes = statuses(&storm(12, 4, &p.url("/limited"), &[]));
    assert_eq!((count(&codes, 200), count(&codes, 429)), (5, 7), "{codes:?}");
    let limited = get(&p.url("/limited"), &[]);
    assert_eq!(limited.header("x-ratelimit-limit"), Some("5, 5;w=3600"));
    // The same filter against a service that is not there: the failure mode applies.
    let down = proxy(&format!(
        "clusters: [{}, {{name: dead, endpoints: [\"{}\"], http2: true}}]\nroute: {{cluster: app}}\nfilters:\n  - {{name: open, module: {m}, configuration: {}}}\n",
        cluster("app", &up),
        dead.addr,
        config("dead", false),
        m = wasm("global-rate-limit").display(),
    ));
    assert_eq!(get(&down.url("/"), &[]).status, 200, "failure_mode_deny false lets it through");
    assert_eq!(outcome(&down, "failed"), 1);
}

#[test]
fn the_limit_is_exact_across_two_workers() {
    let up = upstream("app");
    let service = ratelimit_service(
        "domain: edge\ndescriptors:\n  - key: generic_key\n    value: all\n    rate_limit: {unit: hour, requests_per_unit: 10}\n",
        None,
    );
    let p = limited_proxy(&up, service.addr, filter_config(generic_rule("all"), json!({})));
    fresh_window(HOUR, Duration::from_secs(60));
    let results = storm(40, 8, &p.url("/limited"), &[]);
    let codes = statuses(&results);
    assert_eq!(count(&codes, 200), 10, "exactly the limit passes: {codes:?}");
    assert_eq!(count(&codes, 429), 30);
    assert_eq!(up.requests(), 10, "only admitted requests reached the upstream");
    // Each admitted request saw its own count: remaining 9, 8, ... 0, once each.
    let mut remaining: Vec<u32> = results
        .iter()
        .flatten()
        .filter(|r| r.status == 200)
        .map(|r| r.header("x-ratelimit-remaining").expect("draft headers on admitted responses").parse().unwrap())
        .collect();
    remaining.sort_unstable();
    assert_eq!(remaining, (0..10).collect::<Vec<u32>>());
    let limited = results.iter().flatten().find(|r| r.status == 429).unwrap();
    assert_eq!(limited.header("x-envoy-ratelimited"), Some("true"));
    assert_eq!(limited.header("x-ratelimit-limit"), Some("10, 10;w=3600"));
    assert_eq!(limited.header("x-ratelimit-remaining"), Some("0"));
    let reset: u64 = limited.header("x-ratelimit-reset").unwrap().parse().unwrap();
    assert!(reset > 0 && reset <= HOUR, "{reset}");
    for w in ["0", "1"] {
        assert!(p.stat("meshwork_downstream_cx_total", &[("worker", w)]).unwrap() > 0, "worker {w} served nothing");
    }
    assert_eq!((outcome(&p, "allowed"), outcome(&p, "limited"), outcome(&p, "failed")), (10, 30, 0));
}

#[test]
fn limits_apply_per_descriptor_value() {
    let up = upstream("app");
    let service = ratelimit_service(
        "domain: edge
descriptors:
  - key: user
    rate_limit: {unit: hour, requests_per_unit: 3}
  - key: user
    value: vip
    rate_limit: {unit: hour, requests_per_unit: 5}
",
        None,
    );
    let rules = json!([{"actions": [{"request_headers": {"header_name": "x-user", "descriptor_key": "user"}}]}]);
    let p = limited_proxy(&up, service.addr, filter_config(rules, json!({})));
    fresh_window(HOUR, Duration::from_secs(60));
    let codes = |user: Option<&str>, n: usize| -> Vec<u16> {
        let key = user.unwrap_or("anonymous");
        let headers: Vec<(&str, &str)> = user.map(|u| ("x-user", u)).into_iter().collect();
        statuses(&storm(n, 4, &p.url(&format!("/?key={key}")), &headers))
    };
    let alice = codes(Some("alice"), 6);
    let bob = codes(Some("bob"), 6);
    let vip = codes(Some("vip"), 8);
    let anonymous = codes(None, 4);
    assert_eq!((count(&alice, 200), count(&alice, 429)), (3, 3), "any user: 3 each");
    assert_eq!((count(&bob, 200), count(&bob, 429)), (3, 3), "bob has his own count");
    assert_eq!((count(&vip, 200), count(&vip, 429)), (5, 3), "the value-specific limit wins");
    assert_eq!(count(&anonymous, 200), 4, "no header, no descriptor, no limit");
    let by_key = &up.stats()["by_key"];
    assert_eq!([&by_key["alice"], &by_key["bob"], &by_key["vip"], &by_key["anonymous"]], [3, 3, 5, 4]);
    assert_eq!(outcome(&p, "allowed"), 11, "requests without a descriptor are not sent to the service");
}

#[test]
fn nested_descriptors_and_several_rules() {
    let up = upstream("app");
    let service = ratelimit_service(
        "domain: edge
descriptors:
  - key: remote_address
    descriptors:
      - key: method
        value: POST
        rate_limit: {unit: hour, requests_per_unit: 2}
  - key: header_match
    value: admin
    rate_limit: {unit: hour, requests_per_unit: 1}
",
        None,
    );
    let rules = json!([
        {"actions": [{"remote_address": {}}, {"request_headers": {"header_name": ":method", "descriptor_key": "method"}}]},
        {"actions": [{"header_value_match": {"descriptor_value": "admin", "headers": [{"name": ":path", "prefix_match": "/admin"}]}}]}
    ]);
    let p = limited_proxy(&up, service.addr, filter_config(rules, json!({})));
    fresh_window(HOUR, Duration::from_secs(60));
    let posts: Vec<u16> = (0..4).map(|_| post(&p.url("/orders?key=post"), &[], b"{}").status).collect();
    assert_eq!(posts, [200, 200, 429, 429], "POSTs from this address: 2 an hour");
    let gets: Vec<u16> = (0..4).map(|_| get(&p.url("/orders?key=get"), &[]).status).collect();
    assert_eq!(gets, [200; 4], "the tree has no limit for GET: the descriptor reaches no limit");
    let admin: Vec<u16> = (0..3).map(|_| get(&p.url("/admin/x?key=admin"), &[]).status).collect();
    assert_eq!(admin, [200, 429, 429], "a second rule adds a descriptor; any over-limit descriptor limits");
    let by_key = &up.stats()["by_key"];
    assert_eq!([&by_key["post"], &by_key["get"], &by_key["admin"]], [2, 4, 1]);
}

#[test]
fn failure_mode_allow_or_deny_when_the_service_cannot_decide() {
    let up = upstream("app");
    // Accepts connections (the kernel completes them) and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down = refusing_port();
    // Not a rate-limit service: the sample app answers bytes (`size`), or echoes the request as
    // JSON, which has no overall code.
    let cases = [
        ("down", down.addr, "/json", "answered 503"),
        ("silent", silent.local_addr().unwrap(), "/json", "answered 504"),
        ("not JSON", up.addr, "/json?size=12", "not a RateLimitResponse"),
        ("no code", up.addr, "/json", "overall code UNKNOWN"),
    ];
    for (what, service, path, reason) in cases {
        for deny in [false, true] {
            let extra = json!({"failure_mode_deny": deny, "timeout": "300ms",
                "rate_limit_service": {"cluster": "ratelimit", "path": path}});
            let p = limited_proxy(&up, service, filter_config(generic_rule("all"), extra));
            let before = up.stats()["by_key"]["through"].as_u64().unwrap_or(0);
            let replies: Vec<Reply> = (0..3).map(|_| get(&p.url("/?key=through"), &[])).collect();
            let through = up.stats()["by_key"]["through"].as_u64().unwrap_or(0) - before;
            if deny {
                assert!(replies.iter().all(|r| r.status == 500), "{what}, deny: {:?}", replies[0]);
                assert_eq!(replies[0].text(), "rate limit service unavailable\n");
                assert_eq!(through, 0, "{what}, deny: nothing reached the upstream");
            } else {
                assert!(replies.iter().all(|r| r.status == 200), "{what}, allow: {:?}", replies[0]);
                assert_eq!(through, 3, "{what}, allow: every request reached the upstream");
            }
            assert_eq!(outcome(&p, "failed"), 3, "{what}");
            assert_eq!(outcome(&p, "allowed") + outcome(&p, "limited"), 0, "{what}");
            assert!(p.process.logged(reason), "{what}: the log says why: {}", p.process.stderr());
        }
    }
}

#[test]
fn the_limit_holds_across_two_proxies_sharing_one_redis() {
    let redis = RedisServer::start();
    let up = upstream("app");
    let limits = "domain: edge\ndescriptors:\n  - key: generic_key\n    value: shared\n    rate_limit: {unit: hour, requests_per_unit: 20}\n";
    // Each meshwork process has its own service; only Redis is shared.
    let services = [ratelimit_service(limits, Some(&redis.url())), ratelimit_service(limits, Some(&redis.url()))];
    let proxies: Vec<Proxy> =
        services.iter().map(|s| limited_proxy(&up, s.addr, filter_config(generic_rule("shared"), json!({})))).collect();
    fresh_window(HOUR, Duration::from_secs(60));
    let codes: Vec<Vec<u16>> = std::thread::scope(|scope| {
        let runs: Vec<_> =
            proxies.iter().map(|p| scope.spawn(move || statuses(&storm(30, 6, &p.url("/shared"), &[])))).collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let admitted: Vec<usize> = codes.iter().map(|c| count(c, 200)).collect();
    assert_eq!(admitted.iter().sum::<usize>(), 20, "one limit for both proxies: {admitted:?}");
    assert_eq!(codes.iter().map(|c| count(c, 429)).sum::<usize>(), 40);
    assert_eq!(up.requests(), 20, "the upstream saw exactly the limit");
    for p in &proxies {
        assert_eq!(outcome(p, "failed"), 0);
    }
}

#[test]
fn redis_going_away_is_a_service_error_and_it_reconnects() {
    let mut redis = RedisServer::start();
    let up = upstream("app");
    let service = ratelimit_service(
        "domain: edge\ndescriptors:\n  - key: generic_key\n    value: all\n    rate_limit: {unit: hour, requests_per_unit: 100}\n",
        Some(&redis.url()),
    );
    let p = limited_proxy(&up, service.addr, filter_config(generic_rule("all"), json!({"failure_mode_deny": true})));
    let body = br#"{"domain": "edge", "descriptors": [{"entries": [{"key": "generic_key", "value": "all"}]}]}"#;
    assert_eq!(get(&p.url("/"), &[]).status, 200);
    assert_eq!(get(&service.url("/healthcheck"), &[]).status, 200);
    redis.stop();
    let r = post(&service.url("/json"), &[], body);
    assert_eq!(r.status, 500, "the service never answers without counting: {}", r.text());
    assert!(r.text().contains("Redis"), "{}", r.text());
    assert_eq!(get(&service.url("/healthcheck"), &[]).status, 500);
    assert_eq!(get(&p.url("/"), &[]).status, 500, "failure_mode_deny refuses what the service cannot decide");
    let _redis = RedisServer::start_on(redis.port);
    // Every pooled connection was broken; each is replaced before it is used again.
    let codes: Vec<u16> = (0..8).map(|_| get(&p.url("/"), &[]).status).collect();
    assert_eq!(codes, [200; 8], "the service reconnected");
    assert_eq!(post(&service.url("/json"), &[], body).status, 200);
}

#[test]
fn the_service_speaks_envoys_rls_json() {
    let service = ratelimit_service(
        "domain: edge\ndescriptors:\n  - key: user\n    rate_limit: {unit: hour, requests_per_unit: 4}\n",
        None,
    );
    fresh_window(HOUR, Duration::from_secs(60));
    let ask = |body: &str| post(&service.url("/json"), &[("content-type", "application/json")], body.as_bytes());
    let r =
        ask(r#"{"domain": "edge", "descriptors": [{"entries": [{"key": "user", "value": "a"}]}], "hits_addend": 3}"#);
    assert_eq!(r.status, 200);
    let answer = r.json();
    assert_eq!(answer["overallCode"], "OK");
    assert_eq!(answer["statuses"][0]["currentLimit"], json!({"requestsPerUnit": 4, "unit": "HOUR"}));
    assert_eq!(answer["statuses"][0]["limitRemaining"], 1);
    assert!(answer["statuses"][0]["durationUntilReset"].as_str().unwrap().ends_with('s'));
    // camelCase works too; over the limit is HTTP 429, as envoyproxy/ratelimit answers.
    let r =
        ask(r#"{"domain": "edge", "descriptors": [{"entries": [{"key": "user", "value": "a"}]}], "hitsAddend": 2}"#);
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["overallCode"], "OVER_LIMIT");
    assert_eq!(r.json()["statuses"][0]["code"], "OVER_LIMIT");
    let other = ask(r#"{"domain": "elsewhere", "descriptors": [{"entries": [{"key": "user", "value": "a"}]}]}"#);
    assert_eq!((other.status, other.json()["statuses"][0]["currentLimit"].clone()), (200, Value::Null));
    for (body, says) in [
        ("{not json", "not a RateLimitRequest in JSON"),
        (
            r#"{"domain": "edge", "descriptors": [{"entries": [{"key": "user"}], "limit": {}}]}"#,
            "unknown field `limit`",
        ),
        (r#"{"domain": "", "descriptors": [{"entries": [{"key": "user"}]}]}"#, "domain: must not be empty"),
        (r#"{"domain": "edge", "descriptors": []}"#, "descriptors: must not be empty"),
        (r#"{"domain": "edge", "descriptors": [{"entries": [{"key": ""}]}]}"#, "descriptors[0].entries[0].key"),
        (r#"{"domain": "edge", "descriptors": [{"entries": [{"key": "k"}]}], "hits_addend": -1}"#, "expected u32"),
    ] {
        let r = ask(body);
        assert_eq!(r.status, 400, "{body}");
        assert!(r.text().contains(says), "{body}: {}", r.text());
    }
    assert_eq!(post(&service.url("/json"), &[], &vec![b' '; 2 << 20]).status, 413);
    assert_eq!(get(&service.url("/json"), &[]).status, 405);
    assert_eq!(get(&service.url("/elsewhere"), &[]).status, 404);
    let health = get(&service.url("/healthcheck"), &[]);
    assert_eq!((health.status, health.text().as_str()), (200, "OK\n"));
}

#[test]
fn bad_configuration_is_refused_with_its_field_named() {
    let dir = scratch("grl-config");
    let limits = dir.join("limits.yaml");
    std::fs::write(
        &limits,
        "domain: edge\ndescriptors:\n  - key: user\n    rate_limit: {unit: fortnight, requests_per_unit: 1}\n",
    )
    .unwrap();
    let (code, _, err) = run(&["ratelimit-service", "--listen", "127.0.0.1:0", "--config", limits.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("limits.yaml: descriptors[0].rate_limit.unit: unknown unit \"fortnight\""), "{err}");
    let good = dir.join("good.yaml");
    std::fs::write(&good, "domain: edge\n").unwrap();
    let (code, _, err) = run(&["ratelimit-service", "--config", good.to_str().unwrap(), "--redis", "localhost:6379"]);
    assert_eq!(code, 1);
    assert!(err.contains("--redis: \"localhost:6379\": expected redis://"), "{err}");

    let proxy_config = |config: &str| {
        let path = dir.join("proxy.yaml");
        std::fs::write(
            &path,
            format!(
                "listen: 127.0.0.1:0\nclusters: [{{name: ratelimit, endpoints: [\"127.0.0.1:1\"]}}]\nroute: {{cluster: ratelimit}}\nfilters: [{{name: grl, module: {}, configuration: {config}}}]\n",
                wasm("global-rate-limit").display()
            ),
        )
        .unwrap();
        run(&["run", "--config", path.to_str().unwrap(), "--check"])
    };
    for (config, says) in [
        (r#"{"domain": "edge", "rate_limit_service": {"cluster": "ratelimit"}}"#, "missing field `rate_limits`"),
        (
            r#"{"domain": "edge", "rate_limit_service": {"cluster": "ratelimit"}, "rate_limits": [{"actions": [{"request_headers": {"header_name": "x-user"}}]}]}"#,
            "missing field `descriptor_key`",
        ),
        (
            r#"{"domain": "edge", "rate_limit_service": {"cluster": "ratelimit"}, "rate_limits": [{"actions": []}]}"#,
            "rate_limits[0].actions: must not be empty",
        ),
        (
            r#"{"domain": "", "rate_limit_service": {"cluster": "ratelimit"}, "rate_limits": [{"actions": [{"remote_address": {}}]}]}"#,
            "domain: must not be empty",
        ),
        (
            r#"{"domain": "edge", "rate_limit_service": {"cluster": "ratelimit"}, "failure_mode": "deny", "rate_limits": [{"actions": [{"remote_address": {}}]}]}"#,
            "unknown field `failure_mode`",
        ),
    ] {
        let (code, _, err) = proxy_config(&format!("'{config}'"));
        assert_eq!(code, 1, "{config}");
        assert!(err.contains(says), "{config}: {err}");
    }
    let example = root().join("filters/global-rate-limit/example.yaml");
    let (code, out, err) = run(&["run", "--config", example.to_str().unwrap(), "--check"]);
    assert_eq!(code, 0, "the example checks out: {err}");
    assert!(out.contains("configuration ok (1 filter(s)"), "{out}");
}
