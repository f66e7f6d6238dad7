//! meshwork load and meshwork bench, end to end (issue 4): real processes on 127.0.0.1.
//!
//! These tests measure time, so they run one at a time (a shared lock): on two cores, two
//! load tests at once would measure each other.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};

use meshwork_e2e::{Upstream, meshwork_bin, proxy, run, scratch, upstream, wasm};
use meshwork_load::histogram;
use serde_json::Value;

fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `meshwork load …` and parses its `--output json`.
fn load_json(args: &[&str]) -> Value {
    let mut all = vec!["load", "--quiet", "--output", "json"];
    all.extend_from_slice(args);
    let (code, out, err) = run(&all);
    assert_eq!(code, 0, "meshwork {all:?} failed:\n{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}):\n{out}"))
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn decode(v: &Value) -> histogram::Latency {
    histogram::decode(v["histogram"]["data"].as_str().expect("histogram data")).expect("histogram decodes")
}

/// The sample app holds every request arriving in the first S of each period P until the stall
/// ends. Under an open-loop schedule at a constant rate, a request due at phase φ < S waits
/// S − φ, and all others are answered at once; so over whole periods the latency exceeds
/// x (0 < x < S) for a fraction (S − x) / P of requests, and the q-quantile is S − P·(1 − q).
/// With S = 1 s and P = 4 s: p99 = 960 ms and p99.9 = 996 ms, a truth that the generator's own
/// sub-millisecond jitter cannot move by 1%. A closed loop sends one request per connection
/// into each stall and many between them, so it reports far lower tails.
#[test]
fn open_loop_matches_the_analytic_truth_and_closed_loop_underreports() {
    let _serial = serial();
    let app = upstream("stalls");
    let (stall_ms, period_ms) = (1000.0, 4000.0);
    let url = app.url("/?stall=1s&period=4s&size=16");
    let truth = |q: f64| stall_ms - period_ms * (1.0 - q);
    // 4 s = one whole period, recorded after a 1 s warm-up (which also readies the app's threads).
    let open = load_json(&[&url, "--rps", "500", "-c", "50", "-d", "4s", "--warmup", "1s"]);
    assert_eq!(open["requests"], 2000, "{open}");
    let lat = &open["latency_ms"];
    for (key, q) in [("p99", 0.99), ("p99.9", 0.999)] {
        let (measured, want) = (f(&lat[key]), truth(q));
        let error = (measured - want) / want;
        eprintln!("open loop {key}: measured {measured:.3} ms, truth {want:.3} ms, error {:+.3}%", error * 100.0);
        assert!(error.abs() <= 0.01, "open-loop {key} {measured} ms is more than 1% off the truth {want} ms");
    }
    let closed = load_json(&[&url, "--max", "-c", "50", "-d", "4s"]);
    let clat = &closed["latency_ms"];
    for (key, q) in [("p99", 0.99), ("p99.9", 0.999)] {
        let (measured, want) = (f(&clat[key]), truth(q));
        eprintln!(
            "closed loop {key}: {measured:.3} ms vs truth {want:.3} ms ({:.1}% under), {} requests",
            100.0 * (1.0 - measured / want),
            closed["requests"]
        );
        assert!(measured < want / 10.0, "closed loop should under-report {key}: {measured} ms vs {want} ms");
    }
    // The stalls happened in the closed run too: its maximum saw one.
    assert!(f(&clat["max"]) > stall_ms * 0.5, "{clat}");
}

fn read_samples(path: &Path) -> Vec<u64> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| l.parse().unwrap())
        .collect()
}

