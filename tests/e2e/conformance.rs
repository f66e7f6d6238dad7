//! `meshwork conformance`: every suite against meshwork and against the Envoy bootstrap it
//! generates, every known-bad configuration caught, nginx and HAProxy run for what they can
//! express, reports in their upstream shapes, signed results verified and reproduced, the matrix.

use std::path::Path;

use meshwork_e2e::*;
use serde_json::Value;

fn conformance(args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["conformance"];
    all.extend_from_slice(args);
    run(&all)
}

/// The JSON result lines of a `--output json` run.
fn results(stdout: &str) -> Vec<Value> {
    stdout.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).filter(|v| v.get("id").is_some()).collect()
}

fn verdicts<'a>(results: &'a [Value], word: &str) -> Vec<&'a str> {
    results.iter().filter(|r| r["verdict"]["result"] == word).map(|r| r["id"].as_str().unwrap()).collect()
}

fn assertion_count() -> usize {
    let (code, out, err) = conformance(&["list", "--output", "json"]);
    assert_eq!(code, 0, "{err}");
    out.lines().count()
}

/// (exit code, results, what went wrong: every result that is not a pass, and stderr).
fn run_target(target: &str, dir: &Path, extra: &[&str]) -> (i32, Vec<Value>, String) {
    let mut args = vec!["run", "--target", target, "--output", "json", "--report-dir", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    let (code, out, err) = conformance(&args);
    let results = results(&out);
    let mut problems: Vec<String> = results
        .iter()
        .filter(|r| r["verdict"]["result"] != "pass")
        .map(|r| format!("{} {}: {}", r["verdict"]["result"], r["id"], r["verdict"]["reason"]))
        .collect();
    problems.push(err);
    (code, results, problems.join("\n"))
}

#[test]
fn meshwork_passes_every_suite_and_writes_the_reports() {
    let dir = scratch("conformance-meshwork");
    let (code, results, log) = run_target("meshwork", &dir, &[]);
    assert_eq!(code, 0, "{log}");
    assert_eq!(results.len(), assertion_count(), "every assertion reports once: {log}");
    assert!(verdicts(&results, "fail").is_empty(), "{log}");
    // Only the identity check (no mTLS identities here) is unsupported.
    assert_eq!(verdicts(&results, "unsupported"), ["smi/TrafficTarget/source-identity"]);
    for suite in ["smi/", "gamma/", "patterns/"] {
        assert!(verdicts(&results, "pass").iter().filter(|id| id.starts_with(suite)).count() >= 7, "{suite}: {log}");
    }

    // GAMMA's ConformanceReport, with its capitalised statistics keys.
    let gamma: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(dir.join("gamma-conformance-report.yaml")).unwrap()).unwrap();
    assert_eq!(gamma["apiVersion"], "gateway.networking.k8s.io/v1");
    assert_eq!(gamma["kind"], "ConformanceReport");
    let profile = &gamma["profiles"][0];
    assert_eq!(profile["name"], "MESH-HTTP");
    assert_eq!(profile["core"]["result"], "success");
    assert!(profile["core"]["statistics"]["Passed"].as_u64().unwrap() >= 5, "{profile}");
    assert_eq!(profile["core"]["statistics"]["Failed"], 0);
    let supported = profile["extended"]["supportedFeatures"].as_array().unwrap();
    assert!(supported.iter().any(|f| f == "HTTPRouteQueryParamMatching"), "{profile}");

    // JUnit for CI and Meshery's SMI result.
    let junit = std::fs::read_to_string(dir.join("junit.xml")).unwrap();
    assert!(junit.starts_with("<?xml") && junit.contains("<testsuite") && !junit.contains("<failure"), "{junit}");
    let meshery: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("meshery-smi.json")).unwrap()).unwrap();
    assert_eq!(meshery["casespassed"], "7");
    let details = meshery["details"].as_array().unwrap();
    assert_eq!(details.len(), 8);
    assert!(details.iter().all(|d| d["smispec"].is_string() && d["capability"].is_string()));
    let summary = std::fs::read_to_string(dir.join("summary.txt")).unwrap();
    assert!(summary.contains("No failures"), "{summary}");
}

