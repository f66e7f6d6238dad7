//! `meshwork federation bench`: one owner (in this process) federating `--services` services
//! of `--endpoints` endpoints each to `--consumers` consumers (`meshwork federation subscribe`
//! processes, over mTLS on loopback). It reports
//!
//! - time to full sync: from starting the consumers until each says it holds the catalog;
//! - memory per consumer: its resident set once in sync;
//! - propagation latency of `--changes` endpoint changes, each to a different service, made at
//!   `--rate` per second: from the owner's change to each consumer printing it.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use super::model::{EndpointSpec, ServiceSpec};
use super::owner::{Exports, Policy};

#[derive(Args, Clone)]
pub struct BenchArgs {
    #[arg(long, default_value_t = 10_000)]
    services: usize,
    #[arg(long, default_value_t = 5)]
    endpoints: usize,
    #[arg(long, default_value_t = 10)]
    consumers: usize,
    #[arg(long, default_value_t = 1000)]
    changes: usize,
    /// Endpoint changes per second.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Where the certificates and consumer files go (a temporary directory by default).
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
}

#[derive(Serialize)]
struct Report {
    services: usize,
    endpoints_per_service: usize,
    consumers: usize,
    full_sync_s: Percentiles,
    consumer_rss_mib: Percentiles,
    owner_rss_mib: f64,
    changes: usize,
    updates_delivered: usize,
    propagation_ms: Percentiles,
}

#[derive(Serialize, Default)]
struct Percentiles {
    p50: f64,
    p99: f64,
    max: f64,
}

fn percentiles(mut values: Vec<f64>) -> Percentiles {
    if values.is_empty() {
        return Percentiles::default();
    }
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values[((values.len() as f64 * q).ceil() as usize).clamp(1, values.len()) - 1];
    Percentiles { p50: at(0.5), p99: at(0.99), max: values[values.len() - 1] }
}

fn service(i: usize, endpoints: usize, first_port: u32) -> ServiceSpec {
    ServiceSpec {
        name: format!("svc-{i}"),
        description: String::new(),
        tags: vec![],
        labels: Default::default(),
        fqdn: format!("svc-{i}.owner.bench"),
        endpoints: (0..endpoints)
            .map(|e| EndpointSpec {
                address: format!("10.{}.{}.{}", (i >> 8) & 0xff, i & 0xff, e + 1),
                port: if e == 0 { first_port } else { 8443 },
                labels: vec![],
                description: String::new(),
            })
            .collect(),
        sans: vec!["owner".into()],
        instances: serde_json::from_value(serde_json::json!([{"id": "http", "protocol": "HTTP"}])).unwrap_or_default(),
    }
}

/// What the consumers' output told: when each synced, and when each change arrived.
#[derive(Default)]
struct Seen {
    synced: HashMap<usize, Instant>,
    /// (service, first endpoint) → when the owner made that change.
    pending: HashMap<(String, String), Instant>,
    latencies: Vec<f64>,
}

fn random_below(n: usize) -> usize {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    (u64::from_le_bytes(b) % n as u64) as usize
}

struct Consumers(Vec<Child>);

