//! `meshwork load` and `meshwork bench` (issue 4): coordinated-omission-correct load, lossless
//! distributed histograms, adaptive max-rate search, SMP benchmark results.
//!
//! Modules, one concern each: `spec` (what to send), `schedule` (when), `client` (the wire),
//! `run` (the loop), `histogram` (recording and its encoding), `report` and `svg` (outputs),
//! `distrib` (workers and the merge), `adaptive` (--find-max), `kube` (the Job manifest),
//! `bench`, `smp` and `procfs` (profiles, SMP documents, MeshMark, process measurements).

pub mod adaptive;
pub mod bench;
pub mod client;
pub mod distrib;
pub mod error;
pub mod histogram;
pub mod kube;
pub mod procfs;
pub mod report;
pub mod run;
pub mod schedule;
pub mod smp;
pub mod spec;
pub mod svg;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::run::{Progress, RunResult};
use crate::spec::{LoadSpec, RequestSpec, Share, Slo, Stop, Target};

#[derive(Clone, Copy, Debug, clap::ValueEnum, PartialEq, Eq)]
pub enum Output {
    Text,
    Json,
}

/// `meshwork load URL ...` (boxed: the options are many, and the CLI's command enum stays small).
#[derive(clap::Args, Debug)]
pub struct LoadArgs {
    #[command(flatten)]
    pub options: Box<LoadOptions>,
}

impl std::ops::Deref for LoadArgs {
    type Target = LoadOptions;
    fn deref(&self) -> &LoadOptions {
        &self.options
    }
}

#[derive(clap::Args, Debug)]
pub struct LoadOptions {
    /// The URL to load (http://host:port/path).
    #[arg(required_unless_present_any = ["collect", "worker_spec"])]
    pub url: Option<String>,
    /// Requests per second, open loop (latency from each request's intended send time).
    /// 0 means closed loop: as fast as responses come back.
    #[arg(long, short = 'R', default_value_t = 1000.0)]
    pub rps: f64,
    /// Closed loop, as fast as possible (same as --rps 0).
    #[arg(long)]
    pub max: bool,
    /// Connections, across all workers.
    #[arg(long, short = 'c', default_value_t = 10)]
    pub connections: usize,
    /// Event-loop threads (per worker).
    #[arg(long, short = 't', default_value_t = 1)]
    pub threads: usize,
    /// How long to run (after warm-up): 10s, 500ms, 2m.
    #[arg(long, short = 'd', default_value = "10s", conflicts_with = "requests")]
    pub duration: String,
    /// Send this many requests (after warm-up) instead of running for a duration.
    #[arg(long, short = 'n')]
    pub requests: Option<u64>,
    /// Load sent but not recorded before the measured run.
    #[arg(long, default_value = "0s")]
    pub warmup: String,
    /// A request header, 'name: value' (repeatable).
    #[arg(long = "header", short = 'H')]
    pub headers: Vec<String>,
    /// The request method.
    #[arg(long, short = 'X', default_value = "GET")]
    pub method: String,
    /// The request body.
    #[arg(long, conflicts_with = "body_file")]
    pub body: Option<String>,
    /// The request body, from a file.
    #[arg(long)]
    pub body_file: Option<PathBuf>,
    /// HTTP/2 over cleartext (h2c, prior knowledge).
    #[arg(long)]
    pub http2: bool,
    /// Concurrent streams per HTTP/2 connection.
    #[arg(long, default_value_t = 1)]
    pub streams: usize,
    /// Per-request timeout; also how long after the schedule ends unsent requests are given up.
    #[arg(long, default_value = "2s")]
    pub timeout: String,
    /// text: the wrk2-style summary; json: the full report with the encoded histogram.
    #[arg(long, value_enum, default_value = "text")]
    pub output: Output,
    /// Also write fortio's result JSON (for fortio's report UI and Meshery).
    #[arg(long, value_name = "FILE")]
    pub fortio_json: Option<PathBuf>,
    /// Also write the HdrHistogram percentile distribution (.hgrm).
    #[arg(long, value_name = "FILE")]
    pub hgrm: Option<PathBuf>,
    /// Also write an SVG of latency by percentile (with --find-max: latency by offered rate).
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// No progress line on stderr.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Run N worker processes, each with its share of rate and connections, merged losslessly.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,

