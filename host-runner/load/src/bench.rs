//! `meshwork bench --profile FILE`: one SMP performance profile, its scenarios run side by side
//! in one invocation (direct, through meshwork without filters, through meshwork with each
//! filter chain, through any other proxy), one SMP result document per scenario, a comparison
//! table, and one SVG overlaying the scenarios' latency by percentile.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

use crate::error::LoadError;
use crate::procfs;
use crate::run::{self, Progress, RunResult};
use crate::smp::{self, ClientConfig, MeshConfig, Resources, SmpResult, TestConfig};
use crate::spec::{self, LoadSpec, RequestSpec, Share, Stop, Target};
use crate::{BenchArgs, Output};

/// An SMP performance profile: PerformanceTestConfig fields plus the scenarios to compare.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    #[serde(default = "smp_version")]
    pub smp_version: String,
    #[serde(default)]
    pub id: Option<String>,
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Measured length of each scenario: 10s, 1m.
    pub duration: String,
    /// Unrecorded load before each scenario's measured run.
    #[serde(default)]
    pub warmup: Option<String>,
    pub clients: Vec<Client>,
    /// Default: direct, and meshwork without filters.
    #[serde(default)]
    pub scenarios: Vec<ScenarioSpec>,
}

fn smp_version() -> String {
    smp::SMP_VERSION.into()
}

/// SMP's PerformanceTestConfig.Client.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Client {
    #[serde(default)]
    pub internal: bool,
    #[serde(default = "meshwork_name")]
    pub load_generator: String,
    /// http or http2 (h2c).
    #[serde(default = "http")]
    pub protocol: String,
    pub connections: usize,
    /// Requests per second (open loop); 0: closed loop.
    pub rps: f64,
    #[serde(default)]
    pub threads: Option<usize>,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub cookies: BTreeMap<String, String>,
    #[serde(default)]
    pub body: String,
    #[serde(default)]
    pub content_type: String,
    #[serde(alias = "endpoint_url")]
    pub endpoint_urls: Vec<String>,
    #[serde(default)]
    pub timeout: Option<String>,
}