#[test]
fn every_known_bad_configuration_is_caught() {
    for target in ["meshwork", "envoy-config"] {
        let dir = scratch("conformance-negative");
        let (code, results, log) = run_target(target, &dir, &["--negative"]);
        assert_eq!(code, 0, "{target}: a check accepted its known-bad configuration:\n{log}");
        assert!(verdicts(&results, "fail").is_empty(), "{log}");
        // Every assertion but the identity one has a known-bad configuration.
        assert_eq!(verdicts(&results, "pass").len(), results.len() - 1, "{log}");
    }
}

#[test]
fn the_envoy_bootstrap_meshwork_generates_behaves_as_its_own_config() {
    let dir = scratch("conformance-envoy-config");
    let (code, results, log) = run_target("envoy-config", &dir, &[]);
    assert_eq!(code, 0, "{log}");
    assert!(verdicts(&results, "fail").is_empty(), "{log}");
    assert_eq!(verdicts(&results, "unsupported"), ["smi/TrafficTarget/source-identity"]);
    // What ran is an Envoy bootstrap, in Gateway API's precedence order (Envoy takes the first
    // matching route).
    let weight = results.iter().find(|r| r["id"] == "gamma/MeshHTTPRouteWeight/70-30").unwrap();
    let bootstrap: Value = serde_json::from_str(weight["configuration"].as_str().unwrap()).unwrap();
    let route = &bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]
        ["virtual_hosts"][0]["routes"][0];
    assert_eq!(route["route"]["weighted_clusters"]["clusters"][0]["weight"], 70, "{route}");
}

#[test]
fn nginx_and_haproxy_run_what_they_can_express_and_report_the_rest_unsupported() {
    for target in ["nginx", "haproxy"] {
        let dir = scratch("conformance-peer");
        let (code, results, log) = run_target(target, &dir, &[]);
        assert_eq!(code, 0, "{target}: {log}");
        assert_eq!(results.len(), assertion_count());
        assert!(verdicts(&results, "fail").is_empty(), "{target}: {log}");
        let passed = verdicts(&results, "pass");
        for id in
            ["gamma/MeshBasic/echo-answers", "gamma/MeshHTTPRouteWeight/70-30", "smi/TrafficTarget/path-regex-allows"]
        {
            assert!(passed.contains(&id), "{target} should pass {id}: {log}");
        }
        // The pattern suites need proxy-wasm filters (unsupported, never failed), except the
        // route's own timeout, which both express.
        assert!(passed.contains(&"patterns/timeouts/route-deadline"), "{target}: {log}");
        for r in results.iter().filter(|r| r["id"].as_str().unwrap().starts_with("patterns/")) {
            if r["id"] != "patterns/timeouts/route-deadline" {
                assert_eq!(r["verdict"]["result"], "unsupported", "{target}: {r}");
            }
        }
    }
}

