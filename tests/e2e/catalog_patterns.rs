//! The catalog's patterns do what their READMEs say: each pattern's own `meshwork.yaml` and its
//! `envoy.yaml` (run through meshwork's Envoy bootstrap support) are started as they are in
//! catalog/patterns/<name>/, with only the addresses changed to this test's upstreams, and so is
//! what `meshwork deploy` writes for the pattern — a whole Envoy bootstrap, Istio WasmPlugins
//! (run as a sidecar would, `meshwork run --istio`), a Kuma MeshProxyPatch (`--kuma`) and
//! meshwork's YAML. The same behaviour is asserted of every form.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use meshwork_e2e::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Form {
    Native,
    Envoy,
    /// `meshwork deploy --mesh <this>`, run the way that mesh's proxy would run it.
    Deployed(&'static str),
}

impl Form {
    /// The form as a word for URLs (the upstream counts requests by key).
    fn key(self) -> String {
        match self {
            Form::Native => "native".into(),
            Form::Envoy => "envoy".into(),
            Form::Deployed(mesh) => format!("deployed-{mesh}"),
        }
    }
}

const FORMS: [Form; 6] = [
    Form::Native,
    Form::Envoy,
    Form::Deployed("envoy-bootstrap"),
    Form::Deployed("istio"),
    Form::Deployed("kuma"),
    Form::Deployed("meshwork"),
];

/// A pattern's proxy, running.
struct Running {
    _process: Process,
    url: String,
    admin: String,
}

impl Running {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// The sum of a stat over the series whose tags include `tags`.
    fn stat(&self, name: &str, tags: &[(&str, &str)]) -> i64 {
        let stats = get(&format!("{}/stats?format=json", self.admin), &[]).json();
        stats["stats"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["name"] == name)
            .filter(|s| tags.iter().all(|(k, v)| s["tags"][*k] == *v))
            .map(|s| s["value"].as_i64().unwrap_or(0))
            .sum()
    }
}

/// Starts catalog/patterns/<pattern> in `form`, each `127.0.0.1:<port>` of `upstreams` (the
/// ports the file was written with) replaced by a real address.
fn start(pattern: &str, form: Form, upstreams: &[(u16, SocketAddr)]) -> Running {
    let native = match form {
        Form::Deployed(mesh) => return start_deployed(pattern, mesh, upstreams),
        Form::Native => true,
        Form::Envoy => false,
    };
    let dir = root().join("catalog/patterns").join(pattern);
    let filters = format!("{}/", root().join("target/filters").display());
    let scratch = scratch(pattern);
    let (file, flag) = if native { ("meshwork.yaml", "--config") } else { ("envoy.yaml", "--envoy-config") };
    let mut text = std::fs::read_to_string(dir.join(file)).unwrap().replace("../../../target/filters/", &filters);
    if native {
        text = text.replace("127.0.0.1:10000", "127.0.0.1:0").replace("127.0.0.1:9901", "127.0.0.1:0");
        for (port, addr) in upstreams {
            text = text.replace(&format!("127.0.0.1:{port}"), &addr.to_string());
        }
        text = format!("cache_dir: {}\n{text}", module_cache().display());
    } else {
        text = text.replace("port_value: 10000", "port_value: 0").replace("port_value: 9901", "port_value: 0");
        for (port, addr) in upstreams {
            text = text.replace(&format!("port_value: {port}}}"), &format!("port_value: {}}}", addr.port()));
        }
    }
    let path = scratch.join(file);
    std::fs::write(&path, &text).unwrap();
    let process =
        Process::start(&["run", flag, path.to_str().unwrap()]).unwrap_or_else(|e| panic!("{pattern} {form:?}: {e}"));
    running(process)
}