fn meshwork_name() -> String {
    "meshwork".into()
}
fn http() -> String {
    "http".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioSpec {
    pub name: String,
    /// direct | meshwork | proxy
    pub kind: String,
    /// kind proxy: the other proxy's URL (its path defaults to the endpoint's).
    #[serde(default)]
    pub url: Option<String>,
    /// kind proxy: its process ids, for CPU and memory (default: whoever listens on its port).
    #[serde(default)]
    pub pids: Vec<u32>,
    /// kind proxy: a name and version for the result document.
    #[serde(default)]
    pub proxy_name: Option<String>,
    /// kind meshwork: the filter chain, as in `meshwork run`'s configuration.
    #[serde(default)]
    pub filters: Vec<serde_json::Value>,
    /// kind meshwork: worker threads.
    #[serde(default)]
    pub workers: Option<usize>,
}

fn bad(path: &Path, reason: impl Into<String>) -> LoadError {
    LoadError::BadProfile { path: path.to_owned(), reason: reason.into() }
}

impl Profile {
    pub fn load(path: &Path) -> Result<Profile, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|e| bad(path, format!("cannot read: {e}")))?;
        let profile: Profile = meshwork_yaml::from_str(&text).map_err(|e| bad(path, e.to_string()))?;
        profile.validate(path)?;
        Ok(profile)
    }

    fn validate(&self, path: &Path) -> Result<(), LoadError> {
        spec::parse_duration(&self.duration).map_err(|e| bad(path, format!("duration: {e}")))?;
        if let Some(w) = &self.warmup {
            spec::parse_duration(w).map_err(|e| bad(path, format!("warmup: {e}")))?;
        }
        let [client] = self.clients.as_slice() else {
            return Err(bad(path, format!("clients: exactly one client is supported, found {}", self.clients.len())));
        };
        if client.load_generator != "meshwork" {
            return Err(bad(
                path,
                format!("clients[0].load_generator {:?}: only meshwork is built in", client.load_generator),
            ));
        }
        if !matches!(client.protocol.as_str(), "http" | "http2") {
            return Err(bad(path, format!("clients[0].protocol {:?}: use http or http2", client.protocol)));
        }
        if client.connections == 0 {
            return Err(bad(path, "clients[0].connections must be at least 1"));
        }
        if !(client.rps >= 0.0 && client.rps.is_finite()) {
            return Err(bad(path, "clients[0].rps must be >= 0 (0: closed loop)"));
        }
        let [url] = client.endpoint_urls.as_slice() else {
            return Err(bad(path, "clients[0].endpoint_urls: give exactly one URL (the upstream)"));
        };
        Target::parse(url).map_err(|e| bad(path, format!("clients[0].endpoint_urls: {e}")))?;
        let mut names = std::collections::HashSet::new();
        for (i, s) in self.scenarios.iter().enumerate() {
            if s.name.is_empty() || !names.insert(s.name.clone()) {
                return Err(bad(path, format!("scenarios[{i}]: names must be present and unique")));
            }
            match s.kind.as_str() {
                "direct" | "meshwork" => {}
                "proxy" => {
                    let u = s
                        .url
                        .as_deref()
                        .ok_or_else(|| bad(path, format!("scenarios[{i}] ({}): kind proxy needs url", s.name)))?;
                    Target::parse(u).map_err(|e| bad(path, format!("scenarios[{i}] ({}): {e}", s.name)))?;
                }
                other => {
                    return Err(bad(
                        path,
                        format!("scenarios[{i}] ({}): kind {other:?} is not direct, meshwork or proxy", s.name),
                    ));
                }
            }
        }
        Ok(())
    }

    fn scenarios(&self) -> Vec<ScenarioSpec> {
        if !self.scenarios.is_empty() {
            return self.scenarios.clone();
        }
        let plain = |name: &str, kind: &str| ScenarioSpec {
            name: name.into(),
            kind: kind.into(),
            url: None,
            pids: vec![],
            proxy_name: None,
            filters: vec![],
            workers: None,
        };
        vec![plain("direct", "direct"), plain("meshwork", "meshwork")]
    }

    fn test_config(&self) -> TestConfig {
        let c = &self.clients[0];
        TestConfig {
            smp_version: self.smp_version.clone(),
            id: self.id.clone().unwrap_or_else(|| self.name.clone()),
            name: self.name.clone(),
            labels: self.labels.clone(),
            clients: vec![ClientConfig {
                internal: c.internal,
                load_generator: c.load_generator.clone(),
                protocol: c.protocol.clone(),
                connections: c.connections,
                rps: c.rps,
                headers: c.headers.clone(),
                cookies: c.cookies.clone(),
                body: c.body.clone(),
                content_type: c.content_type.clone(),
                endpoint_urls: c.endpoint_urls.clone(),
            }],
            duration: self.duration.clone(),
        }
    }

    fn load_spec(&self, url: &str) -> Result<LoadSpec, LoadError> {
        let c = &self.clients[0];
        let mut headers: Vec<(String, String)> = c.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        if !c.cookies.is_empty() {
            let cookie: Vec<String> = c.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
            headers.push(("cookie".into(), cookie.join("; ")));
        }
        if !c.content_type.is_empty() {
            headers.push(("content-type".into(), c.content_type.clone()));
        }
        let raw: Vec<String> = headers.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        let spec = LoadSpec {
            target: Target::parse(url)?,
            request: RequestSpec {
                method: c
                    .method
                    .clone()
                    .unwrap_or_else(|| if c.body.is_empty() { "GET".into() } else { "POST".into() }),
                headers: RequestSpec::parse_headers(&raw)?,
                body: c.body.clone().into_bytes(),
            },
            http2: c.protocol == "http2",
            streams: 1,
            rps: (c.rps > 0.0).then_some(c.rps),
            connections: c.connections,
            threads: c.threads.unwrap_or(1).max(1),
            stop: Stop::Duration(spec::parse_duration(&self.duration)?),
            warmup: Duration::ZERO,
            timeout: spec::parse_duration(c.timeout.as_deref().unwrap_or("2s"))?,
            start_at_unix_ns: None,
            samples_file: None,
        };
        spec.validate()?;
        Ok(spec)
    }
}

