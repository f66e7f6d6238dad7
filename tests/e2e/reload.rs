//! Reloading a running proxy (admin `POST /reload`, SIGHUP) and the admin listener's guard
//! against web pages: new routes, clusters and filters take over without a lost request, a bad
//! configuration is refused while the old one keeps serving, and 100 reloads under constant
//! load fail nothing.

use std::time::{Duration, Instant};

use meshwork_e2e::*;

fn config(up: &Upstream, name: &str, filters: &str) -> String {
    format!("workers: 2\nclusters: [{}]\nroute: {{cluster: {name}}}\n{filters}", cluster(name, up))
}

fn served_by(p: &Proxy) -> String {
    get(&p.url("/who"), &[]).header("x-upstream-name").unwrap_or_default().to_owned()
}

fn rate_limit(rate: u32) -> String {
    format!(
        "filters: [{{name: rl, module: {}, configuration: {{rate: {rate}, period: 1h, burst: {rate}}}}}]\n",
        wasm("local-rate-limit").display()
    )
}

#[test]
fn a_reload_puts_new_clusters_routes_and_filters_in_force() {
    let (one, two) = (upstream("one"), upstream("two"));
    let p = proxy(&config(&one, "one", ""));
    assert_eq!(served_by(&p), "one");
    p.rewrite_config(&config(&two, "two", &rate_limit(2)));
    let r = p.reload();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("generation 2") && r.text().contains("1 filter(s)"), "{}", r.text());
    let statuses: Vec<u16> = (0..4).map(|_| get(&p.url("/who"), &[]).status).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 429).count() as u32, 2, "the new filter is in force: {statuses:?}");
    assert_eq!(two.requests(), 2);
    assert_eq!(p.stat("meshwork_config_reloads_total", &[("outcome", "ok")]), Some(1));
}