    /// Search for the highest open-loop rate that meets --slo and --max-error-rate.
    #[arg(long, requires = "slo")]
    pub find_max: bool,
    /// The latency objective for --find-max, e.g. 'p99<=10ms'.
    #[arg(long)]
    pub slo: Option<String>,
    /// The error budget for --find-max: failures plus statuses outside 2xx/3xx, e.g. 0.1%.
    #[arg(long, default_value = "0.1%")]
    pub max_error_rate: String,
    /// The first rate --find-max tries.
    #[arg(long, default_value_t = 100.0)]
    pub start_rps: f64,
    /// The highest rate --find-max tries.
    #[arg(long, default_value_t = 1_000_000.0)]
    pub max_rps: f64,
    /// Length of each --find-max step.
    #[arg(long, default_value = "3s")]
    pub step_duration: String,
    /// Stop the binary search when the bracket is narrower than this fraction.
    #[arg(long, default_value_t = 0.05)]
    pub precision: f64,
    /// At most this many --find-max steps.
    #[arg(long, default_value_t = 24)]
    pub max_steps: usize,

    /// Build a Kubernetes Indexed Job running the workers instead of running locally.
    #[arg(long)]
    pub kubernetes: bool,
    /// Pods in the Job.
    #[arg(long, default_value_t = 2)]
    pub replicas: usize,
    /// Container image with the meshwork binary.
    #[arg(long, default_value = "meshwork:latest")]
    pub image: String,
    /// The Job's namespace.
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// The Job's name (a DNS label).
    #[arg(long, default_value = "meshwork-load")]
    pub job_name: String,
    /// CPU request and limit per pod, e.g. 1 or 500m.
    #[arg(long)]
    pub pod_cpu: Option<String>,
    /// Pods start their schedules together this long after the manifest is built.
    #[arg(long, default_value = "60s")]
    pub start_delay: String,
    /// Write the manifest here instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub manifest_out: Option<PathBuf>,
    /// Merge worker results from files or directories (e.g. `kubectl logs --prefix` output).
    #[arg(long, num_args = 1.., value_name = "FILE")]
    pub collect: Vec<PathBuf>,

    /// Internal: run as one worker of a distributed run (JSON LoadSpec).
    #[arg(long, hide = true)]
    pub worker_spec: Option<String>,
    /// Internal: this worker's index (default: $JOB_COMPLETION_INDEX).
    #[arg(long, hide = true)]
    pub worker_index: Option<usize>,
    #[arg(long, hide = true, default_value_t = 1)]
    pub worker_count: usize,
    /// Internal (tests): write every recorded latency in µs, one per line (per worker: FILE.wN).
    #[arg(long, hide = true)]
    pub dump_samples: Option<String>,
}

/// `meshwork bench --profile FILE`
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// An SMP performance profile (YAML).
    #[arg(long)]
    pub profile: PathBuf,
    /// Where SMP result documents and the comparison SVG go.
    #[arg(long, default_value = "bench-results")]
    pub out: PathBuf,
    /// text: the comparison table; json: the SMP result documents.
    #[arg(long, value_enum, default_value = "text")]
    pub output: Output,
    /// No progress on stderr.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

fn spec_from(args: &LoadArgs) -> anyhow::Result<LoadSpec> {
    let url = args.url.as_deref().context("give the URL to load")?;
    let target = Target::parse(url)?;
    let body = match (&args.body, &args.body_file) {
        (Some(b), _) => b.clone().into_bytes(),
        (None, Some(f)) => std::fs::read(f).with_context(|| format!("cannot read --body-file {}", f.display()))?,
        (None, None) => Vec::new(),
    };
    let method = args.method.to_ascii_uppercase();
    http::Method::from_bytes(method.as_bytes()).map_err(|_| anyhow::anyhow!("-X {method:?} is not an HTTP method"))?;
    let rps = if args.max || args.rps == 0.0 { None } else { Some(args.rps) };
    let spec = LoadSpec {
        target,
        request: RequestSpec { method, headers: RequestSpec::parse_headers(&args.headers)?, body },
        http2: args.http2,
        streams: if args.http2 { args.streams.max(1) } else { 1 },
        rps,
        connections: args.connections,
        threads: args.threads.max(1),
        stop: match args.requests {
            Some(n) => Stop::Requests(n),
            None => Stop::Duration(spec::parse_duration(&args.duration)?),
        },
        warmup: spec::parse_duration(&args.warmup)?,
        timeout: spec::parse_duration(&args.timeout)?,
        start_at_unix_ns: None,
        samples_file: args.dump_samples.clone(),
    };
    spec.validate()?;
    Ok(spec)
}