/// A `meshwork run` started for one scenario; stopped when dropped.
struct Proxy {
    child: Child,
    addr: String,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn resolve_module(module: &str, profile_dir: &Path) -> PathBuf {
    let p = PathBuf::from(module);
    if p.is_absolute() || p.exists() { p } else { profile_dir.join(p) }
}

fn start_meshwork(upstream: &Target, scenario: &ScenarioSpec, profile_dir: &Path, dir: &Path) -> anyhow::Result<Proxy> {
    let mut filters = Vec::new();
    for f in &scenario.filters {
        let mut f = f.clone();
        if let Some(m) = f.get("module").and_then(|m| m.as_str()).map(str::to_owned) {
            let path = resolve_module(&m, profile_dir);
            anyhow::ensure!(
                path.exists(),
                "scenario {}: filter module {} does not exist",
                scenario.name,
                path.display()
            );
            f["module"] = serde_json::Value::String(path.display().to_string());
        }
        filters.push(f);
    }
    let config = serde_saphyr::to_string(&serde_json::json!({
        "listen": "127.0.0.1:0",
        "admin": "127.0.0.1:0",
        "workers": scenario.workers.unwrap_or(1),
        "clusters": [{"name": "upstream", "endpoints": [format!("{}:{}", upstream.host, upstream.port)]}],
        "route": {"cluster": "upstream", "name": "bench"},
        "filters": filters,
    }))?;
    let file = dir.join(format!("{}.meshwork.yaml", slug(&scenario.name)));
    std::fs::write(&file, config).with_context(|| format!("cannot write {}", file.display()))?;
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let mut child = Command::new(exe)
        .args(["run", "--config"])
        .arg(&file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start meshwork run")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let _ = tx.send(lines.next());
        for _ in lines {}
    });
    let line = rx.recv_timeout(Duration::from_secs(120)).ok().flatten().and_then(Result::ok);
    let addr =
        line.as_deref().and_then(|l| l.split("listening on http://").nth(1)).and_then(|r| r.split_whitespace().next());
    match addr {
        Some(a) => {
            let addr = a.to_owned();
            // Drain stderr so the proxy never blocks on a full pipe.
            if let Some(mut err) = child.stderr.take() {
                std::thread::spawn(move || {
                    let mut sink = Vec::new();
                    let _ = err.read_to_end(&mut sink);
                });
            }
            Ok(Proxy { child, addr })
        }
        None => {
            let _ = child.kill();
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            let _ = child.wait();
            anyhow::bail!("scenario {}: meshwork did not start:\n{}", scenario.name, err.trim())
        }
    }
}

pub fn slug(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

/// The endpoint's path on another host:port.
fn same_path(base: &str, endpoint: &Target) -> String {
    match Target::parse(base) {
        Ok(t) if t.path == "/" => format!("http://{}{}", t.authority(), endpoint.path),
        _ => base.to_owned(),
    }
}

struct Measured {
    result: RunResult,
    resources: Resources,
}

fn measure(spec: &LoadSpec, warmup: Duration, proxy_pids: &[u32], upstream_pids: &[u32]) -> anyhow::Result<Measured> {
    if !warmup.is_zero() {
        let mut w = spec.clone();
        w.stop = Stop::Duration(warmup);
        run::run(&w, Share::WHOLE, Arc::new(Progress::default()))?;
    }
    let p0 = procfs::cpu_us_all(proxy_pids);
    let u0 = procfs::cpu_us_all(upstream_pids);
    let t0 = std::time::Instant::now();
    let result = run::run(spec, Share::WHOLE, Arc::new(Progress::default()))?;
    let wall = t0.elapsed().as_secs_f64();
    let p1 = procfs::cpu_us_all(proxy_pids);
    let u1 = procfs::cpu_us_all(upstream_pids);
    let n = result.counters.responses.max(1) as f64;
    let per = |a: Option<u64>, b: Option<u64>| a.zip(b).map(|(a, b)| b.saturating_sub(a) as f64);
    let proxy_cpu = if proxy_pids.is_empty() { None } else { per(p0, p1) };
    let upstream_cpu = if upstream_pids.is_empty() { None } else { per(u0, u1) };
    let rss: Vec<(u64, u64)> = proxy_pids.iter().filter_map(|p| procfs::rss_kib(*p)).collect();
    let resources = Resources {
        proxy_pids: proxy_pids.to_vec(),
        proxy_cpu_us_per_request: proxy_cpu.map(|c| c / n),
        proxy_cpu_cores: proxy_cpu.map(|c| c / 1e6 / wall),
        proxy_rss_mb: (!rss.is_empty()).then(|| rss.iter().map(|r| r.0).sum::<u64>() as f64 / 1024.0),
        proxy_peak_rss_mb: (!rss.is_empty()).then(|| rss.iter().map(|r| r.1).sum::<u64>() as f64 / 1024.0),
        upstream_pids: upstream_pids.to_vec(),
        upstream_cpu_us_per_request: upstream_cpu.map(|c| c / n),
        upstream_cpu_cores: upstream_cpu.map(|c| c / 1e6 / wall),
    };
    Ok(Measured { result, resources })
}

fn fmt_opt(v: Option<f64>, prec: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.prec$}"))
}

