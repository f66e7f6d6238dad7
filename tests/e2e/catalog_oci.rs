//! The catalog in a real OCI registry: Debian's docker-registry on 127.0.0.1 (with and without
//! htpasswd auth), meshwork publishing, pulling, signing and verifying, skopeo reading what was
//! pushed as an independent client, and `meshwork run` starting filters from `oci://`
//! references and Envoy `remote` code.

use std::path::{Path, PathBuf};

use meshwork_e2e::registry::{Registry, skopeo, skopeo_copy_and_untar, skopeo_inspect};
use meshwork_e2e::*;
use serde_json::Value;

fn catalog() -> String {
    root().join("catalog").display().to_string()
}

fn artifacts() -> [String; 4] {
    [
        "--filters".into(),
        root().join("target/filters").display().to_string(),
        "--ebpf".into(),
        root().join("target/ebpf").display().to_string(),
    ]
}

/// `meshwork catalog …` with the repository's catalog; panics unless it succeeds.
fn catalog_ok(args: &[&str]) -> String {
    let (code, out, err) = catalog_run(args, b"", &[]);
    assert_eq!(code, 0, "meshwork catalog {args:?} failed:\n{out}\n{err}");
    out
}

fn catalog_run(args: &[&str], stdin: &[u8], env: &[(&str, &str)]) -> (i32, String, String) {
    let cat = catalog();
    let mut all = vec!["catalog", "--catalog", cat.as_str()];
    all.extend_from_slice(args);
    run_with(&all, stdin, env)
}

/// Publishes `items` (all when empty) to `registry/meshwork`; returns the publish record.
fn publish(reg: &Registry, dir: &Path, items: &[&str], extra: &[&str]) -> Value {
    let record = dir.join(format!("published-{}.json", rand_tag()));
    let registry = format!("{}/meshwork", reg.host());
    let arts = artifacts();
    let mut args = vec!["publish", "--registry", &registry, "--record", record.to_str().unwrap()];
    args.extend(arts.iter().map(String::as_str));
    args.extend_from_slice(extra);
    args.extend_from_slice(items);
    catalog_ok(&args);
    serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap()
}

fn rand_tag() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(1);
    N.fetch_add(1, Ordering::SeqCst)
}

fn keygen(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let prefix = dir.join(name);
    catalog_ok(&["keygen", "--prefix", prefix.to_str().unwrap()]);
    (prefix.with_extension("key"), prefix.with_extension("pub"))
}

fn reference(record: &Value, id: &str, variant: &str) -> (String, String) {
    let r = &record["items"][id]["references"][variant];
    (
        r["reference"].as_str().unwrap_or_else(|| panic!("{id} {variant} in {record}")).to_owned(),
        r["digest"].as_str().unwrap().to_owned(),
    )
}

fn module(name: &str) -> Vec<u8> {
    std::fs::read(root().join("target/filters").join(format!("{name}.wasm"))).unwrap()
}