/// What `meshwork deploy pattern/<pattern> --mesh <mesh>` writes, with the pattern's clusters
/// at this test's upstreams (the app at the one the file gives port 8080), run as that mesh's
/// proxy would run it.
fn start_deployed(pattern: &str, mesh: &str, upstreams: &[(u16, SocketAddr)]) -> Running {
    let config = std::fs::read_to_string(root().join("catalog/patterns").join(pattern).join("meshwork.yaml")).unwrap();
    let config: serde_json::Value = serde_saphyr::from_str(&config).unwrap();
    let at = |endpoint: &str| {
        let port: u16 = endpoint.rsplit(':').next().unwrap().parse().unwrap();
        upstreams.iter().find(|(p, _)| *p == port).map(|(_, a)| a.to_string()).unwrap()
    };
    let mut app = None;
    let mut clusters = Vec::new();
    for c in config["clusters"].as_array().unwrap() {
        let (name, address) = (c["name"].as_str().unwrap(), at(c["endpoints"][0].as_str().unwrap()));
        if name == "app" {
            app = Some(address);
        } else {
            clusters.push(format!("{name}={address}"));
        }
    }
    let app = app.expect("the pattern has an app cluster");
    let id = format!("pattern/{pattern}");
    let (catalog, filters) = (root().join("catalog"), root().join("target/filters"));
    let mut args = vec!["deploy", "--catalog", catalog.to_str().unwrap(), &id, "--mesh", mesh, "--no-check"];
    args.extend(["--upstream", &app, "--listen", "127.0.0.1:0", "--file", filters.to_str().unwrap()]);
    for c in &clusters {
        args.extend(["--cluster", c.as_str()]);
    }
    let (code, out, err) = run(&args);
    assert_eq!(code, 0, "{pattern} {mesh}: {err}");
    // The admin listener the generated files ask for, on a free port.
    let out = out.replace("port_value: 9901", "port_value: 0").replace("127.0.0.1:9901", "127.0.0.1:0");
    let file = scratch(pattern).join(format!("{mesh}.yaml"));
    std::fs::write(&file, &out).unwrap();
    let file = file.to_str().unwrap();
    let mut run_args = match mesh {
        "envoy-bootstrap" => vec!["run", "--envoy-config", file],
        "meshwork" => vec!["run", "--config", file],
        flag => vec!["run", if flag == "istio" { "--istio" } else { "--kuma" }, file],
    };
    if matches!(mesh, "istio" | "kuma") {
        run_args.extend(["--upstream", &app, "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"]);
        for c in &clusters {
            run_args.extend(["--cluster", c.as_str()]);
        }
    }
    let process = Process::start(&run_args).unwrap_or_else(|e| panic!("{pattern} deployed to {mesh}: {e}\n{out}"));
    running(process)
}

fn running(process: Process) -> Running {
    let line = process.first_line.clone();
    let after = |marker: &str| {
        line.split(marker)
            .nth(1)
            .and_then(|r| r.split([' ', ',']).next())
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("{marker:?} in {line}"))
    };
    Running { url: after("listening on "), admin: after("admin on "), _process: process }
}

#[test]
fn every_pattern_validates_and_names_this_test() {
    let (code, out, err) =
        run(&["catalog", "--catalog", root().join("catalog").to_str().unwrap(), "list", "--kind", "pattern"]);
    assert_eq!(code, 0, "{err}");
    for name in ["resilient-upstream", "edge-rate-limiting", "canary", "bulkheaded-service", "chaos-drill"] {
        assert!(out.contains(&format!("pattern/{name}")), "{out}");
    }
}

#[test]
fn resilient_upstream() {
    for form in FORMS {
        let app = upstream("app");
        let p = start("resilient-upstream", form, &[(8080, app.addr)]);

        // Two failures, then an answer: the client sees one 200.
        let r = get(&p.url(&format!("/orders?status=503&fail_first=2&key={}", form.key())), &[]);
        assert_eq!((r.status, r.header("x-meshwork-attempts")), (200, Some("3")), "{form:?}");

        // A hanging upstream: 504 within the 1 s deadline (per try 300 ms, two retries).
        let t = Instant::now();
        assert_eq!(get(&p.url("/slow?delay=3s"), &[]).status, 504, "{form:?}");
        assert!(t.elapsed() < Duration::from_millis(1800), "{form:?}: took {:?}", t.elapsed());

        // An outage: ten requests that always fail want twenty retries; the budget (20 % of
        // requests, 5 a second) refuses most, and the breaker opens after the tenth.
        let before = app.requests();
        let started = Instant::now();
        for _ in 0..10 {
            assert_eq!(get(&p.url("/pay?status=503"), &[]).status, 503);
        }
        let spent = started.elapsed();
        let attempts = app.requests() - before;
        // Whatever the timing: retries stay within the ratio plus the floor of each second
        // the outage touched (requests so far: at most 13).
        let seconds = spent.as_secs() + 2;
        let retries = attempts - 10;
        assert!(retries <= 5 * seconds + 3, "{form:?}: {retries} retries in {spent:?}");
        if spent < Duration::from_millis(1500) {
            // Within two seconds the budget allows at most 13 of the 20 retries asked for.
            assert!(p.stat("meshwork_retry_budget_exhausted_total", &[]) > 0, "{form:?}: the budget refused nothing");
        }
        let r = get(&p.url("/pay?status=503"), &[]);
        assert_eq!((r.status, r.header("x-meshwork-circuit")), (503, Some("open")), "{form:?}");
        assert_eq!(app.requests() - before, attempts, "{form:?}: an open circuit sends nothing");

        // After the cool-down a successful probe closes it.
        std::thread::sleep(Duration::from_millis(2100));
        assert_eq!(get(&p.url("/ok"), &[]).status, 200, "{form:?}");
        assert_eq!(get(&p.url("/ok"), &[]).status, 200, "{form:?}");
        assert!(p.stat("meshwork_circuit_breaker_transitions_total", &[("to", "closed")]) >= 1, "{form:?}");
    }
}