impl Drop for Consumers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let dir = args
        .work_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("meshwork-federation-bench-{}", std::process::id())));
    super::certs::create(&super::certs::Request {
        out: dir.clone(),
        meshes: vec!["owner".into(), "consumer".into()],
        days: 2,
        expired: vec![],
        sans: vec![],
    })?;
    let tls =
        super::tls::MtlsFiles { ca: dir.join("ca.pem"), cert: dir.join("owner.pem"), key: dir.join("owner-key.pem") };
    let exports = Exports::new();
    let specs: Vec<_> = (0..args.services).map(|i| service(i, args.endpoints, 8443).to_proto()).collect();
    exports.replace_all(specs);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let address = listener.local_addr()?;
    let server = tls.server()?;
    let quiet: super::Observer = Arc::new(|_| {});
    runtime.spawn(super::owner::serve(listener, server, exports.clone(), Policy::default(), quiet));
    let consumer_file = dir.join("consumer.yaml");
    std::fs::write(
        &consumer_file,
        format!(
            "mesh: consumer\ntls: {{ca: ca.pem, cert: consumer.pem, key: consumer-key.pem}}\nowners: [{{name: owner, address: \"{address}\", server_name: owner}}]\n"
        ),
    )?;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let exe = std::env::current_exe()?;
    let started = Instant::now();
    let mut consumers = Consumers(Vec::new());
    let mut readers = Vec::new();
    for index in 0..args.consumers {
        let mut child = Command::new(&exe)
            .args(["--log-level", "error", "federation", "subscribe", "--output", "json", "--config"])
            .arg(&consumer_file)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start a consumer")?;
        let stdout = child.stdout.take().context("consumer stdout")?;
        consumers.0.push(child);
        let seen = seen.clone();
        readers.push(std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                let at = Instant::now();
                let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
                let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
                match event["event"].as_str() {
                    Some("synced") => {
                        seen.synced.entry(index).or_insert(at);
                    }
                    Some("upserted") => {
                        let key = (
                            event["name"].as_str().unwrap_or("").to_owned(),
                            event["endpoints"][0].as_str().unwrap_or("").to_owned(),
                        );
                        if let Some(t0) = seen.pending.get(&key).copied() {
                            seen.latencies.push(at.duration_since(t0).as_secs_f64() * 1e3);
                        }
                    }
                    _ => {}
                }
            }
        }));
    }
    let wait = |done: &dyn Fn(&Seen) -> bool, limit: Duration| -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if done(&seen.lock().unwrap_or_else(|p| p.into_inner())) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    };
    let n = args.consumers;
    if !wait(&|s: &Seen| s.synced.len() == n, Duration::from_secs(600)) {
        anyhow::bail!("the consumers did not all sync within 10 minutes");
    }
    let sync: Vec<f64> = seen
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .synced
        .values()
        .map(|t| t.duration_since(started).as_secs_f64())
        .collect();
    let rss: Vec<f64> = consumers
        .0
        .iter()
        .filter_map(|c| meshwork_load::procfs::rss_kib(c.id()))
        .map(|(rss, _)| rss as f64 / 1024.0)
        .collect();
    let owner_rss = meshwork_load::procfs::rss_kib(std::process::id()).map_or(0.0, |(r, _)| r as f64 / 1024.0);
    // Endpoint changes, each to a service not changed before (so none supersedes another).
    let changes = args.changes.min(args.services);
    let mut order: Vec<usize> = (0..args.services).collect();
    for i in 0..changes {
        let j = i + random_below(order.len() - i);
        order.swap(i, j);
    }
    let interval = Duration::from_secs_f64(1.0 / f64::from(args.rate.max(1)));
    let begin = Instant::now();
    for (k, &i) in order[..changes].iter().enumerate() {
        let next = begin + interval * k as u32;
        if let Some(d) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        let port = 20_000 + k as u32;
        let changed = service(i, args.endpoints, port);
        let key = (changed.name.clone(), format!("{}:{port}", changed.endpoints[0].address));
        seen.lock().unwrap_or_else(|p| p.into_inner()).pending.insert(key, Instant::now());
        exports.upsert(changed.to_proto());
    }
    let expected = changes * n;
    wait(&|s: &Seen| s.latencies.len() >= expected, Duration::from_secs(60));
    let latencies = std::mem::take(&mut seen.lock().unwrap_or_else(|p| p.into_inner()).latencies);
    let report = Report {
        services: args.services,
        endpoints_per_service: args.endpoints,
        consumers: n,
        full_sync_s: percentiles(sync),
        consumer_rss_mib: percentiles(rss),
        owner_rss_mib: owner_rss,
        changes,
        updates_delivered: latencies.len(),
        propagation_ms: percentiles(latencies),
    };
    drop(consumers);
    if args.work_dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "federation bench: {} services x {} endpoints, {} consumers (mTLS gRPC on loopback, one message in flight per consumer)",
            report.services, report.endpoints_per_service, report.consumers
        );
        let p = |x: &Percentiles, unit: &str| {
            format!("p50 {:.2}{unit}  p99 {:.2}{unit}  max {:.2}{unit}", x.p50, x.p99, x.max)
        };
        println!("  time to full sync      {}", p(&report.full_sync_s, " s"));
        println!(
            "  memory per consumer    {}  (owner {:.1} MiB)",
            p(&report.consumer_rss_mib, " MiB"),
            report.owner_rss_mib
        );
        println!(
            "  propagation latency    {}  ({} of {} updates delivered, {} changes at {}/s)",
            p(&report.propagation_ms, " ms"),
            report.updates_delivered,
            expected,
            changes,
            args.rate
        );
    }
    Ok(if report.updates_delivered == expected { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