/// Progress on stderr until dropped: an indicatif bar on a terminal; elsewhere (CI logs, pipes)
/// one plain line a second, which indicatif does not draw.
struct ProgressLine {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl ProgressLine {
    fn start(progress: Arc<Progress>, total: Option<Duration>, label: String, counts: bool) -> ProgressLine {
        let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| Self::bar(total, &label));
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let start = Instant::now();
            let mut last = (Instant::now(), 0u64);
            let mut ticks = 0u32;
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(250));
                ticks += 1;
                if bar.is_none() && !ticks.is_multiple_of(4) {
                    continue;
                }
                // Worker processes report only at the end: then the time is all there is to show.
                let message = counts.then(|| {
                    let done = progress.done.load(Ordering::Relaxed);
                    let errors = progress.errors.load(Ordering::Relaxed);
                    let now = Instant::now();
                    let rate = (done - last.1) as f64 / (now - last.0).as_secs_f64().max(1e-3);
                    last = (now, done);
                    format!("{done} done  {rate:.0} req/s  {errors} errors")
                });
                let elapsed = start.elapsed();
                match &bar {
                    Some(bar) => {
                        bar.set_position(elapsed.as_millis() as u64);
                        if let Some(m) = message {
                            bar.set_message(m);
                        }
                    }
                    None => {
                        let of = total.map(|t| format!("/{:.1}s", t.as_secs_f64())).unwrap_or_default();
                        eprintln!("{label} [{:.1}s{of}]  {}", elapsed.as_secs_f64(), message.unwrap_or_default());
                    }
                }
            }
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
        });
        ProgressLine { stop, handle: Some(handle) }
    }

    fn bar(total: Option<Duration>, label: &str) -> indicatif::ProgressBar {
        let (bar, template) = match total {
            Some(t) => {
                (indicatif::ProgressBar::new(t.as_millis() as u64), "{prefix} [{bar:30}] {elapsed}/{duration}  {msg}")
            }
            None => (indicatif::ProgressBar::new_spinner(), "{prefix} {spinner} {elapsed}  {msg}"),
        };
        if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(label.to_owned());
        bar
    }
}

impl Drop for ProgressLine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn expected_length(spec: &LoadSpec) -> Option<Duration> {
    match spec.stop {
        Stop::Duration(d) => Some(spec.warmup + d),
        Stop::Requests(n) => spec.rps.map(|r| spec.warmup + Duration::from_secs_f64(n as f64 / r)),
    }
}

/// One run (in this process, or in worker processes), with a progress line.
fn run_once(spec: &LoadSpec, workers: usize, quiet: bool) -> anyhow::Result<RunResult> {
    let progress = Arc::new(Progress::default());
    let label = if workers > 1 { format!("load ({workers} workers)") } else { "load".into() };
    let _line = (!quiet).then(|| ProgressLine::start(progress.clone(), expected_length(spec), label, workers == 1));
    let result =
        if workers > 1 { distrib::run_workers(spec, workers)? } else { run::run(spec, Share::WHOLE, progress)? };
    Ok(result)
}

fn write_file(path: &PathBuf, contents: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(path, contents).with_context(|| format!("cannot write {}", path.display()))
}

fn emit(result: &RunResult, args: &LoadArgs) -> anyhow::Result<()> {
    match args.output {
        Output::Text => print!("{}", report::summary(result)),
        Output::Json => println!("{}", serde_json::to_string_pretty(&report::json_report(result))?),
    }
    if let Some(p) = &args.fortio_json {
        write_file(p, &serde_json::to_string_pretty(&report::fortio_json(result))?)?;
    }
    if let Some(p) = &args.hgrm {
        write_file(p, &report::hgrm(&result.latency))?;
    }
    if let Some(p) = &args.svg {
        let title = format!(
            "{} — {}",
            result.spec.target.url,
            if result.spec.rps.is_some() { "open loop" } else { "closed loop" }
        );
        write_file(p, &svg::latency_by_percentile(&title, &[(result.spec.target.url.clone(), &result.latency)]))?;
    }
    Ok(())
}

