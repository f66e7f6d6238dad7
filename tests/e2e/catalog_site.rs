//! The catalog's web site in a real browser: Debian's chromium, headless, driven over WebDriver
//! (chromedriver) with fantoccini. The site is rendered by `meshwork catalog site` with the
//! playground that `make playground` compiled, served over HTTP from 127.0.0.1.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator, key::Key};
use meshwork_e2e::static_files::{StaticServer, serve};
use meshwork_e2e::*;
use serde_json::{Value, json};

struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chromedriver() -> Driver {
    for (bin, package) in [("chromedriver", "chromium-driver"), ("chromium", "chromium")] {
        let found =
            Command::new("sh").args(["-c", &format!("command -v {bin}")]).output().is_ok_and(|o| o.status.success());
        assert!(found, "{bin} is missing: install the Debian package {package} (scripts/setup.sh does)");
    }
    let port = free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let up = eventually(Duration::from_secs(20), || std::net::TcpStream::connect(("127.0.0.1", port)).ok());
    assert!(up.is_some(), "chromedriver did not listen on {port}");
    Driver { child, port }
}

/// Renders the site (with build digests and the playground) and serves it.
fn site() -> StaticServer {
    let dir = scratch("site");
    let build = dir.join("build");
    let out = dir.join("site");
    let playground = root().join("target/playground");
    assert!(playground.join("meshwork_playground_bg.wasm").is_file(), "run `make playground` (make test does)");
    let cat = root().join("catalog");
    let common = ["catalog", "--catalog", cat.to_str().unwrap()];
    let filters = root().join("target/filters");
    let ebpf = root().join("target/ebpf");
    let (code, _, err) = run(&[
        &common[..],
        &[
            "build",
            "--out",
            build.to_str().unwrap(),
            "--filters",
            filters.to_str().unwrap(),
            "--ebpf",
            ebpf.to_str().unwrap(),
        ],
    ]
    .concat());
    assert_eq!(code, 0, "{err}");
    let index = build.join("index.json");
    let (code, out_text, err) = run(&[
        &common[..],
        &[
            "site",
            "--out",
            out.to_str().unwrap(),
            "--index",
            index.to_str().unwrap(),
            "--playground",
            playground.to_str().unwrap(),
        ],
    ]
    .concat());
    assert_eq!(code, 0, "{err}");
    assert!(out_text.contains("with the playground"), "{out_text}");
    serve(&out)
}

async fn browser(driver: &Driver) -> Client {
    let profile = scratch("chromium-profile");
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,2000", format!("--user-data-dir={}", profile.display())]}),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a WebDriver session with chromium")
}

async fn visible_cards(c: &Client) -> BTreeSet<String> {
    let ids = c
        .execute("return Array.from(document.querySelectorAll('#cards .card')).filter(e => !e.hidden && e.offsetParent !== null).map(e => e.dataset.id)", vec![])
        .await
        .unwrap();
    ids.as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect()
}