#[test]
fn workers_merge_is_exactly_the_histogram_of_all_samples() {
    let _serial = serial();
    let app = upstream("merge");
    let dir = scratch("load-merge");
    let samples = dir.join("samples");
    let url = app.url("/?size=64");
    let merged = load_json(&[
        &url,
        "--workers",
        "3",
        "-c",
        "6",
        "--rps",
        "3000",
        "-d",
        "2s",
        "--dump-samples",
        samples.to_str().unwrap(),
    ]);
    assert_eq!(merged["workers"], 3);
    let mut all = Vec::new();
    for w in 0..3 {
        let part = read_samples(&dir.join(format!("samples.w{w}")));
        assert!(!part.is_empty(), "worker {w} recorded nothing");
        all.extend(part);
    }
    // Every scheduled request of the one global schedule, across the three processes.
    assert_eq!(all.len(), 6000);
    assert_eq!(merged["requests"], 6000);
    let mut one = histogram::new_latency();
    for s in &all {
        one.record(*s).unwrap();
    }
    let got = decode(&merged);
    assert_eq!(got.len(), one.len());
    assert_eq!(histogram::buckets(&got), histogram::buckets(&one), "merged histogram differs from one of all samples");
    assert_eq!((got.min(), got.max()), (one.min(), one.max()));
    // The summary's percentiles come from that same histogram.
    assert_eq!(f(&merged["latency_ms"]["p99"]), histogram::ms(histogram::at(&one, 99.0)));
    eprintln!(
        "merge: 3 workers, {} samples, {} distinct buckets, identical",
        all.len(),
        histogram::buckets(&one).len()
    );

    // Closed loop with a request budget: the workers split it exactly.
    let budget = load_json(&[&url, "--workers", "2", "-c", "4", "--max", "-n", "3001"]);
    assert_eq!(budget["requests"], 3001, "{budget}");
}

#[test]
fn every_output_format_round_trips() {
    let _serial = serial();
    let app = upstream("formats");
    let dir = scratch("load-formats");
    let (fortio, hgrm, svg) = (dir.join("fortio.json"), dir.join("run.hgrm"), dir.join("run.svg"));
    let url = app.url("/?size=100&delay=1ms");
    let report = load_json(&[
        &url,
        "--rps",
        "400",
        "-c",
        "4",
        "-d",
        "1s",
        "--fortio-json",
        fortio.to_str().unwrap(),
        "--hgrm",
        hgrm.to_str().unwrap(),
        "--svg",
        svg.to_str().unwrap(),
    ]);
    let n = report["requests"].as_u64().unwrap();
    assert_eq!(n, 400);
    assert_eq!(report["status"]["200"], 400);
    assert_eq!(report["mode"], "open");
    let h = decode(&report);
    assert_eq!(h.len(), n);
    assert_eq!(f(&report["latency_ms"]["p99"]), histogram::ms(histogram::at(&h, 99.0)));
    assert!(f(&report["latency_ms"]["p50"]) >= 1.0, "the app's 1 ms delay is in every latency");

    // fortio's result JSON: the fields and types fortio's HTTPRunnerResults marshals to.
    let fj: Value = serde_json::from_str(&std::fs::read_to_string(&fortio).unwrap()).unwrap();
    assert_eq!(fj["RunType"], "HTTP");
    for key in ["Labels", "StartTime", "RequestedQPS", "RequestedDuration", "Version", "URL", "ID"] {
        assert!(fj[key].is_string(), "{key} should be a string: {}", fj[key]);
    }
    for key in ["ActualDuration", "NumThreads", "Exactly", "RunID", "SocketCount", "AbortOn"] {
        assert!(fj[key].is_i64() || fj[key].is_u64(), "{key} should be an integer: {}", fj[key]);
    }
    for key in ["Jitter", "Uniform", "NoCatchUp"] {
        assert!(fj[key].is_boolean(), "{key}");
    }
    assert!(fj["StartTime"].as_str().unwrap().ends_with('Z'));
    assert_eq!(fj["RequestedQPS"], "400");
    assert!((f(&fj["ActualQPS"]) - f(&report["achieved_rps"])).abs() < 1e-6);
    assert_eq!(fj["RetCodes"]["200"], 400);
    let dh = &fj["DurationHistogram"];
    assert_eq!(dh["Count"], 400);
    let (min, avg, max) = (f(&dh["Min"]), f(&dh["Avg"]), f(&dh["Max"]));
    assert!(min > 0.0 && min <= avg && avg <= max && max < 1.0, "values are seconds: {min} {avg} {max}");
    let data = dh["Data"].as_array().unwrap();
    let mut last_percent = 0.0;
    let mut counted = 0;
    for b in data {
        assert!(f(&b["Start"]) <= f(&b["End"]), "{b}");
        assert!(f(&b["Percent"]) >= last_percent);
        last_percent = f(&b["Percent"]);
        counted += b["Count"].as_u64().unwrap();
    }
    assert_eq!(counted, 400);
    assert!((last_percent - 100.0).abs() < 1e-9);
    let p99 = dh["Percentiles"].as_array().unwrap().iter().find(|p| p["Percentile"] == 99.0).unwrap();
    assert!((f(&p99["Value"]) * 1000.0 - f(&report["latency_ms"]["p99"])).abs() < 1e-6);
    assert!(fj["ErrorsDurationHistogram"]["Count"] == 0);

    // .hgrm: HdrHistogram's percentile distribution, parsed back.
    let text = std::fs::read_to_string(&hgrm).unwrap();
    let rows: Vec<Vec<f64>> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty() && !l.contains("Percentile"))
        .map(|l| l.split_whitespace().map(|x| x.parse::<f64>().unwrap()).collect())
        .collect();
    assert!(rows.len() > 10);
    let last = rows.last().unwrap();
    assert_eq!((last[1], last[2]), (1.0, 400.0));
    assert!((last[0] - f(&report["latency_ms"]["max"])).abs() < 0.001);
    // The p99 the report gives lies between the distribution's rows around 0.99.
    let at = rows.iter().position(|r| r[1] >= 0.99).unwrap();
    let p99 = f(&report["latency_ms"]["p99"]);
    assert!(rows[at - 1][0] <= p99 + 0.001 && p99 <= rows[at][0] + 0.001, "{:?} {p99} {:?}", rows[at - 1], rows[at]);
    assert!(text.contains("#[Max     =") && text.contains("Total count    =          400"));
    assert!(text.contains("SubBuckets     =         2048"), "{text}");

    let picture = std::fs::read_to_string(&svg).unwrap();
    assert!(picture.starts_with("<svg") && picture.trim_end().ends_with("</svg>"));
    assert_eq!(picture.matches("<polyline").count(), 1);

    // The human summary, with progress on stderr.
    let (code, out, err) = run(&["load", &url, "--rps", "200", "-c", "2", "-d", "1500ms"]);
    assert_eq!(code, 0, "{err}");
    for want in
        ["Running 1.5s test", "open loop at 200 req/s", " 99.900%", "100.000%", "Requests/sec:", "(requested 200)"]
    {
        assert!(out.contains(want), "summary lacks {want:?}:\n{out}");
    }
    assert!(err.contains("load [") && err.contains("req/s"), "no progress on stderr: {err}");
}