#[test]
fn a_bad_configuration_is_refused_and_the_old_one_keeps_serving() {
    let (one, two) = (upstream("one"), upstream("two"));
    let good = config(&one, "one", "");
    let p = proxy(&good);
    let bad: Vec<(&str, String, &str)> = vec![
        ("not YAML", "clusters: [unclosed\n".into(), "not valid"),
        ("unknown field", format!("{}bogus: 1\n", config(&two, "two", "")), "unknown field `bogus`"),
        ("no such module", config(&two, "two", "filters: [{name: f, module: /no/such.wasm}]\n"), "/no/such.wasm"),
        (
            "a filter that refuses its configuration",
            config(
                &two,
                "two",
                &format!(
                    "filters: [{{name: rl, module: {}, configuration: {{rate: -1}}}}]\n",
                    wasm("local-rate-limit").display()
                ),
            ),
            "proxy_on_configure returned false",
        ),
        (
            "another number of workers",
            config(&two, "two", "").replace("workers: 2", "workers: 3"),
            "workers cannot change",
        ),
        ("another listen address", format!("listen: 127.0.0.2:0\n{}", config(&two, "two", "")), "listen cannot change"),
    ];
    for (what, yaml, says) in &bad {
        p.rewrite_config(yaml);
        let r = p.reload();
        assert_eq!(r.status, 400, "{what}: {}", r.text());
        assert!(r.text().contains(says), "{what}: {}", r.text());
        assert_eq!(served_by(&p), "one", "{what}: the old configuration keeps serving");
    }
    assert_eq!(p.stat("meshwork_config_reloads_total", &[("outcome", "refused")]), Some(bad.len() as i64));
    assert_eq!(two.requests(), 0);
    // SIGHUP reads the file too: a bad one is logged and changes nothing, a good one applies.
    let pid = p.process.pid().to_string();
    let hup = || assert!(std::process::Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    hup();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(served_by(&p), "one");
    assert!(p.process.logged("SIGHUP: the configuration was not reloaded"), "{}", p.process.stderr());
    p.rewrite_config(&config(&two, "two", ""));
    hup();
    let switched = eventually(Duration::from_secs(5), || (served_by(&p) == "two").then_some(()));
    assert!(switched.is_some(), "SIGHUP put the good configuration in force");
}

#[test]
fn requests_in_flight_finish_on_the_configuration_they_started_with() {
    let (one, two) = (upstream("one"), upstream("two"));
    let p = proxy(&config(&one, "one", &format!("filters: [{{name: m, module: {}}}]\n", wasm("measure").display())));
    let url = p.url("/slow?delay=1500ms");
    let slow = std::thread::spawn(move || get(&url, &[]));
    std::thread::sleep(Duration::from_millis(300));
    p.rewrite_config(&config(&two, "two", ""));
    assert_eq!(p.reload().status, 200);
    assert_eq!(served_by(&p), "two", "new requests use the new configuration");
    let r = slow.join().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-upstream-name"), Some("one"), "the request in flight finished where it started");
    assert!(r.header("server-timing").is_some(), "…through the old chain's filter");
}

#[test]
fn a_hundred_reloads_under_constant_load_fail_no_request() {
    let (one, two) = (upstream("one"), upstream("two"));
    let measure = format!("filters: [{{name: m, module: {}}}]\n", wasm("measure").display());
    let configs = [config(&one, "one", &measure), config(&two, "two", &rate_limit(1_000_000))];
    let p = proxy(&configs[0]);
    let url = p.url("/steady");
    let load = std::thread::spawn(move || {
        run(&["load", "-R", "300", "-c", "8", "-d", "12s", "--timeout", "5s", "-q", "--output", "json", &url])
    });
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    for i in 0..100 {
        p.rewrite_config(&configs[(i + 1) % 2]);
        let r = p.reload();
        assert_eq!(r.status, 200, "reload {i}: {}", r.text());
        std::thread::sleep(Duration::from_millis(40));
    }
    let reloading = started.elapsed();
    let (code, out, err) = load.join().unwrap();
    assert_eq!(code, 0, "{err}");
    let result: serde_json::Value = serde_json::from_str(&out).expect("load result");
    let requests = result["requests"].as_u64().unwrap();
    println!("100 reloads in {reloading:?} under {requests} requests");
    assert!(reloading < Duration::from_secs(11), "the reloads must overlap the load ({reloading:?})");
    assert_eq!(result["errors_total"], 0, "{result}");
    assert_eq!(result["non_2xx_3xx"], 0, "{result}");
    assert!(requests >= 3000, "{requests}");
    assert!(one.requests() > 0 && two.requests() > 0, "both configurations served");
    assert_eq!(p.stat("meshwork_config_reloads_total", &[("outcome", "ok")]), Some(100));
}

#[test]
fn the_admin_listener_refuses_what_a_web_page_could_send() {
    let up = upstream("app");
    let mut p = proxy(&config(&up, "app", ""));
    for (what, headers) in [
        ("an Origin header", vec![("origin", "https://evil.example")]),
        ("a text/plain body", vec![("content-type", "text/plain;charset=UTF-8")]),
        ("a form body", vec![("content-type", "application/x-www-form-urlencoded")]),
        ("a multipart body", vec![("content-type", "multipart/form-data; boundary=x")]),
    ] {
        for endpoint in ["/quitquitquit", "/reload"] {
            let r = post(&p.admin_url(endpoint), &headers, b"x");
            assert_eq!(r.status, 403, "{endpoint} with {what}");
        }
    }
    assert_eq!(get(&p.admin_url("/quitquitquit"), &[]).status, 405, "GET cannot stop it either");
    assert!(p.process.alive());
    assert_eq!(get(&p.url("/"), &[]).status, 200);
    assert_eq!(post(&p.admin_url("/quitquitquit"), &[], b"").status, 200, "a plain POST (curl -X POST) works");
    assert!(eventually(Duration::from_secs(5), || (!p.process.alive()).then_some(())).is_some());
}

#[test]
fn the_admin_listener_beyond_loopback_needs_an_explicit_option() {
    let up = upstream("app");
    let err = try_proxy(&format!("admin: 0.0.0.0:0\n{}", config(&up, "app", ""))).err().expect("refused");
    assert!(err.contains("not a loopback address") && err.contains("admin_allow_non_loopback"), "{err}");
    let p = proxy(&format!("admin: 0.0.0.0:0\nadmin_allow_non_loopback: true\n{}", config(&up, "app", "")));
    let warned =
        eventually(Duration::from_secs(5), || p.process.stderr().contains("reachable from other hosts").then_some(()));
    assert!(warned.is_some(), "{}", p.process.stderr());
}