#[test]
fn results_are_signed_verified_and_reproduced() {
    let dir = scratch("conformance-signed");
    // A copy of the filters, so the test can change one after signing.
    let filters = dir.join("filters");
    std::fs::create_dir_all(&filters).unwrap();
    for f in ["retry", "timeout"] {
        std::fs::copy(wasm(f), filters.join(format!("{f}.wasm"))).unwrap();
    }
    let key = dir.join("signing.key");
    for (k, alg) in [(&key, "ed25519"), (&dir.join("other.key"), "p256")] {
        let (code, out, err) = conformance(&["keygen", "--out", k.to_str().unwrap(), "--algorithm", alg]);
        assert_eq!(code, 0, "{out}{err}");
    }
    let reports = dir.join("reports");
    let (code, out, err) = conformance(&[
        "run",
        "--filter",
        "patterns/retry/retries",
        "--filters",
        filters.to_str().unwrap(),
        "--report-dir",
        reports.to_str().unwrap(),
        "--sign-key",
        key.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let attestation = reports.join("attestation.dsse.json");
    assert!(out.contains("meshwork conformance verify"), "{out}");
    let public = format!("{}.pub", key.display());
    let (code, out, err) = conformance(&["verify", attestation.to_str().unwrap(), "--key", &public]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("signature ok") && out.contains("subjects match"), "{out}");

    // The statement is in-toto's test-result predicate over the binary and the modules.
    let envelope: Value = serde_json::from_str(&std::fs::read_to_string(&attestation).unwrap()).unwrap();
    assert_eq!(envelope["payloadType"], "application/vnd.in-toto+json");
    use base64::Engine as _;
    let statement: Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD.decode(envelope["payload"].as_str().unwrap()).unwrap(),
    )
    .unwrap();
    assert_eq!(statement["predicateType"], "https://in-toto.io/attestation/test-result/v0.1");
    assert_eq!(statement["predicate"]["result"], "PASSED");
    let subjects: Vec<&str> =
        statement["subject"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert!(subjects.contains(&"meshwork") && subjects.contains(&"filters/retry.wasm"), "{subjects:?}");

    let (code, out, err) = conformance(&[
        "reproduce",
        attestation.to_str().unwrap(),
        "--key",
        &public,
        "--report-dir",
        dir.join("again").to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("reproduced: all 1 verdicts match"), "{out}");

    // Another key, a changed payload, a changed module: each refused, saying which.
    let other = format!("{}.pub", dir.join("other.key").display());
    let (code, _, err) = conformance(&["verify", attestation.to_str().unwrap(), "--key", &other]);
    assert_ne!(code, 0);
    assert!(err.contains("signature"), "{err}");
    let mut tampered = envelope.clone();
    let mut payload = base64::engine::general_purpose::STANDARD.decode(envelope["payload"].as_str().unwrap()).unwrap();
    let at = String::from_utf8_lossy(&payload).find("PASSED").unwrap();
    payload[at..at + 6].copy_from_slice(b"FAILED");
    tampered["payload"] = base64::engine::general_purpose::STANDARD.encode(&payload).into();
    let forged_path = dir.join("tampered.json");
    std::fs::write(&forged_path, tampered.to_string()).unwrap();
    let (code, _, err) = conformance(&["verify", forged_path.to_str().unwrap(), "--key", &public]);
    assert_ne!(code, 0);
    assert!(err.contains("none of the envelope's"), "{err}");
    std::fs::write(filters.join("retry.wasm"), b"\0asm\x01\0\0\0").unwrap();
    let (code, _, err) = conformance(&["verify", attestation.to_str().unwrap(), "--key", &public]);
    assert_ne!(code, 0);
    assert!(err.contains("filters/retry.wasm") && err.contains("the attestation says"), "{err}");
}

#[test]
fn the_matrix_compares_targets() {
    let dir = scratch("conformance-matrix");
    let (code, out, err) = conformance(&[
        "matrix",
        "--target",
        "meshwork",
        "--target",
        "nginx",
        "--suite",
        "gamma",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let json: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("matrix.json")).unwrap()).unwrap();
    assert_eq!(json["targets"], serde_json::json!(["meshwork", "nginx"]));
    let rows = json["rows"].as_array().unwrap();
    assert!(rows.iter().all(|r| r["id"].as_str().unwrap().starts_with("gamma/")));
    let basic = rows.iter().find(|r| r["id"] == "gamma/MeshBasic/echo-answers").unwrap();
    assert_eq!(basic["results"]["meshwork"], "pass");
    assert_eq!(basic["results"]["nginx"], "pass");
    let markdown = std::fs::read_to_string(dir.join("matrix.md")).unwrap();
    assert!(markdown.lines().any(|l| l.contains("meshwork") && l.contains("nginx")), "{markdown}");
    // The catalog's site links it.
    let site = dir.join("site");
    let (code, out, err) = run(&[
        "catalog",
        "--catalog",
        root().join("catalog").to_str().unwrap(),
        "site",
        "--out",
        site.to_str().unwrap(),
        "--conformance",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let index = std::fs::read_to_string(site.join("index.html")).unwrap();
    assert!(index.contains("href=\"./conformance.html\""), "{index}");
    assert!(site.join("conformance.html").is_file());
    let html = std::fs::read_to_string(dir.join("matrix.html")).unwrap();
    assert!(html.contains("<table"), "{html}");
    for external in ["src=\"http", "href=\"http", "@import", "url(http"] {
        assert!(!html.contains(external), "the page makes no external requests: {external}");
    }
}