#[test]
fn edge_rate_limiting() {
    let limits = std::fs::read_to_string(root().join("catalog/patterns/edge-rate-limiting/limits.yaml")).unwrap();
    for form in FORMS {
        let app = upstream("app");
        let rls = ratelimit_service(&limits, None);
        let p = start("edge-rate-limiting", form, &[(8080, app.addr), (8081, rls.addr)]);

        // A burst from one key: the bucket (burst 10, 20 a second) passes ten, plus one per
        // 50 ms of refill; each request has its own user, so the global quota is not involved.
        let started = Instant::now();
        let codes: Vec<u16> =
            (0..15).map(|i| get(&p.url("/"), &[("x-api-key", "burst"), ("x-user", &format!("u{i}"))]).status).collect();
        let refilled = started.elapsed().as_millis() as usize / 50;
        let passed = codes.iter().filter(|c| **c == 200).count();
        assert!((10..=(11 + refilled).min(15)).contains(&passed), "{form:?}: {codes:?} in {:?}", started.elapsed());
        assert!(codes.iter().all(|c| *c == 200 || *c == 429), "{form:?}: {codes:?}");
        assert_eq!(p.stat("meshwork_local_rate_limit_requests_total", &[("outcome", "limited")]), 15 - passed as i64);

        // The global quota: five a minute per user, whichever key they use (counted in fixed
        // minutes, so not across a minute's end).
        fresh_window(60, Duration::from_secs(5));
        let alice: Vec<u16> =
            (0..6).map(|i| get(&p.url("/"), &[("x-api-key", &format!("a{i}")), ("x-user", "alice")]).status).collect();
        assert_eq!(alice, [200, 200, 200, 200, 200, 429], "{form:?}");
        assert_eq!(get(&p.url("/"), &[("x-api-key", "b"), ("x-user", "bob")]).status, 200, "{form:?}");

        // The service gone: the global quota fails open; the local limit still holds.
        drop(rls);
        assert_eq!(get(&p.url("/"), &[("x-api-key", "a9"), ("x-user", "alice")]).status, 200, "{form:?}");
        let started = Instant::now();
        let codes: Vec<u16> = (0..25).map(|_| get(&p.url("/"), &[("x-api-key", "burst2")]).status).collect();
        let refilled = started.elapsed().as_millis() as usize / 50;
        let limited = codes.iter().filter(|c| **c == 429).count();
        assert!(limited + 11 + refilled >= 25 && limited <= 15, "{form:?}: {codes:?}");
    }
}

#[test]
fn canary() {
    // The split routes by a header to clusters v1 and v2: a route table `meshwork deploy`
    // does not write (meshes split with their own routes: VirtualService, HTTPRoute).
    for form in [Form::Native, Form::Envoy] {
        let (v1, v2) = (upstream("v1"), upstream("v2"));
        let p = start("canary", form, &[(8080, v1.addr), (8081, v2.addr)]);
        let version = |user: &str, extra: &[(&str, &str)]| {
            let mut headers = vec![("x-user", user)];
            headers.extend_from_slice(extra);
            let r = get(&p.url("/"), &headers);
            assert_eq!(r.status, 200);
            r.header("x-upstream-name").unwrap().to_owned()
        };
        let first: Vec<String> = (0..400).map(|i| version(&format!("user-{i}"), &[])).collect();
        let on_v2 = first.iter().filter(|v| *v == "v2").count();
        assert!((20..=60).contains(&on_v2), "{form:?}: {on_v2} of 400 users on v2");
        for (i, was) in first.iter().enumerate().take(50) {
            assert_eq!(&version(&format!("user-{i}"), &[]), was, "{form:?}: user-{i} changed version");
        }
        for i in 0..20 {
            assert_eq!(version(&format!("tester-{i}"), &[("x-canary", "true")]), "v2", "{form:?}");
        }
        // measure's counts per version are what each version served.
        for (name, up) in [("v1", &v1), ("v2", &v2)] {
            assert_eq!(
                p.stat("meshwork_measure_requests_total", &[("route", name), ("class", "2xx")]),
                up.requests() as i64,
                "{form:?}: {name}"
            );
        }
    }
}

