//! The traffic-split filter through `meshwork run`: two versions of the sample app behind a
//! `cluster_header` route, the filter choosing the version by weight, by rule or by user.

use meshwork_e2e::*;

const WEIGHTED: &str = "{backends: [{name: v1, weight: 90}, {name: v2, weight: 10}]}";

fn split(v1: &Upstream, v2: &Upstream, configuration: &str) -> Proxy {
    proxy(&format!(
        "workers: 2\nclusters: [{}, {}]\nroute: {{cluster_header: x-meshwork-cluster}}\nfilters:\n  - name: split\n    module: {}\n    configuration: {configuration}\n",
        cluster("v1", v1),
        cluster("v2", v2),
        wasm("traffic-split").display()
    ))
}

fn versions() -> (Upstream, Upstream) {
    (upstream("v1"), upstream("v2"))
}

/// How many of `n` requests (sent with `headers`) each version answered, checked against the
/// upstreams' own counts of `path`.
fn spread(p: &Proxy, v1: &Upstream, v2: &Upstream, n: usize, path: &str, headers: &[(&str, &str)]) -> (usize, usize) {
    let results = storm(n, 16, &p.url(path), headers);
    let (mut to_v1, mut to_v2) = (0, 0);
    for r in &results {
        let r = r.as_ref().expect("every request is answered");
        assert_eq!(r.status, 200, "{}", r.text());
        match r.header("x-upstream-name") {
            Some("v1") => to_v1 += 1,
            Some("v2") => to_v2 += 1,
            other => panic!("answered by {other:?}"),
        }
    }
    let counted = |up: &Upstream| up.stats()["by_path"][path.split('?').next().unwrap()].as_u64().unwrap_or(0) as usize;
    assert_eq!((counted(v1), counted(v2)), (to_v1, to_v2), "the upstreams saw what the client saw");
    (to_v1, to_v2)
}

fn assert_binomial(observed: usize, n: usize, p: f64, what: &str) {
    let sigma = (n as f64 * p * (1.0 - p)).sqrt();
    let expected = n as f64 * p;
    assert!(
        (observed as f64 - expected).abs() <= 4.5 * sigma,
        "{what}: {observed} of {n}, expected {expected:.0} ± {:.0}",
        4.5 * sigma
    );
}

#[test]
fn weights_split_the_traffic() {
    let (v1, v2) = versions();
    let p = split(&v1, &v2, WEIGHTED);
    let n = 2000;
    let (to_v1, to_v2) = spread(&p, &v1, &v2, n, "/weighted", &[]);
    assert_eq!(to_v1 + to_v2, n);
    assert_binomial(to_v2, n, 0.1, "v2 at weight 10 of 100");
    let metric = |backend| {
        p.stat(
            "meshwork_traffic_split_requests_total",
            &[("plugin", "split"), ("rule", "default"), ("backend", backend)],
        )
        .unwrap_or(0) as usize
    };
    assert_eq!((metric("v1"), metric("v2")), (to_v1, to_v2));
}

#[test]
fn a_client_routing_header_cannot_bypass_the_split() {
    let (v1, v2) = versions();
    let p = split(&v1, &v2, WEIGHTED);
    let n = 1000;
    let (to_v1, _) = spread(&p, &v1, &v2, n, "/bypass", &[("x-meshwork-cluster", "v2")]);
    assert_binomial(to_v1, n, 0.9, "v1 despite a client asking for v2");
    let r = get(&p.url("/nowhere"), &[("x-meshwork-cluster", "no-such-cluster")]);
    assert_eq!(r.status, 200, "the filter's choice replaces the client's");
}

