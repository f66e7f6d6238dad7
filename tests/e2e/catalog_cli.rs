//! `meshwork catalog`: browsing, validation with errors that name file, field and expectation,
//! reproducible builds, the Meshery and Artifact Hub exports, keys, and the policies over
//! configurations (violations with their paths, a non-zero exit).

use std::path::Path;

use meshwork_e2e::*;
use serde_json::Value;

fn cat(args: &[&str]) -> (i32, String, String) {
    let catalog = root().join("catalog");
    let mut all = vec!["catalog", "--catalog", catalog.to_str().unwrap()];
    all.extend_from_slice(args);
    run(&all)
}

fn ok(args: &[&str]) -> String {
    let (code, out, err) = cat(args);
    assert_eq!(code, 0, "catalog {args:?}: {out}{err}");
    out
}

fn ids(out: &str) -> Vec<String> {
    out.lines().map(|l| l.split_whitespace().next().unwrap().to_owned()).collect()
}

#[test]
fn the_catalog_is_valid_and_lists_by_kind_category_compatibility_and_text() {
    let out = ok(&["validate"]);
    assert!(out.contains("24 items valid (5 patterns, 10 filters, 3 eBPF programs, 6 policies)"), "{out}");
    assert_eq!(ids(&ok(&["list", "--kind", "filter"])).len(), 10);
    assert_eq!(ids(&ok(&["list", "--kind", "pattern", "--compatibility", "istio"])).len(), 5);
    let security = ids(&ok(&["list", "--category", "security"]));
    assert_eq!(security, ["ebpf/xdp-ratelimit", "policy/ebpf-least-privilege", "policy/filters-pinned"]);
    assert_eq!(
        ids(&ok(&["list", "--technology", "ebpf"])),
        ["ebpf/connect-breaker", "ebpf/sockops-rtt", "ebpf/xdp-ratelimit"]
    );
    let found = ids(&ok(&["search", "retry budget"]));
    for id in ["pattern/resilient-upstream", "filter/retry"] {
        assert!(found.contains(&id.to_owned()), "{found:?}");
    }
    let (code, _, err) = cat(&["search", "no-such-thing-anywhere"]);
    assert_eq!(code, 1, "nothing found is exit 1");
    assert!(err.contains("no item matches"));
    let (code, _, err) = cat(&["list", "--category", "Plumbing"]);
    assert_ne!(code, 0);
    assert!(err.contains("unknown category \"Plumbing\"") && err.contains("Resiliency"), "{err}");
    let retry: Value = serde_json::from_str(&ok(&["show", "filter/retry", "--output", "json"])).unwrap();
    assert_eq!(
        (retry["kind"].as_str(), retry["filter"]["playground"].as_str()),
        (Some("filter"), Some("retry-budget"))
    );
    let (code, _, err) = cat(&["show", "nope"]);
    assert_ne!(code, 0);
    assert!(err.contains("no catalog item \"nope\""), "{err}");
}