/// `meshwork catalog list` with `filters`, as ids: what the page should show.
fn expected(filters: &[&str]) -> BTreeSet<String> {
    let cat = root().join("catalog");
    let mut args = vec!["catalog", "--catalog", cat.to_str().unwrap(), "list", "--output", "json"];
    args.extend_from_slice(filters);
    let (code, out, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    let items: Value = serde_json::from_str(&out).unwrap();
    items
        .as_array()
        .unwrap()
        .iter()
        .map(|i| format!("{}/{}", i["kind"].as_str().unwrap(), i["name"].as_str().unwrap()))
        .collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

#[test]
fn filters_on_the_index_page_show_the_matching_cards() {
    let server = site();
    let driver = chromedriver();
    runtime().block_on(async {
        let c = browser(&driver).await;
        c.goto(&server.url("index.html")).await.unwrap();
        let all = expected(&[]);
        assert_eq!(visible_cards(&c).await, all);
        assert_eq!(all.len(), 24);

        // Tick a compatibility box: only items that run on Istio.
        c.find(Locator::Css("input[name=compatibility][value=istio]")).await.unwrap().click().await.unwrap();
        assert_eq!(visible_cards(&c).await, expected(&["--compatibility", "istio"]));
        // And a category.
        c.find(Locator::Css("input[name=category][value=Resiliency]")).await.unwrap().click().await.unwrap();
        let shown = visible_cards(&c).await;
        assert_eq!(shown, expected(&["--compatibility", "istio", "--category", "Resiliency"]));
        assert!(shown.contains("pattern/resilient-upstream") && !shown.contains("ebpf/connect-breaker"), "{shown:?}");
        let count = c.find(Locator::Id("count")).await.unwrap().text().await.unwrap();
        assert_eq!(count, format!("Showing {} of 24 items.", shown.len()));
        // Words narrow it further.
        c.find(Locator::Id("q")).await.unwrap().send_keys("budget").await.unwrap();
        let words = visible_cards(&c).await;
        assert!(words.contains("filter/retry") && words.contains("pattern/resilient-upstream"), "{words:?}");
        assert!(words.is_subset(&shown) && words.len() < shown.len(), "{words:?}");
        // A kind.
        c.find(Locator::Css("input[name=category][value='']")).await.unwrap().click().await.unwrap();
        c.find(Locator::Css("input[name=kind][value=policy]")).await.unwrap().click().await.unwrap();
        assert_eq!(visible_cards(&c).await, BTreeSet::from(["policy/retry-budgeted".to_owned()]));

        // Everything the page loaded came from this server.
        let origin = server.url("");
        let loaded = c.execute("return performance.getEntriesByType('resource').map(e => e.name)", vec![]).await.unwrap();
        let loaded: Vec<String> = serde_json::from_value(loaded).unwrap();
        assert!(!loaded.is_empty() && loaded.iter().all(|u| u.starts_with(&origin)), "{loaded:?}");

        // Every form control has a label.
        let unlabelled = c
            .execute("return Array.from(document.querySelectorAll('input')).filter(i => i.labels.length === 0).map(i => i.outerHTML)", vec![])
            .await
            .unwrap();
        assert_eq!(unlabelled, json!([]));

        // An item page: README, digests, the commands, a link to its playground.
        c.goto(&server.url("filters/retry.html")).await.unwrap();
        let text = c.find(Locator::Css("main")).await.unwrap().text().await.unwrap();
        assert!(text.contains("Pull and deploy") && text.contains("oci://REGISTRY/filters/retry:0.1.0"), "{text}");
        assert!(text.contains("Retry budget") && text.contains("sha256:"), "{text}");
        c.find(Locator::Css("a[href='../playground/retry-budget.html']")).await.unwrap();
        c.close().await.unwrap();
    });
    // Nothing was asked of any other host: every request reached this server, and none failed.
    let asked = server.requests.lock().unwrap().clone();
    assert!(
        asked.iter().any(|p| p.ends_with("catalog.js")) && asked.iter().any(|p| p.ends_with("site.css")),
        "{asked:?}"
    );
}

async fn series(c: &Client) -> (BTreeMap<String, f64>, Value, u64) {
    let state = meshwork_e2e::eventually_async(Duration::from_secs(20), || async {
        let s = c.execute("return window.meshworkPlayground", vec![]).await.ok()?;
        (s["runs"].as_u64().unwrap_or(0) > 0).then_some(s)
    })
    .await
    .expect("the playground ran");
    assert!(state["error"].is_null(), "{state}");
    let params = serde_json::from_value(state["params"].clone()).unwrap();
    (params, state["series"].clone(), state["runs"].as_u64().unwrap())
}

#[test]
fn the_playground_runs_the_patterns_code_in_the_browser() {
    let server = site();
    let driver = chromedriver();
    runtime().block_on(async {
        let c = browser(&driver).await;
        for (page, slider) in [
            ("token-bucket", "burst"),
            ("circuit-breaker", "consecutive_failures"),
            ("retry-budget", "budget_ratio"),
            ("bulkhead", "max_concurrent"),
        ] {
            c.goto(&server.url(&format!("playground/{page}.html"))).await.unwrap();
            let (params, before, runs) = series(&c).await;
            // The browser's decisions are the Rust crate's for the same inputs.
            let native = meshwork_playground::simulate(page, &params).unwrap();
            assert_eq!(before, serde_json::to_value(&native).unwrap(), "{page}");
            // The chart draws one line per column.
            let lines = c.find_all(Locator::Css("#chart polyline")).await.unwrap().len();
            assert_eq!(lines, native.columns.len(), "{page}");

            // Move a slider with the keyboard, as a user would.
            let input = c.find(Locator::Id(&format!("p-{slider}"))).await.unwrap();
            input.click().await.unwrap();
            for _ in 0..5 {
                input.send_keys(&Key::Right.to_string()).await.unwrap();
            }
            let (params_after, after, runs_after) = series(&c).await;
            assert!(runs_after > runs, "{page}: moving the slider ran the simulation again");
            assert!(
                params_after[slider] > params[slider],
                "{page}: {slider} {} -> {}",
                params[slider],
                params_after[slider]
            );
            assert_ne!(after, before, "{page}: the decisions changed");
            let native = meshwork_playground::simulate(page, &params_after).unwrap();
            assert_eq!(after, serde_json::to_value(&native).unwrap(), "{page}");
            let shown = c.find(Locator::Id(&format!("o-{slider}"))).await.unwrap().text().await.unwrap();
            assert_eq!(shown.parse::<f64>().unwrap(), params_after[slider], "{page}: the output shows the value");
        }
        c.close().await.unwrap();
    });
    let asked = server.requests.lock().unwrap().clone();
    assert!(asked.iter().any(|p| p.ends_with("meshwork_playground_bg.wasm")), "{asked:?}");
    let _ = &server;
}