#[test]
fn rules_match_headers_and_paths_before_the_weights() {
    let (v1, v2) = versions();
    let p = split(
        &v1,
        &v2,
        "{rules: [{match: {headers: [{name: x-canary, value: \"true\"}]}, backends: [{name: v2}]}, \
          {name: beta, match: {path_prefix: /beta/}, backends: [{name: v2, weight: 1}]}], \
         backends: [{name: v1, weight: 100}, {name: v2, weight: 0}]}",
    );
    assert_eq!(spread(&p, &v1, &v2, 300, "/plain", &[]), (300, 0), "weight 0 is never chosen");
    assert_eq!(spread(&p, &v1, &v2, 300, "/canary", &[("x-canary", "true")]), (0, 300));
    assert_eq!(spread(&p, &v1, &v2, 100, "/not-canary", &[("x-canary", "false")]), (100, 0));
    assert_eq!(spread(&p, &v1, &v2, 100, "/beta/x?q=1", &[]), (0, 100));
    assert_eq!(spread(&p, &v1, &v2, 100, "/betamax", &[]), (100, 0), "a prefix of the path, not of the word");
    let beta = p.stat("meshwork_traffic_split_requests_total", &[("rule", "beta"), ("backend", "v2")]);
    assert_eq!(beta, Some(100));
    let first = p.stat("meshwork_traffic_split_requests_total", &[("rule", "rule-0"), ("backend", "v2")]);
    assert_eq!(first, Some(300));
}

#[test]
fn sticky_assignment_keeps_each_user_on_one_version() {
    let (v1, v2) = versions();
    let p = split(&v1, &v2, "{backends: [{name: v1, weight: 50}, {name: v2, weight: 50}], hash_on: {header: x-user}}");
    let mut per_version = [0, 0];
    for user in 0..40 {
        let user = format!("user-{user}");
        let seen: Vec<String> = (0..5)
            .map(|_| get(&p.url("/sticky"), &[("x-user", &user)]).header("x-upstream-name").unwrap().to_owned())
            .collect();
        assert!(seen.iter().all(|v| *v == seen[0]), "{user} moved: {seen:?}");
        per_version[(seen[0] == "v2") as usize] += 1;
    }
    assert!(per_version[0] > 5 && per_version[1] > 5, "users spread over both versions: {per_version:?}");
}

#[test]
fn without_a_match_or_default_the_client_header_is_dropped() {
    let (v1, v2) = versions();
    let p = split(&v1, &v2, "{rules: [{match: {path_prefix: /v2/}, backends: [{name: v2}]}]}");
    assert_eq!(get(&p.url("/v2/x"), &[]).header("x-upstream-name"), Some("v2"));
    let r = get(&p.url("/other"), &[("x-meshwork-cluster", "v1")]);
    assert_eq!(r.status, 404, "no cluster: the router's answer, not the client's choice");
    assert_eq!(v1.requests(), 0);
}

#[test]
fn bad_configuration_is_refused_naming_the_field() {
    let (v1, v2) = versions();
    for (configuration, expected) in [
        ("{backends: [{name: v1, weight: 0}]}", "backends has weights that add up to 0"),
        ("{backends: [{name: v1, weight: -1}]}", "backends[0].weight: invalid value"),
        ("{rules: [{backends: []}]}", "rules[0].backends lists no backends"),
        (
            "{rules: [{match: {headers: [{name: \"x a\", present: true}]}, backends: [{name: v1}]}]}",
            "rules[0].match.headers[0].name",
        ),
        ("{rules: [{match: {headers: [{name: x-a}]}, backends: [{name: v1}]}]}", "rules[0].match.headers[0] (x-a)"),
        ("{header: \"bad header\", backends: [{name: v1}]}", "header \"bad header\" is not a valid header name"),
        ("{}", "give backends, rules or both"),
        ("{backend: [{name: v1}]}", "unknown field `backend`"),
    ] {
        let err = try_proxy(&format!(
            "clusters: [{}, {}]\nroute: {{cluster_header: x-meshwork-cluster}}\nfilters: [{{name: split, module: {}, configuration: {configuration}}}]\n",
            cluster("v1", &v1),
            cluster("v2", &v2),
            wasm("traffic-split").display()
        ))
        .err()
        .unwrap_or_else(|| panic!("{configuration} was accepted"));
        assert!(err.contains(expected), "{configuration}: {err}");
    }
}