fn write(dir: &Path, rel: &str, text: &str) {
    let path = dir.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

#[test]
fn validation_names_the_file_the_field_and_what_was_expected() {
    let dir = scratch("bad-catalog");
    let catalog = dir.join("catalog");
    write(
        &catalog,
        "filters/typo/item.yaml",
        "name: typo\ndisplayName: Typo\nkind: filter\nversion: 0.1.0\ndescription: x\nclass: official\ncategory: Plumbing\ntechnology: [webassembly]\ncompatibility: [istio]\nlicense: MIT\nprovider: {name: me}\nreadme: README.md\nfilter: {crate: x, abi: \"0.2.1\"}\n",
    );
    write(
        &catalog,
        "patterns/broken/item.yaml",
        "name: Broken\ndisplayName: Broken\nkind: filter\nversion: \"1.0\"\ndescription: x\nclass: official\ncategory: Resiliency\ntechnology: [webassembly]\ncompatibility: [istio, nomad]\nlicense: MIT\nprovider: {name: me}\nreadme: README.md\npattern: {config: meshwork.yaml, filters: [nope], test: tests/e2e/none.rs::x}\n",
    );
    let (code, _, err) = run(&["catalog", "--catalog", catalog.to_str().unwrap(), "validate"]);
    assert_ne!(code, 0);
    let file = |k: &str| catalog.join(k).join("item.yaml").display().to_string();
    // The schema error: where, which field, what was expected.
    let typo = err.lines().find(|l| l.starts_with(&file("filters/typo"))).unwrap_or_else(|| panic!("{err}"));
    assert!(typo.contains("line 7 column") && typo.contains("category") && typo.contains("Resiliency"), "{typo}");
    // Every problem of the other file, each on its own line.
    for expect in [
        "name: \"Broken\" must be lower-case",
        "kind: is filter but the item is under catalog/patterns/",
        "version: \"1.0\" is not a semantic version",
        "compatibility[1]: \"nomad\" is not one of",
        "readme: ",
        "pattern: only pattern items have a `pattern:` section",
        "filter: a filter item needs its `filter:` section",
        "pattern.test: ",
        "pattern.filters[0]: no filter item named \"nope\"",
    ] {
        assert!(
            err.lines().any(|l| l.starts_with(&file("patterns/broken")) && l.contains(expect)),
            "{expect:?} in:\n{err}"
        );
    }
}

#[test]
fn builds_are_reproducible_and_exports_have_the_catalogs_shapes() {
    let dir = scratch("build-export");
    let filters = root().join("target/filters");
    let ebpf = root().join("target/ebpf");
    let build = |out: &Path| {
        ok(&[
            "build",
            "--out",
            out.to_str().unwrap(),
            "--filters",
            filters.to_str().unwrap(),
            "--ebpf",
            ebpf.to_str().unwrap(),
        ]);
        std::fs::read(out.join("index.json")).unwrap()
    };
    let (a, b) = (build(&dir.join("a")), build(&dir.join("b")));
    assert_eq!(a, b, "two builds, the same digests");
    let index: Value = serde_json::from_slice(&a).unwrap();
    let measure = index["items"].as_array().unwrap().iter().find(|i| i["id"] == "filter/measure").unwrap();
    let wasm = std::fs::read(filters.join("measure.wasm")).unwrap();
    use sha2::Digest;
    let hex: String = sha2::Sha256::digest(&wasm).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(measure["sha256"], format!("sha256:{hex}"));
    assert_eq!(measure["oci"].as_object().unwrap().len(), 3);
    let (code, _, err) = cat(&["build", "--out", dir.join("c").to_str().unwrap(), "--filters", dir.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(
        err.contains("measure.wasm is missing (run `make filters`)") || err.contains("is missing (run `make filters`)"),
        "{err}"
    );

    // Meshery: the page its catalog API answers.
    let page: Value = serde_json::from_str(&ok(&["export", "meshery", "--content", "pattern"])).unwrap();
    assert_eq!(page["totalCount"], 5);
    let first = &page["patterns"][0];
    for field in ["id", "name", "patternFile", "catalogData", "visibility", "createdAt"] {
        assert!(!first[field].is_null(), "{field} in {first}");
    }
    for field in ["class", "compatibility", "type", "patternInfo", "patternCaveats", "publishedVersion"] {
        assert!(!first["catalogData"][field].is_null(), "catalogData.{field} in {first}");
    }
    let page: Value = serde_json::from_str(&ok(&[
        "export",
        "meshery",
        "--content",
        "filter",
        "--page",
        "1",
        "--page-size",
        "4",
        "--order",
        "name desc",
    ]))
    .unwrap();
    assert_eq!(
        (page["filters"].as_array().unwrap().len(), page["totalCount"].as_u64(), page["page"].as_u64()),
        (4, Some(10), Some(1))
    );
    assert!(
        page["filters"][0]["catalog_data"]["type"].is_string() && page["filters"][0]["filter_resource"].is_string()
    );
    let resiliency: Value =
        serde_json::from_str(&ok(&["export", "meshery", "--content", "pattern", "--type", "Resiliency"])).unwrap();
    assert_eq!(resiliency["totalCount"], 2);

    // Artifact Hub: one repository per kind, <package>/<version>/artifacthub-pkg.yml.
    let hub = dir.join("hub");
    let index_path = dir.join("a/index.json");
    ok(&[
        "export",
        "artifacthub",
        "--out",
        hub.to_str().unwrap(),
        "--index",
        index_path.to_str().unwrap(),
        "--registry",
        "ghcr.io/example",
    ]);
    let pkg: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(hub.join("patterns/canary/0.1.0/artifacthub-pkg.yml")).unwrap(),
    )
    .unwrap();
    for field in ["name", "displayName", "version", "createdAt", "description", "license", "readme", "install"] {
        assert!(pkg[field].is_string() && !pkg[field].as_str().unwrap().is_empty(), "{field} in {pkg}");
    }
    assert_eq!(pkg["provider"]["name"], "meshwork");
    assert!(
        hub.join("patterns/canary/0.1.0/design.yml").is_file() && hub.join("patterns/artifacthub-repo.yml").is_file()
    );
    let filter: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(hub.join("filters/measure/0.1.0/artifacthub-pkg.yml")).unwrap(),
    )
    .unwrap();
    let images = filter["containersImages"].as_array().unwrap();
    assert!(images.iter().any(|i| i["image"] == "ghcr.io/example/filters/measure:0.1.0"), "{images:?}");
    assert!(
        filter["install"]
            .as_str()
            .unwrap()
            .contains(measure["oci"]["compat"]["digest"].as_str().unwrap().trim_start_matches("sha256:"))
    );
}

#[test]
fn keys_are_private_and_never_overwritten() {
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch("keys");
    let prefix = dir.join("k");
    ok(&["keygen", "--prefix", prefix.to_str().unwrap()]);
    let mode = std::fs::metadata(prefix.with_extension("key")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(std::fs::read_to_string(prefix.with_extension("pub")).unwrap().starts_with("-----BEGIN PUBLIC KEY-----"));
    let (code, _, err) = cat(&["keygen", "--prefix", prefix.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("exists; not overwriting"), "{err}");
}

#[test]
fn policies_name_violations_by_path_and_pass_the_catalogs_own_configurations() {
    let policies = root().join("catalog/policies");
    let fixture = |p: &str| policies.join(p).display().to_string();
    let (code, out, _) = cat(&["check-policy", &fixture("retry-budgeted/examples/fail-no-budget.yaml")]);
    assert_eq!(code, 1);
    assert!(out.contains(": filters[0].configuration.budget: retries without a budget"), "{out}");
    assert!(out.contains(": listeners[0].filters[0].configuration: retries in envoy mode need a deadline"), "{out}");
    let (code, out, _) =
        cat(&["check-policy", "--output", "json", &fixture("filters-pinned/examples/fail-unpinned.yaml")]);
    assert_eq!(code, 1);
    let v: Value = serde_json::from_str(&out).unwrap();
    let paths: Vec<&str> = v.as_array().unwrap().iter().map(|v| v["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["filters[0]", "filters[1]"]);
    assert!(v.as_array().unwrap().iter().all(|v| v["policy"] == "filters-pinned"));
    let (code, out, _) = cat(&["check-policy", &fixture("ebpf-least-privilege/examples/fail-sys-admin.yaml")]);
    assert_eq!(code, 1);
    assert!(out.contains("ebpf.capabilities[0]: CAP_SYS_ADMIN is not needed"), "{out}");

    // The catalog's own patterns, items and examples pass (the fault-injection example, which
    // faults 10 % of all traffic without a header, is the one the policies flag).
    let mut files: Vec<String> = Vec::new();
    for pattern in std::fs::read_dir(root().join("catalog/patterns")).unwrap() {
        let dir = pattern.unwrap().path();
        files.push(dir.join("meshwork.yaml").display().to_string());
        files.push(dir.join("envoy.yaml").display().to_string());
    }
    for kind in ["filters", "ebpf", "patterns", "policies"] {
        for item in std::fs::read_dir(root().join("catalog").join(kind)).unwrap() {
            let path = item.unwrap().path();
            if path.is_dir() {
                files.push(path.join("item.yaml").display().to_string());
            }
        }
    }
    let args: Vec<&str> = std::iter::once("check-policy").chain(files.iter().map(String::as_str)).collect();
    let (code, out, err) = cat(&args);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("no violations (6 policies)"), "{out}");
    let example = root().join("filters/fault-injection/example.yaml");
    let (code, out, _) = cat(&["check-policy", example.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(out.contains("filters[0].configuration.headers: faults hit every request"), "{out}");
    let (code, _, err) =
        cat(&["check-policy", root().join("catalog/patterns/edge-rate-limiting/limits.yaml").to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("none of the kinds the policies judge"), "{err}");
}