#[test]
fn http2_posts_and_errors_by_status() {
    let _serial = serial();
    let app = upstream("h2");
    let r = load_json(&[
        &app.url("/h2?size=10"),
        "--http2",
        "--streams",
        "4",
        "-c",
        "2",
        "--max",
        "-n",
        "500",
        "-X",
        "POST",
        "--body",
        "hello",
        "-H",
        "x-test: 1",
    ]);
    assert_eq!(r["requests"], 500, "{r}");
    assert_eq!(r["status"]["200"], 500);
    assert_eq!(app.stats()["by_path"]["/h2"], 500);
    // Statuses outside 2xx/3xx are counted as errors by status.
    let bad = load_json(&[&app.url("/bad?status=503"), "--rps", "200", "-c", "2", "-n", "100"]);
    assert_eq!(bad["status"]["503"], 100);
    assert_eq!(bad["non_2xx_3xx"], 100);
    assert_eq!(f(&bad["error_rate"]), 1.0);
}

/// At most 4 requests served at once, each taking 20 ms (plus the app's timer rounding, about
/// 1 ms): a capacity of 4 / service time, about 190 requests per second.
fn capacity_upstream() -> (Upstream, String, f64) {
    let app = upstream("capacity");
    let url = app.url("/?delay=20ms&limit=4&size=8");
    (app, url, 4.0)
}