#[test]
fn publishing_pushes_every_item_in_the_layouts_pullers_accept() {
    let reg = Registry::start(None);
    let dir = scratch("publish-all");
    let (key, public) = keygen(&dir, "signer");
    let build = dir.join("build");
    let arts = artifacts();
    let mut args = vec!["build", "--out", build.to_str().unwrap()];
    args.extend(arts.iter().map(String::as_str));
    catalog_ok(&args);
    let index: Value = serde_json::from_slice(&std::fs::read(build.join("index.json")).unwrap()).unwrap();
    let record = publish(&reg, &dir, &[], &["--sign", key.to_str().unwrap(), "--tag-runtime"]);

    // Every manifest digest the registry holds is the one `build` computed offline (patterns
    // excepted: publishing rewrites their module paths to registry digests).
    let items = index["items"].as_array().unwrap();
    assert_eq!(items.len(), record["items"].as_object().unwrap().len());
    for item in items {
        let id = item["id"].as_str().unwrap();
        if item["kind"] == "pattern" {
            continue;
        }
        for (variant, oci) in item["oci"].as_object().unwrap() {
            let (_, digest) = reference(&record, id, variant);
            assert_eq!(oci["digest"].as_str().unwrap(), digest, "{id} {variant}");
        }
        assert!(record["items"][id]["signed_by"].is_string(), "{id} is signed");
    }

    // skopeo reads the compat image as an ordinary image and its layer holds the module.
    let (compat, _) = reference(&record, "filter/measure", "compat");
    let inspect = skopeo_inspect(&compat, &[]);
    assert_eq!((inspect["Architecture"].as_str(), inspect["Os"].as_str()), (Some("wasm"), Some("wasip1")));
    let tags: Vec<&str> = inspect["RepoTags"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    for tag in ["0.1.0", "0.1.0-oci", "0.1.0-wasm"] {
        assert!(tags.contains(&tag), "{tags:?}");
    }
    assert!(tags.iter().filter(|t| t.ends_with(".sig")).count() >= 3, "one signature per variant: {tags:?}");
    let unpacked = skopeo_copy_and_untar(&compat, &dir.join("compat"));
    assert_eq!(std::fs::read(unpacked.join("plugin.wasm")).unwrap(), module("measure"));

    // The oci variant: exactly Istio's two layers.
    let (oci, _) = reference(&record, "filter/measure", "oci");
    let raw = skopeo_inspect(&oci, &["--raw"]);
    let types: Vec<&str> = raw["layers"].as_array().unwrap().iter().map(|l| l["mediaType"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        ["application/vnd.module.wasm.config.v1+json", "application/vnd.module.wasm.content.layer.v1+wasm"]
    );
    assert_eq!(raw["config"]["mediaType"], "application/vnd.module.wasm.config.v1+json");
    assert_eq!(raw["annotations"]["module.wasm.runtime/abi_version"], "v0.2.1");
    // TAG-Runtime: one application/wasm layer.
    let (tag_runtime, _) = reference(&record, "filter/measure", "wasm");
    let raw = skopeo_inspect(&tag_runtime, &["--raw"]);
    assert_eq!(raw["layers"][0]["mediaType"], "application/wasm");
    assert_eq!(raw["config"]["mediaType"], "application/vnd.wasm.config.v0+json");

    // eBPF programs: bpfman's labels, meshwork's annotations.
    let (ebpf, _) = reference(&record, "ebpf/xdp-ratelimit", "image");
    let config = skopeo_inspect(&ebpf, &["--config"]);
    let programs: Value =
        serde_json::from_str(config["config"]["Labels"]["io.ebpf.programs"].as_str().unwrap()).unwrap();
    assert_eq!(programs["xdp_ratelimit"], "xdp");
    let raw = skopeo_inspect(&ebpf, &["--raw"]);
    assert_eq!(raw["annotations"]["io.meshwork.ebpf.capabilities"], "CAP_BPF,CAP_NET_ADMIN");
    assert_eq!(raw["annotations"]["io.meshwork.ebpf.attach"], "interface");

    // A pattern comes back naming its filters by registry digest, and runs as published.
    let (canary, _) = reference(&record, "pattern/canary", "bundle");
    let pulled = dir.join("canary");
    let out = catalog_ok(&["pull", &canary, "--out", pulled.to_str().unwrap(), "--key", public.to_str().unwrap()]);
    assert!(out.contains("signature verified"), "{out}");
    let config = std::fs::read_to_string(pulled.join("meshwork.yaml")).unwrap();
    let (_, split_digest) = reference(&record, "filter/traffic-split", "compat");
    assert!(
        config.contains(&format!("oci://{}/meshwork/filters/traffic-split@{split_digest}", reg.host())),
        "{config}"
    );
    assert!(!config.contains("target/filters"), "{config}");
    assert!(pulled.join("README.md").is_file() && pulled.join("envoy.yaml").is_file());
    let (v1, v2) = (upstream("v1"), upstream("v2"));
    let config = config
        .replace("127.0.0.1:10000", "127.0.0.1:0")
        .replace("127.0.0.1:9901", "127.0.0.1:0")
        .replace("127.0.0.1:8080", &v1.addr.to_string())
        .replace("127.0.0.1:8081", &v2.addr.to_string());
    let p = proxy(&format!("cache_dir: {}\n{config}", dir.join("cache").display()));
    assert_eq!(get(&p.url("/"), &[("x-canary", "true")]).header("x-upstream-name"), Some("v2"));
}

#[test]
fn pulling_by_tag_and_by_digest_gives_back_the_built_bytes() {
    let reg = Registry::start(None);
    let dir = scratch("pull");
    let record =
        publish(&reg, &dir, &["filter/retry", "ebpf/sockops-rtt", "policy/filters-pinned"], &["--tag-runtime"]);
    for variant in ["compat", "oci", "wasm"] {
        let (tag_ref, digest) = reference(&record, "filter/retry", variant);
        let repo = tag_ref.rsplit_once(':').unwrap().0;
        for (n, r) in [tag_ref.clone(), format!("{repo}@{digest}")].iter().enumerate() {
            let out = dir.join(format!("retry-{variant}-{n}.wasm"));
            let said = catalog_ok(&["pull", r, "--out", out.to_str().unwrap()]);
            assert!(said.contains(&digest), "{said}");
            assert_eq!(std::fs::read(&out).unwrap(), module("retry"), "{r}");
        }
    }
    let (ebpf, _) = reference(&record, "ebpf/sockops-rtt", "image");
    let out = dir.join("sockops.o");
    let said = catalog_ok(&["pull", &ebpf, "--out", out.to_str().unwrap()]);
    assert!(said.contains("program types sock_ops"), "{said}");
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(root().join("target/ebpf/sockops-rtt.o")).unwrap());
    let (policy, _) = reference(&record, "policy/filters-pinned", "bundle");
    let out = dir.join("policy");
    catalog_ok(&["pull", &policy, "--out", out.to_str().unwrap()]);
    assert_eq!(
        std::fs::read(out.join("policy.rego")).unwrap(),
        std::fs::read(root().join("catalog/policies/filters-pinned/policy.rego")).unwrap()
    );
    // What is not there says so.
    let missing = format!("{}/meshwork/filters/retry:9.9.9", reg.host());
    let (code, _, err) = catalog_run(&["pull", &missing], b"", &[]);
    assert_ne!(code, 0);
    assert!(err.contains("not found error"), "{err}");
}

#[test]
fn signatures_are_verified_and_tampering_is_named() {
    let reg = Registry::start(None);
    let dir = scratch("sign");
    let (key, public) = keygen(&dir, "release");
    let (_, other_public) = keygen(&dir, "other");
    let record = publish(
        &reg,
        &dir,
        &["filter/measure", "filter/timeout", "filter/health-check"],
        &["--sign", key.to_str().unwrap()],
    );
    let unsigned = publish(&reg, &dir, &["filter/bulkhead"], &[]);
    let verify = |r: &str, key: &Path| catalog_run(&["verify", r, "--key", key.to_str().unwrap()], b"", &[]);

    let (measure, measure_digest) = reference(&record, "filter/measure", "compat");
    let (code, out, err) = verify(&measure, &public);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("verified") && out.contains(&measure_digest), "{out}");

    let (code, _, err) = verify(&measure, &other_public);
    assert_ne!(code, 0);
    assert!(err.contains("signature error") && err.contains("none of its 1 signature(s) verifies"), "{err}");

    let (bulkhead, _) = reference(&unsigned, "filter/bulkhead", "compat");
    let (code, _, err) = verify(&bulkhead, &public);
    assert_ne!(code, 0);
    assert!(err.contains("is not signed"), "{err}");

    // The tag moved to other content: nothing signed that manifest.
    let (timeout, _) = reference(&record, "filter/timeout", "compat");
    let (code, _, err) = skopeo(&[
        "copy",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        &format!("docker://{timeout}"),
        &format!("docker://{measure}"),
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = verify(&measure, &public);
    assert_ne!(code, 0);
    assert!(err.contains("is not signed"), "{err}");
    // …and the old signature copied next to it names the old manifest.
    let moved = skopeo_inspect(&measure, &[]);
    let new_digest = moved["Digest"].as_str().unwrap();
    let repo = measure.rsplit_once(':').unwrap().0;
    let (code, _, err) = skopeo(&[
        "copy",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        &format!("docker://{repo}:sha256-{}.sig", measure_digest.trim_start_matches("sha256:")),
        &format!("docker://{repo}:sha256-{}.sig", new_digest.trim_start_matches("sha256:")),
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = verify(&measure, &public);
    assert_ne!(code, 0);
    assert!(
        err.contains(&format!("is for manifest {measure_digest}")) && err.contains("changed after signing"),
        "{err}"
    );

    // A blob altered in the registry's storage: its digest no longer matches.
    let (health, _) = reference(&record, "filter/health-check", "compat");
    let layer = skopeo_inspect(&health, &["--raw"])["layers"][0]["digest"].as_str().unwrap().to_owned();
    let file = reg.blob_file(&layer);
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();
    for args in [
        vec!["pull", health.as_str(), "--out", "/dev/null"],
        vec!["verify", health.as_str(), "--key", public.to_str().unwrap()],
    ] {
        let (code, _, err) = catalog_run(&args, b"", &[]);
        assert_ne!(code, 0, "{args:?}");
        assert!(err.contains("digest"), "{args:?}: {err}");
    }
}

#[test]
fn an_authenticated_registry_takes_flags_environment_or_docker_config() {
    let reg = Registry::start(Some(("ci", "s3cret")));
    let dir = scratch("auth");
    let home = dir.join("home");
    std::fs::create_dir_all(&home).unwrap();
    // No credentials anywhere (an empty HOME, no docker config): refused, and said why.
    let isolated = [("HOME", home.to_str().unwrap()), ("DOCKER_CONFIG", home.to_str().unwrap())];
    let registry = format!("{}/meshwork", reg.host());
    let arts = artifacts();
    let mut args = vec!["publish", "--registry", &registry, "filter/measure"];
    args.extend(arts.iter().map(String::as_str));
    let record = dir.join("record.json");
    args.extend(["--record", record.to_str().unwrap()]);
    let (code, _, err) = catalog_run(&args, b"", &isolated);
    assert_ne!(code, 0);
    assert!(err.contains("authentication error"), "{err}");
    let mut with_user = args.clone();
    with_user.extend(["--username", "ci", "--password-stdin"]);
    let (code, _, err) = catalog_run(&with_user, b"wrong\n", &isolated);
    assert_ne!(code, 0);
    assert!(err.contains("authentication error"), "{err}");
    let (code, _, err) = catalog_run(&with_user, b"s3cret\n", &isolated);
    assert_eq!(code, 0, "{err}");

    let image = format!("{}/meshwork/filters/measure:0.1.0", reg.host());
    let out = dir.join("m.wasm");
    let env =
        [isolated[0], isolated[1], ("MESHWORK_REGISTRY_USERNAME", "ci"), ("MESHWORK_REGISTRY_PASSWORD", "s3cret")];
    let (code, _, err) = catalog_run(&["pull", &image, "--out", out.to_str().unwrap()], b"", &env);
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), module("measure"));

    // docker's config.json, as `docker login` writes it.
    let docker = dir.join("docker");
    std::fs::create_dir_all(&docker).unwrap();
    let auth = {
        use std::io::Write;
        let mut child = std::process::Command::new("base64")
            .arg("-w0")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(b"ci:s3cret").unwrap();
        String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap()
    };
    std::fs::write(docker.join("config.json"), format!(r#"{{"auths": {{"{}": {{"auth": "{auth}"}}}}}}"#, reg.host()))
        .unwrap();
    let env = [isolated[0], ("DOCKER_CONFIG", docker.to_str().unwrap())];
    let (code, _, err) = catalog_run(&["pull", &image, "--out", out.to_str().unwrap()], b"", &env);
    assert_eq!(code, 0, "{err}");
    // skopeo, with the same credentials, reads what meshwork pushed.
    let (code, out, err) =
        skopeo(&["inspect", "--tls-verify=false", "--creds", "ci:s3cret", &format!("docker://{image}")]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"Architecture\": \"wasm\""), "{out}");
}

fn run_config(dir: &Path, cache: &Path, filters: &str, upstream: &Upstream) -> PathBuf {
    let path = dir.join(format!("run-{}.yaml", rand_tag()));
    std::fs::write(
        &path,
        format!(
            "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\ncache_dir: {}\nclusters: [{}]\nroute: {{cluster: app}}\nfilters:\n{filters}",
            cache.display(),
            cluster("app", upstream)
        ),
    )
    .unwrap();
    path
}

#[test]
fn meshwork_run_pulls_oci_modules_checks_them_and_starts_offline_from_the_cache() {
    let mut reg = Registry::start(None);
    let dir = scratch("run-oci");
    let (key, public) = keygen(&dir, "release");
    let (_, other) = keygen(&dir, "other");
    let record = publish(
        &reg,
        &dir,
        &["filter/measure", "filter/local-rate-limit", "filter/retry", "ebpf/xdp-ratelimit"],
        &["--sign", key.to_str().unwrap()],
    );
    let (measure, _) = reference(&record, "filter/measure", "compat");
    let (limit, limit_digest) = reference(&record, "filter/local-rate-limit", "compat");
    let limit_repo = limit.rsplit_once(':').unwrap().0;
    let (retry, retry_digest) = reference(&record, "filter/retry", "oci");
    let filters = format!(
        "  - {{name: measure, root_id: measure, module: oci://{measure}}}\n  - {{name: limit, module: oci://{limit_repo}@{limit_digest}, configuration: {{rate: 1, period: 1h, burst: 2}}}}\n  - {{name: retry, module: oci://{retry}, sha256: {}, configuration: {{mode: envoy, max_retries: 1}}}}\n",
        retry_digest.trim_start_matches("sha256:")
    );
    let app = upstream("app");
    let cache = dir.join("cache");
    let config = run_config(&dir, &cache, &filters, &app);
    let cfg = config.to_str().unwrap();
    let check = |args: &[&str]| {
        let mut all = vec!["run", "--check"];
        all.extend_from_slice(args);
        run(&all)
    };

    // Pulled, signature-checked, and running: measure times the response, the limiter limits.
    {
        let p = Process::start(&["run", "--config", cfg, "--require-signature", public.to_str().unwrap()]).unwrap();
        let url = p.first_line.split("listening on ").nth(1).unwrap().split(' ').next().unwrap().to_owned();
        let first = get(&format!("{url}/"), &[]);
        assert_eq!(first.status, 200);
        assert!(first.header("server-timing").is_some());
        assert_eq!(get(&format!("{url}/"), &[]).status, 200);
        assert_eq!(get(&format!("{url}/"), &[]).status, 429);
    }
    // Failures say what failed.
    let fresh = |name: &str, filters: &str| run_config(&dir, &dir.join(name), filters, &app);
    let wrong_key = fresh("cache-k", &filters);
    let (code, _, err) =
        check(&["--config", wrong_key.to_str().unwrap(), "--require-signature", other.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("signature error"), "{err}");
    let bad_digest = fresh("cache-d", &filters.replace(retry_digest.trim_start_matches("sha256:"), &"0".repeat(64)));
    let (code, _, err) = check(&["--config", bad_digest.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("digest mismatch error") && err.contains("filter retry"), "{err}");
    let (ebpf, _) = reference(&record, "ebpf/xdp-ratelimit", "image");
    let not_wasm = fresh("cache-w", &format!("  - {{name: x, module: oci://{ebpf}}}\n"));
    let (code, _, err) = check(&["--config", not_wasm.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("not a Wasm module error"), "{err}");
    let missing =
        fresh("cache-m", &format!("  - {{name: x, module: oci://{}/meshwork/filters/nope:1.0.0}}\n", reg.host()));
    let (code, _, err) = check(&["--config", missing.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("not found error"), "{err}");

    // The registry gone: the cached modules start the proxy; a fresh cache cannot.
    reg.stop();
    let start = std::time::Instant::now();
    let p = Process::start(&["run", "--config", cfg, "--require-signature", public.to_str().unwrap()]).unwrap();
    let started = start.elapsed();
    let url = p.first_line.split("listening on ").nth(1).unwrap().split(' ').next().unwrap().to_owned();
    assert_eq!(get(&format!("{url}/"), &[]).status, 200);
    assert!(p.logged("from the cache"), "{}", p.stderr());
    eprintln!("started offline with three cached oci:// filters in {started:?}");
    let offline = fresh("cache-o", &filters);
    let (code, _, err) = check(&["--config", offline.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("network error"), "{err}");
}

#[test]
fn envoy_remote_code_is_fetched_over_http_and_checked_against_its_sha256() {
    let reg = Registry::start(None);
    let dir = scratch("remote");
    publish(&reg, &dir, &["filter/measure"], &[]);
    let digest = format!("sha256:{}", {
        use sha2::Digest;
        let h = sha2::Sha256::digest(module("measure"));
        h.iter().map(|b| format!("{b:02x}")).collect::<String>()
    });
    // The oci variant's second layer is the module itself: the registry serves it over HTTP.
    let uri = format!("http://{}/v2/meshwork/filters/measure/blobs/{digest}", reg.host());
    let app = upstream("app");
    let bootstrap = |sha: &str| {
        format!(
            r#"admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
static_resources:
  listeners:
  - name: main
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress_http
          route_config:
            virtual_hosts:
            - name: app
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: app}}
          http_filters:
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: measure
                root_id: measure
                vm_config:
                  vm_id: measure
                  code:
                    remote:
                      http_uri: {{uri: "{uri}", cluster: registry, timeout: 5s}}
                      {sha}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: app
    type: STATIC
    load_assignment: {{cluster_name: app, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]}}]}}
"#,
            port = app.addr.port()
        )
    };
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let good = write("good.yaml", bootstrap(&format!("sha256: {}", digest.trim_start_matches("sha256:"))));
    let env = [("XDG_CACHE_HOME", dir.join("xdg").display().to_string())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (code, out, err) = run_with(&["run", "--check", "--envoy-config", good.to_str().unwrap()], b"", &env);
    assert_eq!(code, 0, "{out}{err}");
    let wrong = write("wrong.yaml", bootstrap(&format!("sha256: {}", "ab".repeat(32))));
    let (code, _, err) = run_with(&["run", "--check", "--envoy-config", wrong.to_str().unwrap()], b"", &env);
    assert_ne!(code, 0);
    assert!(err.contains("digest mismatch error"), "{err}");
    let unpinned = write("unpinned.yaml", bootstrap(""));
    let (code, _, err) = run_with(&["run", "--check", "--envoy-config", unpinned.to_str().unwrap()], b"", &env);
    assert_ne!(code, 0);
    assert!(err.contains("sha256 is missing"), "{err}");
}
