//! Hamlet federation between two meshes, each in a network namespace the test creates and
//! joined by a veth pair (198.51.100.0/24, TEST-NET-2):
//!
//! - mesh A (198.51.100.1): the sample app, a meshwork ingress that accepts only mTLS clients
//!   from the federation CA, and `meshwork federation serve` exporting the app;
//! - mesh B (198.51.100.2): a meshwork sidecar whose `federation:` section follows A, and the
//!   client (a test thread that has entered B's namespace).
//!
//! A request in B reaches A's app by its federated name, over mTLS, and changes on A's side
//! reach B's routing while it serves. The refusals (another CA, an expired certificate, a wrong
//! SAN, a consumer A does not federate with) run on loopback.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use meshwork_e2e::*;

const A: &str = "198.51.100.1";
const B: &str = "198.51.100.2";

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip (iproute2)");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Two namespaces and the link between them, removed on drop.
struct Meshes {
    a: String,
    b: String,
}

impl Meshes {
    fn new(tag: &str) -> Meshes {
        sweep_leftovers();
        let id = std::process::id();
        let (a, b) = (format!("mw-fed-{tag}-a-{id}"), format!("mw-fed-{tag}-b-{id}"));
        let (va, vb) = (format!("mwf{tag}a{id}"), format!("mwf{tag}b{id}"));
        for ns in [&a, &b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        ip(&["netns", "add", &a]);
        ip(&["netns", "add", &b]);
        let meshes = Meshes { a, b };
        ip(&["link", "add", &va, "netns", &meshes.a, "type", "veth", "peer", "name", &vb, "netns", &meshes.b]);
        for (ns, dev, addr) in [(&meshes.a, &va, A), (&meshes.b, &vb, B)] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        meshes
    }
}

impl Drop for Meshes {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth pair, and so the pair.
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Namespaces left by test runs that were killed (their process is gone).
fn sweep_leftovers() {
    let listed = Command::new("ip").args(["netns", "list"]).output().map(|o| o.stdout).unwrap_or_default();
    for ns in String::from_utf8_lossy(&listed).lines().filter_map(|l| l.split_whitespace().next()) {
        let pid = ns.strip_prefix("mw-fed-").and_then(|rest| rest.rsplit('-').next());
        if pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists()) {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Runs `f` on a thread that has entered the network namespace `ns`.
fn inside<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(format!("/var/run/netns/{ns}")).expect("the namespace");
            // SAFETY: setns with a namespace descriptor this thread holds open; it changes only
            // this thread's network namespace.
            let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("the thread in the namespace")
    })
}

fn certs(dir: &Path, args: &[&str]) {
    let mut all = vec!["federation", "certs", "--out", dir.to_str().unwrap()];
    all.extend_from_slice(args);
    let (code, _, err) = run(&all);
    assert_eq!(code, 0, "certs: {err}");
}

fn write(path: &Path, text: &str) -> PathBuf {
    std::fs::write(path, text).unwrap();
    path.to_owned()
}

fn service(name: &str, port: u16) -> String {
    service_with_san(name, port, "mesh-a")
}

fn service_with_san(name: &str, port: u16, san: &str) -> String {
    format!(
        "  - {{name: {name}, fqdn: {name}.mesh-a.example, endpoints: [{{address: {A}, port: {port}}}], sans: [{san}]}}\n"
    )
}

fn owner_file(dir: &Path, services: &[String]) -> PathBuf {
    let text = format!(
        "mesh: mesh-a\nlisten: {A}:9443\ntls: {{ca: ca.pem, cert: mesh-a.pem, key: mesh-a-key.pem}}\nnack_retry: 1s\nservices:\n{}",
        services.concat()
    );
    let path = dir.join("owner.yaml");
    // Written whole and renamed, so the owner never reads half a file.
    let tmp = write(&dir.join("owner.yaml.tmp"), &text);
    std::fs::rename(tmp, &path).unwrap();
    path
}

/// Mesh A's ingress: mTLS only (clients from the federation CA), each host to its app.
fn ingress(dir: &Path, port: u16, apps: &[(&str, u16)]) -> PathBuf {
    let routes: String =
        apps.iter().map(|(host, _)| format!("      - {{hosts: [{host}.mesh-a.example], cluster: {host}}}\n")).collect();
    let clusters: String =
        apps.iter().map(|(host, app)| format!("  - {{name: {host}, endpoints: [\"127.0.0.1:{app}\"]}}\n")).collect();
    write(
        &dir.join(format!("ingress-{port}.yaml")),
        &format!(
            "listeners:\n  - name: ingress\n    listen: {A}:{port}\n    listener:\n      tls:\n        certificates: [{{cert: mesh-a.pem, key: mesh-a-key.pem}}]\n        client_ca: ca.pem\n        require_client_certificate: true\n    routes:\n{routes}clusters:\n{clusters}"
        ),
    )
}

/// Mesh B's sidecar, with a filter that says "Hello, World!" each time a VM is configured.
fn sidecar(dir: &Path) -> PathBuf {
    let filter = wasm("surface");
    write(
        &dir.join("sidecar.yaml"),
        &format!(
            "listen: 127.0.0.1:15001\nadmin: 127.0.0.1:15000\nworkers: 1\nfilters: [{{name: hello, module: {}, configuration: {{mode: hello}}}}]\nroute: {{direct_response: {{status: 404, body: \"not a known service\\n\"}}}}\nfederation:\n  mesh: mesh-b\n  tls: {{ca: ca.pem, cert: mesh-b.pem, key: mesh-b-key.pem}}\n  owners: [{{name: mesh-a, address: \"{A}:9443\", server_name: mesh-a}}]\n",
            filter.display()
        ),
    )
}

fn port_of(first_line: &str) -> u16 {
    first_line
        .rsplit(':')
        .next()
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no port in {first_line:?}"))
}

/// Mesh A's app, named `name`, in A's namespace: its port.
fn app(meshes: &Meshes, name: &str) -> (Process, u16) {
    let p = Process::start_in(&meshes.a, &["upstream", "--listen", "127.0.0.1:0", "--name", name]).unwrap();
    let port = port_of(&p.first_line);
    (p, port)
}

/// A request from mesh B's client, through B's sidecar, to `host`.
fn from_b(meshes: &Meshes, host: &str, path: &str) -> Result<Reply, String> {
    inside(&meshes.b, || try_request("GET", &format!("http://127.0.0.1:15001{path}"), &[("host", host)], b""))
}

fn upstream_name(r: &Result<Reply, String>) -> Option<String> {
    r.as_ref().ok().filter(|r| r.status == 200).and_then(|r| r.header("x-upstream-name").map(str::to_owned))
}

#[test]
fn mesh_b_reaches_mesh_a_by_federated_name_and_follows_its_changes_live() {
    let meshes = Meshes::new("l");
    let dir = scratch("federation-live");
    certs(&dir, &["--mesh", "mesh-a", "--mesh", "mesh-b"]);
    let (_app, app_port) = app(&meshes, "app-a");
    let (_app2, app2_port) = app(&meshes, "app-a2");
    let ingress_a = ingress(&dir, 8443, &[("echo", app_port), ("extra", app_port), ("spoof", app_port)]);
    let _ingress = Process::start_in(&meshes.a, &["run", "--config", ingress_a.to_str().unwrap()]).unwrap();
    let ingress_b = ingress(&dir, 8444, &[("echo", app2_port)]);
    let _ingress2 = Process::start_in(&meshes.a, &["run", "--config", ingress_b.to_str().unwrap()]).unwrap();
    let owner = owner_file(&dir, &[service("echo", 8443)]);
    let server =
        Process::start_in(&meshes.a, &["federation", "serve", "--config", owner.to_str().unwrap(), "--output", "json"])
            .unwrap();
    assert!(server.first_line.contains("\"listening\""), "{}", server.first_line);
    let sidecar = Process::start_in(&meshes.b, &["run", "--config", sidecar(&dir).to_str().unwrap()]).unwrap();

    // B reaches A's app by the name A exports, through A's mTLS ingress.
    let r = eventually(Duration::from_secs(10), || upstream_name(&from_b(&meshes, "echo.mesh-a.example", "/hello")));
    assert_eq!(r.as_deref(), Some("app-a"), "sidecar log:\n{}", sidecar.stderr());
    let r = from_b(&meshes, "echo.mesh-a.example", "/hello").unwrap();
    assert_eq!(r.json()["headers"]["host"], "echo.mesh-a.example", "{}", r.text());
    assert_eq!(from_b(&meshes, "unknown.mesh-a.example", "/").unwrap().status, 404);
    let stats = inside(&meshes.b, || get("http://127.0.0.1:15000/stats/prometheus", &[])).text();
    for line in
        ["meshwork_federation_connected{owner=\"mesh-a\"} 1", "meshwork_federation_services{owner=\"mesh-a\"} 1"]
    {
        assert!(stats.contains(line), "{line} in\n{stats}");
    }
    // A's ingress takes nobody without a certificate from the federation CA: plain HTTP from B
    // gets nowhere.
    let plain =
        inside(&meshes.b, || try_request("GET", &format!("http://{A}:8443/"), &[("host", "echo.mesh-a.example")], b""));
    assert!(plain.is_err() || plain.as_ref().is_ok_and(|r| r.status != 200), "{:?}", plain.map(|r| r.status));

    // A service added in A becomes reachable from B.
    let added = Instant::now();
    owner_file(&dir, &[service("echo", 8443), service("extra", 8443), service_with_san("spoof", 8443, "mesh-z")]);
    let r = eventually(Duration::from_secs(10), || upstream_name(&from_b(&meshes, "extra.mesh-a.example", "/")));
    assert_eq!(r.as_deref(), Some("app-a"));
    eprintln!("a new service was reachable from B {:?} after A's file changed", added.elapsed());
    // B checks the endpoint's certificate against the service's exported SANs: A's ingress
    // does not carry mesh-z, so B sends it nothing.
    let served = || {
        inside(&meshes.a, || get(&format!("http://127.0.0.1:{app_port}/stats"), &[]).json()["requests_total"].clone())
    };
    let before = served();
    let spoof = from_b(&meshes, "spoof.mesh-a.example", "/").unwrap();
    assert_eq!(spoof.status, 503, "{}", spoof.text());
    assert_eq!(before, served(), "nothing reached the app");

    // An endpoint change is picked up, and a request already running finishes where it started.
    let slow = std::thread::scope(|s| {
        let slow = s.spawn(|| from_b(&meshes, "echo.mesh-a.example", "/slow?delay=2s"));
        std::thread::sleep(Duration::from_millis(300));
        owner_file(&dir, &[service("echo", 8444), service("extra", 8443)]);
        let r = eventually(Duration::from_secs(10), || {
            upstream_name(&from_b(&meshes, "echo.mesh-a.example", "/")).filter(|n| n == "app-a2")
        });
        assert_eq!(r.as_deref(), Some("app-a2"), "the new endpoint serves");
        slow.join().unwrap()
    });
    assert_eq!(upstream_name(&slow).as_deref(), Some("app-a"), "the request in flight finished on the old endpoint");

    // Imported services came and went, and the filter's VM carried on through them: it was
    // configured once. A reload of the file configures it again.
    assert_eq!(sidecar.stderr().matches("Hello, World!").count(), 1, "{}", sidecar.stderr());
    let reloaded = inside(&meshes.b, || post("http://127.0.0.1:15000/reload", &[], b""));
    assert_eq!(reloaded.status, 200, "{}", reloaded.text());
    let configured = || sidecar.stderr().matches("Hello, World!").count();
    eventually(Duration::from_secs(5), || (configured() == 2).then_some(()));
    assert_eq!(configured(), 2, "{}", sidecar.stderr());
    assert_eq!(
        upstream_name(&from_b(&meshes, "echo.mesh-a.example", "/")).as_deref(),
        Some("app-a2"),
        "imports survive a reload"
    );

    // Removed in A: B answers 503 and says why.
    owner_file(&dir, &[service("echo", 8444)]);
    let r = eventually(Duration::from_secs(10), || {
        from_b(&meshes, "extra.mesh-a.example", "/").ok().filter(|r| r.status == 503)
    });
    let r = r.expect("503 for a withdrawn service");
    assert!(r.text().contains("withdrawn by its owner mesh-a"), "{}", r.text());
    assert_eq!(upstream_name(&from_b(&meshes, "echo.mesh-a.example", "/")).as_deref(), Some("app-a2"));

    // A malformed resource (exported unchecked) is NACKed with the reason, and B keeps
    // serving the previous good version.
    drop(server);
    let bad =
        format!("{}  - {{name: echo, fqdn: \"\", endpoints: [{{address: {A}, port: 8443}}], sans: [mesh-a]}}\n", "");
    owner_file(&dir, &[bad]);
    let server = Process::start_in(
        &meshes.a,
        &["federation", "serve", "--config", owner.to_str().unwrap(), "--output", "json", "--no-check"],
    )
    .unwrap();
    let nack = eventually(Duration::from_secs(15), || {
        server.stdout().lines().find(|l| l.contains("\"nacked\"")).map(str::to_owned)
    });
    let nack = nack.unwrap_or_else(|| panic!("no NACK; owner said:\n{}", server.stdout()));
    assert!(nack.contains("fqdn is missing"), "{nack}");
    assert_eq!(upstream_name(&from_b(&meshes, "echo.mesh-a.example", "/")).as_deref(), Some("app-a2"));
    drop(sidecar);
}

#[test]
fn killing_the_owner_and_starting_it_again_needs_no_restart_of_the_consumer() {
    let meshes = Meshes::new("r");
    let dir = scratch("federation-restart");
    certs(&dir, &["--mesh", "mesh-a", "--mesh", "mesh-b"]);
    let (_app, app_port) = app(&meshes, "app-a");
    let ingress_a = ingress(&dir, 8443, &[("echo", app_port), ("later", app_port)]);
    let _ingress = Process::start_in(&meshes.a, &["run", "--config", ingress_a.to_str().unwrap()]).unwrap();
    let owner = owner_file(&dir, &[service("echo", 8443)]);
    let serve = || Process::start_in(&meshes.a, &["federation", "serve", "--config", owner.to_str().unwrap()]).unwrap();
    let server = serve();
    let sidecar = Process::start_in(&meshes.b, &["run", "--config", sidecar(&dir).to_str().unwrap()]).unwrap();
    let r = eventually(Duration::from_secs(10), || upstream_name(&from_b(&meshes, "echo.mesh-a.example", "/")));
    assert_eq!(r.as_deref(), Some("app-a"));

    drop(server);
    // While A's federation server is down, what B imported keeps serving.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(upstream_name(&from_b(&meshes, "echo.mesh-a.example", "/")).as_deref(), Some("app-a"));
    owner_file(&dir, &[service("echo", 8443), service("later", 8443)]);
    let _server = serve();
    let r = eventually(Duration::from_secs(40), || upstream_name(&from_b(&meshes, "later.mesh-a.example", "/")));
    assert_eq!(r.as_deref(), Some("app-a"), "B reconnected by itself:\n{}", sidecar.stderr());
    assert!(sidecar.logged("lost owner mesh-a"), "{}", sidecar.stderr());
}

/// `meshwork federation subscribe` against `server`, until it stops (at most 20 s).
fn subscribe(dir: &Path, name: &str, cert: &str, server: &Process, server_name: &str) -> (i32, String, String) {
    let port = port_of(server.first_line.split(" (mTLS)").next().unwrap());
    let file = write(
        &dir.join(format!("{name}.yaml")),
        &format!(
            "mesh: {name}\ntls: {{ca: ca.pem, cert: {cert}.pem, key: {cert}-key.pem}}\nowners: [{{name: mesh-a, address: \"127.0.0.1:{port}\", server_name: {server_name}}}]\n"
        ),
    );
    let out = Command::new("timeout")
        .args(["20"])
        .arg(meshwork_bin())
        .args(["federation", "subscribe", "--config", file.to_str().unwrap()])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn consumers_the_owner_cannot_trust_are_refused_and_told_why() {
    let dir = scratch("federation-refusals");
    certs(&dir, &["--mesh", "mesh-a", "--mesh", "mesh-b", "--mesh", "mesh-x"]);
    certs(&dir, &["--mesh", "mesh-old", "--expired", "mesh-old"]);
    // Another CA, in another directory, for a mesh the owner never federated with.
    let other = dir.join("other-ca");
    certs(&other, &["--mesh", "stranger"]);
    for f in ["stranger.pem", "stranger-key.pem"] {
        std::fs::copy(other.join(f), dir.join(f)).unwrap();
    }
    let owner = write(
        &dir.join("owner.yaml"),
        &format!(
            "mesh: mesh-a\nlisten: 127.0.0.1:0\ntls: {{ca: ca.pem, cert: mesh-a.pem, key: mesh-a-key.pem}}\nconsumers: [spiffe://mesh-b/federation, spiffe://mesh-old/federation]\nservices:\n{}",
            service("echo", 8443)
        ),
    );
    let server = Process::start(&["federation", "serve", "--config", owner.to_str().unwrap()]).unwrap();

    // The trusted consumer gets the catalog (and is stopped by `timeout`, still following).
    let (code, out, _) = subscribe(&dir, "mesh-b", "mesh-b", &server, "mesh-a");
    assert_eq!(code, 124, "{out}");
    assert!(out.contains("imported echo (echo.mesh-a.example) from mesh-a"), "{out}");

    let cases = [
        ("stranger", "stranger", "mesh-a", "does not trust the CA that signed our certificate"),
        ("mesh-old", "mesh-old", "mesh-a", "our certificate has expired"),
        ("mesh-b", "mesh-b", "mesh-z", "wrong SAN"),
        ("mesh-x", "mesh-x", "mesh-a", "are not among the consumers this owner federates with"),
    ];
    for (name, cert, server_name, why) in cases {
        let (code, out, err) = subscribe(&dir, name, cert, &server, server_name);
        assert_eq!(code, 1, "{name}: refused and not retried\n{out}\n{err}");
        assert!(out.contains(why) && err.contains(why), "{name}: should say {why:?}:\n{out}\n{err}");
        assert!(!out.contains("imported"), "{name}: {out}");
    }
    // The owner logged each refusal with its reason.
    let said = server.stderr();
    assert!(said.contains("not signed by the federation CA"), "{said}");
    assert!(said.contains("has expired"), "{said}");
}

#[test]
fn bad_files_are_refused_with_the_field_at_fault() {
    let dir = scratch("federation-files");
    certs(&dir, &["--mesh", "mesh-a"]);
    let cases = [
        (
            format!(
                "mesh: a\nlisten: 127.0.0.1:0\ntls: {{ca: ca.pem, cert: mesh-a.pem, key: mesh-a-key.pem}}\nservices:\n  - {{name: x, fqdn: \"not a name\", endpoints: [{{address: {A}, port: 1}}], sans: [a]}}\n"
            ),
            "fqdn \"not a name\" is not a DNS name",
        ),
        (
            format!(
                "mesh: a\nlisten: 127.0.0.1:0\ntls: {{ca: ca.pem, cert: mesh-a.pem, key: mesh-a-key.pem}}\nservices:\n{}{}",
                service("x", 1),
                service("x", 2)
            ),
            "exported twice",
        ),
        (
            "mesh: a\nlisten: 127.0.0.1:0\ntls: {ca: missing.pem, cert: mesh-a.pem, key: mesh-a-key.pem}\n".to_string(),
            "missing.pem",
        ),
        (
            "mesh: a\nlisten: 127.0.0.1:0\ntls: {ca: ca.pem, cert: mesh-a.pem, key: mesh-a-key.pem}\nservicez: []\n"
                .to_string(),
            "servicez",
        ),
    ];
    for (text, why) in cases {
        let file = write(&dir.join("owner.yaml"), &text);
        let (code, _, err) = run(&["federation", "serve", "--config", file.to_str().unwrap()]);
        assert_ne!(code, 0, "{text}");
        assert!(err.contains(why), "should say {why:?}: {err}");
    }
    let sidecar = write(
        &dir.join("sidecar.yaml"),
        "listen: 127.0.0.1:0\nroute: {direct_response: {status: 404}}\nfederation: {mesh: b, tls: {ca: ca.pem, cert: mesh-a.pem, key: mesh-a-key.pem}, owners: [{name: a, address: nowhere}]}\n",
    );
    let (code, _, err) = run(&["run", "--config", sidecar.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("needs a port"), "{err}");
}

#[test]
fn the_bench_federates_and_reports_what_it_measured() {
    let (code, out, err) = run(&[
        "federation",
        "bench",
        "--services",
        "300",
        "--consumers",
        "2",
        "--changes",
        "50",
        "--rate",
        "500",
        "--json",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["updates_delivered"], 100, "{out}");
    assert!(report["full_sync_s"]["max"].as_f64().unwrap() > 0.0);
    assert!(report["consumer_rss_mib"]["p50"].as_f64().unwrap() > 1.0);
    assert!(report["propagation_ms"]["p99"].as_f64().unwrap() > 0.0);
}