pub fn run_load(args: LoadArgs) -> anyhow::Result<ExitCode> {
    run::stop_on_sigint();
    // A worker of a distributed run (local process or Kubernetes pod): one result line.
    if let Some(json) = &args.worker_spec {
        let spec: LoadSpec = serde_json::from_str(json).context("--worker-spec is not a load spec")?;
        let index = match args.worker_index {
            Some(i) => i,
            None => std::env::var(kube::INDEX_ENV)
                .ok()
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("no --worker-index and no ${}", kube::INDEX_ENV))?,
        };
        let share = Share { index, count: args.worker_count.max(1) };
        anyhow::ensure!(index < share.count, "worker index {index} is not below the worker count {}", share.count);
        let result = run::run(&spec, share, Arc::new(Progress::default()))?;
        println!("{}", serde_json::to_string(&distrib::WorkerReport::from_result(&result, share))?);
        return Ok(ExitCode::SUCCESS);
    }
    if !args.collect.is_empty() {
        let result = distrib::collect(&args.collect)?;
        emit(&result, &args)?;
        return Ok(ExitCode::SUCCESS);
    }
    let spec = spec_from(&args)?;
    anyhow::ensure!(args.workers >= 1, "--workers must be at least 1");
    anyhow::ensure!(
        args.workers <= spec.connections,
        "--workers {} is more than --connections {}: every worker needs a connection",
        args.workers,
        spec.connections
    );
    if args.kubernetes {
        let opts = kube::JobOptions {
            name: args.job_name.clone(),
            namespace: args.namespace.clone(),
            image: args.image.clone(),
            replicas: args.replicas,
            start_delay: spec::parse_duration(&args.start_delay)?,
            cpu: args.pod_cpu.clone(),
        };
        let yaml = kube::manifest_yaml(&kube::job(&spec, &opts)?);
        match &args.manifest_out {
            Some(p) => {
                write_file(p, &yaml)?;
                eprintln!("wrote {}; then:\n{}", p.display(), kube::instructions(&opts, &p.display().to_string()));
            }
            None => {
                print!("{yaml}");
                eprintln!("{}", kube::instructions(&opts, "job.yaml"));
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    if args.find_max {
        return find_max(&args, spec);
    }
    let result = run_once(&spec, args.workers, args.quiet)?;
    emit(&result, &args)?;
    Ok(ExitCode::SUCCESS)
}

fn find_max(args: &LoadArgs, spec: LoadSpec) -> anyhow::Result<ExitCode> {
    let slo = Slo::parse(args.slo.as_deref().unwrap_or_default())?;
    let cfg = adaptive::SearchConfig {
        slo,
        max_error_rate: spec::parse_fraction(&args.max_error_rate)?,
        start_rps: args.start_rps,
        max_rps: args.max_rps,
        step: spec::parse_duration(&args.step_duration)?,
        precision: args.precision,
        max_steps: args.max_steps,
    };
    let quiet = args.quiet;
    let search = adaptive::search(
        &spec,
        &cfg,
        |s| run_once(s, args.workers, true).map_err(|e| error::LoadError::Worker(format!("{e:#}"))),
        |step| {
            if !quiet {
                eprintln!(
                    "find-max: {:>10.1} req/s  p{} {:>9.3} ms  errors {:.3}%  {}",
                    step.rps,
                    cfg.slo.percentile,
                    step.slo_ms,
                    step.error_rate * 100.0,
                    if step.pass { "pass" } else { "FAIL" }
                );
            }
        },
    )?;
    match args.output {
        Output::Text => print!("{}", adaptive::table(&search)),
        Output::Json => println!("{}", serde_json::to_string_pretty(&search)?),
    }
    if let Some(p) = &args.svg {
        write_file(p, &adaptive::svg(&search, &slo))?;
    }
    Ok(if search.max_rps.is_some() { ExitCode::SUCCESS } else { ExitCode::from(2) })
}

pub fn run_bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    bench::run(&args)
}