#[test]
fn bulkheaded_service() {
    for form in FORMS {
        let app = upstream("app");
        let p = start("bulkheaded-service", form, &[(8080, app.addr)]);
        let url = p.url("/work?delay=1s");
        let other = std::thread::scope(|s| {
            let storm = s.spawn(|| storm(10, 10, &url, &[("x-tenant", "a")]));
            std::thread::sleep(Duration::from_millis(300));
            // Another tenant has its own places.
            let t = Instant::now();
            let r = get(&p.url("/other"), &[("x-tenant", "b")]);
            let other = (r.status, t.elapsed());
            let codes: Vec<u16> = storm.join().unwrap().into_iter().map(|r| r.map(|r| r.status).unwrap_or(0)).collect();
            assert_eq!(codes.iter().filter(|c| **c == 200).count(), 4, "{form:?}: {codes:?}");
            assert_eq!(codes.iter().filter(|c| **c == 503).count(), 6, "{form:?}: {codes:?}");
            other
        });
        assert_eq!(other.0, 200, "{form:?}");
        assert!(other.1 < Duration::from_millis(500), "{form:?}: tenant b waited {:?}", other.1);
        // Two wait in the queue and time out, four find it full (more wait when the ten
        // arrive spread over more than the queue timeout).
        let outcome = |o: &str| p.stat("meshwork_bulkhead_requests_total", &[("outcome", o)]);
        let (timed_out, rejected) = (outcome("timed_out"), outcome("rejected"));
        assert!(timed_out >= 2 && timed_out + rejected == 6, "{form:?}: {timed_out} timed out, {rejected} rejected");

        // The deadline frees a place held by a hanging request.
        let t = Instant::now();
        assert_eq!(get(&p.url("/hang?delay=5s"), &[("x-tenant", "c")]).status, 504, "{form:?}");
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(1900) && took < Duration::from_millis(3500), "{form:?}: {took:?}");
        let codes: Vec<u16> =
            storm(4, 4, &p.url("/quick"), &[("x-tenant", "c")]).into_iter().map(|r| r.unwrap().status).collect();
        assert_eq!(codes, [200; 4], "{form:?}: the hung request's place came back");
    }
}

#[test]
fn chaos_drill() {
    for form in FORMS {
        let app = upstream("app");
        let p = start("chaos-drill", form, &[(8080, app.addr)]);
        let before = app.requests();
        let marked = storm(300, 8, &p.url("/drill"), &[("x-chaos", "on")]);
        let aborted = marked.iter().filter(|r| r.as_ref().unwrap().status == 503).count() as i64;
        let ok = marked.iter().filter(|r| r.as_ref().unwrap().status == 200).count() as i64;
        assert_eq!(aborted + ok, 300, "{form:?}");
        // 20 % of 300: 60, standard deviation 6.9; these bounds are 4.5 of them.
        assert!((29..=91).contains(&aborted), "{form:?}: {aborted} aborted");
        assert_eq!(app.requests() - before, ok as u64, "{form:?}: aborted requests never reach the upstream");
        assert_eq!(p.stat("meshwork_fault_injection_aborts_injected_total", &[]), aborted, "{form:?}");
        // measure, first in the chain, saw what the clients saw.
        assert_eq!(p.stat("meshwork_measure_requests_total", &[("route", "drill"), ("class", "5xx")]), aborted);
        assert_eq!(p.stat("meshwork_measure_requests_total", &[("route", "drill"), ("class", "2xx")]), ok);
        // Unmarked traffic is untouched.
        let plain = storm(100, 8, &p.url("/plain"), &[]);
        assert!(plain.iter().all(|r| r.as_ref().unwrap().status == 200), "{form:?}");
    }
}