pub fn table(docs: &[SmpResult]) -> String {
    let mut out = format!(
        "{:<24} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>12} {:>8} {:>9}\n",
        "scenario",
        "req/s",
        "achieved",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9",
        "max ms",
        "errors",
        "proxy us/req",
        "RSS MB",
        "MeshMark"
    );
    for d in docs {
        let l = &d.latencies_ms;
        out.push_str(&format!(
            "{:<24} {:>9} {:>9.1} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>6.2}% {:>12} {:>8} {:>9}\n",
            d.labels.get("scenario").map_or("?", String::as_str),
            if d.requested_qps > 0.0 { format!("{:.0}", d.requested_qps) } else { "max".into() },
            d.actual_qps,
            l.p50,
            l.p90,
            l.p99,
            l.p99_9,
            l.max,
            d.error_rate * 100.0,
            fmt_opt(d.resources.proxy_cpu_us_per_request, 1),
            fmt_opt(d.resources.proxy_rss_mb, 1),
            d.meshmark.as_ref().map_or("-".into(), |m| format!("{:.1}", m.score)),
        ));
    }
    out
}

pub fn run(args: &BenchArgs) -> anyhow::Result<ExitCode> {
    let profile = Profile::load(&args.profile)?;
    let profile_dir = args.profile.parent().map(Path::to_path_buf).unwrap_or_default();
    let endpoint_url = profile.clients[0].endpoint_urls[0].clone();
    let endpoint = Target::parse(&endpoint_url)?;
    let addr = endpoint.resolve()?;
    std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| LoadError::Unreachable { addr: addr.to_string(), reason: e.to_string() })?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    let warmup = profile.warmup.as_deref().map(spec::parse_duration).transpose()?.unwrap_or(Duration::ZERO);
    let test = profile.test_config();
    let env = procfs::environment();
    let upstream_pids = if addr.ip().is_loopback() { procfs::pids_listening_on(endpoint.port) } else { vec![] };
    let mut docs = Vec::new();
    let mut results = Vec::new();
    for scenario in profile.scenarios() {
        if !args.quiet {
            eprintln!("bench: scenario {} ({}) ...", scenario.name, scenario.kind);
        }
        let mut _proxy = None;
        let (url, proxy_pids, mesh) = match scenario.kind.as_str() {
            "direct" => (
                endpoint_url.clone(),
                vec![],
                MeshConfig {
                    id: "none".into(),
                    mesh_type: "none".into(),
                    proxy_build: String::new(),
                    proxy_concurrency: 0,
                    config: serde_json::Value::Null,
                },
            ),
            "meshwork" => {
                let p = start_meshwork(&endpoint, &scenario, &profile_dir, &args.out)?;
                let url = format!("http://{}{}", p.addr, endpoint.path);
                let pid = p.child.id();
                _proxy = Some(p);
                let filters = serde_json::to_value(&scenario.filters)?;
                (
                    url,
                    vec![pid],
                    MeshConfig {
                        id: format!("meshwork-{}", slug(&scenario.name)),
                        mesh_type: "meshwork".into(),
                        proxy_build: env!("CARGO_PKG_VERSION").into(),
                        proxy_concurrency: scenario.workers.unwrap_or(1),
                        config: serde_json::json!({"filters": filters}),
                    },
                )
            }
            _ => {
                let url = same_path(scenario.url.as_deref().unwrap_or_default(), &endpoint);
                let t = Target::parse(&url)?;
                let pids = if !scenario.pids.is_empty() {
                    scenario.pids.clone()
                } else if t.resolve().is_ok_and(|a| a.ip().is_loopback()) {
                    procfs::pids_listening_on(t.port)
                } else {
                    vec![]
                };
                let name = scenario.proxy_name.clone().unwrap_or_else(|| "proxy".into());
                (
                    url.clone(),
                    pids,
                    MeshConfig {
                        id: slug(&scenario.name),
                        mesh_type: name,
                        proxy_build: String::new(),
                        proxy_concurrency: 0,
                        config: serde_json::json!({"url": url}),
                    },
                )
            }
        };
        let spec = profile.load_spec(&url)?;
        let m = measure(&spec, warmup, &proxy_pids, &upstream_pids)
            .with_context(|| format!("scenario {}", scenario.name))?;
        drop(_proxy);
        let scenario_slug = slug(&scenario.name);
        let doc = smp::document(
            &test,
            &env,
            &smp::Scenario { name: &scenario.name, result: &m.result, mesh, resources: m.resources },
            &format!("{scenario_slug}.smp.json"),
        );
        docs.push(doc);
        results.push((scenario.name.clone(), m.result));
    }
    // MeshMark against the direct scenario (else the first), measured in this same run.
    let base_index = profile.scenarios().iter().position(|s| s.kind == "direct").unwrap_or(0);
    let base = docs[base_index].clone();
    for d in &mut docs {
        d.meshmark = Some(smp::meshmark(d, &base, env.cores));
    }
    for d in &docs {
        let name = slug(d.labels.get("scenario").map_or("scenario", String::as_str));
        let yaml = args.out.join(format!("{name}.smp.yaml"));
        let json = args.out.join(format!("{name}.smp.json"));
        std::fs::write(&yaml, serde_saphyr::to_string(d)?)
            .with_context(|| format!("cannot write {}", yaml.display()))?;
        std::fs::write(&json, serde_json::to_string_pretty(d)?)
            .with_context(|| format!("cannot write {}", json.display()))?;
    }
    let svg_path = args.out.join("comparison.svg");
    let curves: Vec<(String, &crate::histogram::Latency)> =
        results.iter().map(|(n, r)| (n.clone(), &r.latency)).collect();
    let title = format!("{}: latency by percentile", profile.name);
    std::fs::write(&svg_path, crate::svg::latency_by_percentile(&title, &curves))
        .with_context(|| format!("cannot write {}", svg_path.display()))?;
    let table = table(&docs);
    std::fs::write(args.out.join("comparison.txt"), &table)?;
    match args.output {
        Output::Text => {
            print!("{table}");
            println!("SMP results, comparison.svg and comparison.txt in {}", args.out.display());
        }
        Output::Json => println!("{}", serde_json::to_string_pretty(&docs)?),
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("meshwork-bench-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(format!("p{}.yaml", text.len()));
        std::fs::write(&p, text).unwrap();
        p
    }

    const GOOD: &str =
        "name: t\nduration: 1s\nclients:\n  - {connections: 2, rps: 100, endpoint_urls: ['http://127.0.0.1:9/']}\n";

    #[test]
    fn profiles_are_checked() {
        let p = Profile::load(&write(GOOD)).unwrap();
        assert_eq!(p.scenarios().len(), 2);
        let cases = [
            ("name: t\nduration: 1s\nclients: []\n", "exactly one client"),
            ("name: t\nduration: soon\nclients: []\n", "duration"),
            ("name: t\nduration: 1s\nbogus: 1\nclients: []\n", "unknown field"),
            (
                "name: t\nduration: 1s\nclients:\n  - {connections: 2, rps: 1, endpoint_urls: ['ftp://x/']}\n",
                "endpoint_urls",
            ),
            (
                "name: t\nduration: 1s\nclients:\n  - {connections: 2, rps: 1, endpoint_urls: ['http://x/']}\nscenarios:\n  - {name: a, kind: teleport}\n",
                "kind",
            ),
        ];
        for (text, want) in cases {
            let e = Profile::load(&write(text)).unwrap_err().to_string();
            assert!(e.contains(want), "{e} lacks {want}");
        }
    }

    #[test]
    fn other_proxies_get_the_endpoint_path() {
        let e = Target::parse("http://127.0.0.1:1/api/x?y=1").unwrap();
        assert_eq!(same_path("http://127.0.0.1:2", &e), "http://127.0.0.1:2/api/x?y=1");
        assert_eq!(same_path("http://127.0.0.1:2/other", &e), "http://127.0.0.1:2/other");
    }
}