#[test]
fn find_max_converges_on_a_known_capacity() {
    let _serial = serial();
    let (_app, url, servers) = capacity_upstream();
    let dir = scratch("load-findmax");
    let svg = dir.join("findmax.svg");
    let (code, out, err) = run(&[
        "load",
        &url,
        "--find-max",
        "--slo",
        "p99<=60ms",
        "--max-error-rate",
        "0.1%",
        "--start-rps",
        "50",
        "--step-duration",
        "1s",
        "--precision",
        "0.05",
        "-c",
        "16",
        "--output",
        "json",
        "--svg",
        svg.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let s: Value = serde_json::from_str(&out).unwrap();
    let max = f(&s["max_rps"]);
    let steps = s["steps"].as_array().unwrap();
    // The service time, from the first step (50/s: no request ever waits for a server).
    let service_ms = f(&steps[0]["p50_ms"]);
    let capacity = servers * 1000.0 / service_ms;
    eprintln!("find-max: {max} req/s against a capacity of {capacity:.1} (4 / {service_ms} ms), {} steps", steps.len());
    assert!((19.5..25.0).contains(&service_ms), "service time {service_ms} ms");
    // A fixed-length step tolerates a little overload before its p99 crosses the SLO, so the
    // answer may sit a few percent above the capacity; never far from it on either side.
    assert!((0.9 * capacity..=1.1 * capacity).contains(&max), "found {max} req/s, capacity is {capacity:.1}");
    assert!(f(&s["first_fail_rps"]) > capacity, "a rate below capacity failed: {s}");
    assert!(steps.iter().any(|st| st["phase"] == "exponential") && steps.iter().any(|st| st["phase"] == "binary"));
    assert!(steps.iter().any(|st| st["pass"] == false), "the search must have seen a failing rate");
    assert!(err.contains("find-max:"), "steps are reported as they finish");
    let picture = std::fs::read_to_string(&svg).unwrap();
    assert_eq!(picture.matches("<polyline").count(), 3);
    assert!(picture.contains("SLO p99"));
    // The text form prints the step table and the answer.
    let (code, out, _) = run(&[
        "load",
        &url,
        "--find-max",
        "--slo",
        "p99<=60ms",
        "--start-rps",
        "100",
        "--max-rps",
        "100",
        "--step-duration",
        "500ms",
        "-c",
        "8",
        "-q",
    ]);
    assert_eq!(code, 0);
    assert!(out.contains("phase") && out.contains("highest rate meeting p99<=60ms"), "{out}");
}

/// Equal, numbers to 12 significant digits (YAML and JSON printers round the last digit apart).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            (x - y).abs() <= 1e-12 * x.abs().max(y.abs())
        }
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

fn smp_required(doc: &Value, name: &str) {
    for key in [
        "smp_version",
        "id",
        "labels",
        "start_time",
        "end_time",
        "latencies_ms",
        "actual_qps",
        "details_uri",
        "test_id",
        "mesh_config_id",
        "env_id",
    ] {
        assert!(!doc[key].is_null(), "{name}: SMP field {key} missing");
    }
    for key in ["min", "average", "p50", "p90", "p99", "max", "p99_9", "p99_99"] {
        assert!(doc["latencies_ms"][key].is_number(), "{name}: latencies_ms.{key}");
    }
    let l = &doc["latencies_ms"];
    assert!(f(&l["min"]) <= f(&l["p50"]) && f(&l["p50"]) <= f(&l["p99"]) && f(&l["p99"]) <= f(&l["max"]));
    for key in ["cores", "kernel", "memory_mb"] {
        assert!(!doc["env"][key].is_null(), "{name}: env.{key}");
    }
    for key in ["mesh_type", "proxy_build", "config"] {
        assert!(doc["mesh_config"].get(key).is_some(), "{name}: mesh_config.{key}");
    }
    let client = &doc["config"]["clients"][0];
    for key in ["load_generator", "protocol", "connections", "rps", "endpoint_urls"] {
        assert!(!client[key].is_null(), "{name}: config.clients[0].{key}");
    }
    let h = histogram::decode(doc["histogram"]["data"].as_str().unwrap()).unwrap();
    assert_eq!(h.len(), doc["requests"].as_u64().unwrap(), "{name}: histogram holds every request");
    let score = f(&doc["meshmark"]["score"]);
    assert!((0.0..=100.0).contains(&score), "{name}: MeshMark {score}");
    assert!(doc["meshmark"]["formula"].as_str().unwrap().contains("MeshMark"));
}

#[test]
fn bench_runs_scenarios_side_by_side_and_writes_smp_results() {
    let _serial = serial();
    let app = upstream("bench-app");
    // "Another proxy": a meshwork the test starts itself, found by its listening port.
    let other = proxy(&format!("clusters: [{}]\nroute: {{cluster: app}}\n", meshwork_e2e::cluster("app", &app)));
    let dir = scratch("bench");
    let profile = dir.join("profile.yaml");
    std::fs::write(
        &profile,
        format!(
            r#"name: e2e
id: e2e-1
labels: {{suite: load}}
duration: 1s
warmup: 200ms
clients:
  - load_generator: meshwork
    protocol: http
    connections: 4
    rps: 500
    headers: {{x-user: bench}}
    endpoint_urls: ["{endpoint}"]
scenarios:
  - {{name: direct, kind: direct}}
  - {{name: meshwork, kind: meshwork}}
  - name: meshwork+measure
    kind: meshwork
    filters:
      - {{name: measure, module: "{measure}", configuration: {{routes: [{{name: api, prefix: /api/}}]}}}}
  - {{name: other, kind: proxy, url: "{other}", proxy_name: meshwork-external}}
"#,
            endpoint = app.url("/api/items?size=64"),
            measure = wasm("measure").display(),
            other = other.url(""),
        ),
    )
    .unwrap();
    let out_dir = dir.join("results");
    let (code, out, err) =
        run(&["bench", "--profile", profile.to_str().unwrap(), "--out", out_dir.to_str().unwrap(), "-q"]);
    assert_eq!(code, 0, "{err}\n{out}");
    for want in ["scenario", "direct", "meshwork+measure", "other", "MeshMark"] {
        assert!(out.contains(want), "table lacks {want}:\n{out}");
    }
    let mut docs = BTreeMap::new();
    for name in ["direct", "meshwork", "meshwork_measure", "other"] {
        let json: Value =
            serde_json::from_str(&std::fs::read_to_string(out_dir.join(format!("{name}.smp.json"))).unwrap()).unwrap();
        let yaml: Value =
            serde_saphyr::from_str(&std::fs::read_to_string(out_dir.join(format!("{name}.smp.yaml"))).unwrap())
                .unwrap();
        assert!(same(&json, &yaml), "{name}: the YAML and JSON documents differ:\n{json}\n{yaml}");
        smp_required(&json, name);
        docs.insert(name, json);
    }
    assert_eq!(f(&docs["direct"]["meshmark"]["score"]), 100.0);
    assert!(docs["direct"]["resources"]["proxy_cpu_us_per_request"].is_null());
    for hop in ["meshwork", "meshwork_measure", "other"] {
        let r = &docs[hop]["resources"];
        assert!(f(&r["proxy_cpu_us_per_request"]) > 0.0, "{hop}: {r}");
        assert!(f(&r["proxy_rss_mb"]) > 1.0, "{hop}: {r}");
    }
    assert_eq!(docs["other"]["resources"]["proxy_pids"][0], other.process.pid());
    assert_eq!(docs["meshwork_measure"]["mesh_config"]["config"]["filters"][0]["name"], "measure");
    assert_eq!(docs["direct"]["env"]["cores"], docs["meshwork"]["env"]["cores"]);
    // The upstream (this test's sample app) was found by its port, for the efficiency class.
    assert_eq!(docs["direct"]["resources"]["upstream_pids"][0], app.process.pid());
    assert_eq!(docs["meshwork"]["meshmark"]["efficiency_basis"], "requests_per_cpu");
    let svg = std::fs::read_to_string(out_dir.join("comparison.svg")).unwrap();
    assert_eq!(svg.matches("<polyline").count(), 4);
}

#[test]
fn bad_input_gets_a_clear_error() {
    let _serial = serial();
    let cases: [(&[&str], &str); 7] = [
        (&["load", "127.0.0.1:8080/path"], "bad URL"),
        (&["load", "https://127.0.0.1:1/"], "https is not supported"),
        (&["load", "http://127.0.0.1:1/", "-d", "1s"], "cannot reach"),
        (&["load", "http://127.0.0.1:1/", "--duration", "soon"], "is not a duration"),
        (&["load", "http://127.0.0.1:1/", "--find-max", "--slo", "p99<10ms"], "SLO"),
        (&["bench", "--profile", "/nonexistent/profile.yaml"], "cannot read"),
        (&["load", "http://127.0.0.1:1/", "-c", "2", "--workers", "3"], "every worker needs a connection"),
    ];
    for (args, want) in cases {
        let (code, _, err) = run(args);
        assert_ne!(code, 0, "{args:?} should fail");
        assert!(err.contains(want), "{args:?}: stderr lacks {want:?}:\n{err}");
    }
    let dir = scratch("bad-profile");
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let profiles = [
        (write("unknown.yaml", "name: x\nduration: 1s\nrate: 5\nclients: []\n"), "unknown field `rate`"),
        (write("broken.yaml", "name: [x\n"), "bad profile"),
        (
            write(
                "unreachable.yaml",
                "name: x\nduration: 1s\nclients:\n  - {connections: 1, rps: 10, endpoint_urls: ['http://127.0.0.1:1/']}\n",
            ),
            "cannot reach 127.0.0.1:1",
        ),
        (
            write(
                "badurl.yaml",
                "name: x\nduration: 1s\nclients:\n  - {connections: 1, rps: 10, endpoint_urls: ['nope']}\n",
            ),
            "endpoint_urls",
        ),
    ];
    for (path, want) in profiles {
        let (code, _, err) = run(&["bench", "--profile", &path, "--out", dir.join("out").to_str().unwrap()]);
        assert_ne!(code, 0, "{path} should fail");
        assert!(err.contains(want), "{path}: stderr lacks {want:?}:\n{err}");
    }
}

/// There is no Kubernetes API server here. What can be tested: the manifest is a valid Indexed
/// Job whose pods run exactly the worker command line; running that command line once per
/// completion index (as the pods would, with JOB_COMPLETION_INDEX set) and feeding their
/// output, in `kubectl logs --prefix` form, to `--collect` gives the merged run.
#[test]
fn kubernetes_job_manifest_and_log_collection() {
    let _serial = serial();
    let app = upstream("kube");
    let dir = scratch("kube");
    let manifest = dir.join("job.yaml");
    let (code, _, err) = run(&[
        "load",
        &app.url("/?size=32"),
        "--rps",
        "600",
        "-c",
        "6",
        "-d",
        "1s",
        "--kubernetes",
        "--replicas",
        "3",
        "--job-name",
        "bench-7",
        "--namespace",
        "perf",
        "--image",
        "registry.local/meshwork:test",
        "--start-delay",
        "2s",
        "--manifest-out",
        manifest.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("kubectl apply -f") && err.contains("--collect"), "{err}");
    let job: Value = serde_saphyr::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    assert_eq!(job["apiVersion"], "batch/v1");
    assert_eq!(job["kind"], "Job");
    assert_eq!(job["metadata"]["name"], "bench-7");
    assert_eq!(job["metadata"]["namespace"], "perf");
    let spec = &job["spec"];
    assert_eq!(spec["completionMode"], "Indexed");
    assert_eq!((spec["completions"].as_u64(), spec["parallelism"].as_u64()), (Some(3), Some(3)));
    assert_eq!(spec["backoffLimit"], 0);
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Never");
    let container = &pod["containers"][0];
    assert_eq!(container["image"], "registry.local/meshwork:test");
    let args: Vec<String> =
        container["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_owned()).collect();
    assert_eq!(args[0], "load");

    // The "pods": the container's command line, once per index, all at once.
    let pods: Vec<_> = (0..3)
        .map(|i| {
            Command::new(meshwork_bin())
                .args(&args)
                .env("JOB_COMPLETION_INDEX", i.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut logs = String::new();
    for (i, pod) in pods.into_iter().enumerate() {
        let out = pod.wait_with_output().unwrap();
        assert!(out.status.success(), "pod {i}: {}", String::from_utf8_lossy(&out.stderr));
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            logs.push_str(&format!("[pod/bench-7-{i}-x7k2p/load] {line}\n"));
        }
    }
    let log_file = dir.join("bench-7.log");
    std::fs::write(&log_file, &logs).unwrap();
    let merged = load_json(&["--collect", log_file.to_str().unwrap()]);
    assert_eq!(merged["workers"], 3);
    assert_eq!(merged["requests"], 600, "{merged}");
    assert_eq!(merged["status"]["200"], 600);
    assert_eq!(decode(&merged).len(), 600);

    // A missing pod is an error, not a silently smaller run.
    let partial: String = logs.lines().filter(|l| !l.contains("bench-7-1-")).map(|l| format!("{l}\n")).collect();
    std::fs::write(&log_file, partial).unwrap();
    let (code, _, err) = run(&["load", "--collect", log_file.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("expected results from 3 workers, found 2"), "{err}");
}

/// Ctrl-C ends a long run early and still reports what was measured, over the time it ran.
#[test]
fn interrupt_reports_the_run_so_far() {
    let _serial = serial();
    let app = upstream("interrupt");
    let child = Command::new(meshwork_bin())
        .args(["load", &app.url("/"), "--rps", "200", "-c", "2", "-d", "60s", "-q", "--output", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let start = std::time::Instant::now();
    let status = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    assert!(start.elapsed() < std::time::Duration::from_secs(5), "took {:?} to stop", start.elapsed());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["interrupted"], true);
    let n = r["requests"].as_u64().unwrap();
    assert!((150..=450).contains(&n), "{n} requests in about 1.5 s at 200/s");
    // The rate is over the time it ran, not over the 60 s planned.
    assert!(f(&r["achieved_rps"]) > 150.0, "{r}");
    assert_eq!(r["errors_total"], 0);
}
