//! The `meshwork` command line.

mod admin;
mod app;
mod catalog_cli;
mod config;
mod conformance_cli;
mod deploy_cli;
mod envoy;
mod federation;
mod inspect;
mod istio;
mod kube_apply;
mod kuma;
mod modules;
mod proxy;
mod ratelimit;
mod route_spec;
mod tls;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

/// Every request allocates (header maps, stream state, buffers); with mimalloc's thread-local
/// free lists a proxied request costs 5-7% less CPU than with glibc malloc (Envoy links
/// tcmalloc for the same reason).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "meshwork",
    version,
    about = "Service-mesh data-plane extensions: a proxy-wasm host in a fast proxy, and tools around it"
)]
struct Cli {
    /// Log level for meshwork itself (error, warn, info, debug, trace); RUST_LOG overrides.
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum PullPolicyArg {
    Default,
    IfNotPresent,
    Always,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum OutputFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy with proxy-wasm filters.
    #[command(group(clap::ArgGroup::new("mesh").args(["istio", "kuma"])))]
    Run {
        /// meshwork's own YAML configuration.
        #[arg(
            long,
            conflicts_with_all = ["envoy_config", "mesh"],
            required_unless_present_any = ["envoy_config", "istio", "kuma"]
        )]
        config: Option<PathBuf>,
        /// An Envoy static bootstrap (YAML or JSON) using envoy.filters.http.wasm.
        #[arg(long, conflicts_with = "mesh")]
        envoy_config: Option<PathBuf>,
        /// Istio WasmPlugin documents (YAML, several per file, or JSON), run as the Istio sidecar
        /// of the workload given by --upstream, --workload-labels, --namespace would run them.
        #[arg(long, num_args = 1.., value_name = "FILE", requires = "upstream")]
        istio: Vec<PathBuf>,
        /// Kuma MeshProxyPatch documents: their httpFilter additions on the inbound listener, as
        /// the Kuma dataplane of the workload given by --upstream would run them.
        #[arg(long, num_args = 1.., value_name = "FILE", requires = "upstream")]
        kuma: Vec<PathBuf>,
        /// With --istio/--kuma: the application the inbound listener forwards to.
        #[arg(long, value_name = "HOST:PORT", requires = "mesh")]
        upstream: Option<String>,
        /// With --istio/--kuma: the inbound listener's address (Istio's inbound capture port).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:15006")]
        listen: SocketAddr,
        /// With --istio/--kuma: the admin listener (stats, POST /reload), none by default.
        #[arg(long, value_name = "ADDR", requires = "mesh")]
        admin: Option<SocketAddr>,
        /// With --istio/--kuma: the workload's pod labels, which selectors are matched against.
        #[arg(long, value_name = "K=V[,K=V...]", value_delimiter = ',', value_parser = istio::parse_label, requires = "mesh")]
        workload_labels: Vec<(String, String)>,
        /// With --istio/--kuma: the workload's namespace.
        #[arg(long, value_name = "NS", default_value = "default")]
        namespace: String,
        /// With --istio/--kuma: a cluster the filters call out to, by the name their
        /// configurations use (`ratelimit=127.0.0.1:8081`; repeatable).
        #[arg(long = "cluster", value_name = "NAME=HOST:PORT", requires = "mesh")]
        outbound: Vec<String>,
        /// With --istio/--kuma: the workload's name (node metadata); by default its `app` label.
        #[arg(long, value_name = "NAME", requires = "mesh")]
        workload_name: Option<String>,
        /// With --envoy-config: warn about unsupported Envoy fields instead of refusing them.
        #[arg(long)]
        allow_unsupported: bool,
        /// Check the configuration and start every filter once, then exit (listens on nothing).
        #[arg(long)]
        check: bool,
        /// Resolve HOST to these addresses instead of asking DNS (repeatable), as curl's
        /// --resolve: `--resolve httpbin=127.0.0.1`.
        #[arg(long = "resolve", value_name = "HOST=IP[,IP...]", value_parser = parse_resolve)]
        resolve: Vec<(String, Vec<std::net::IpAddr>)>,
        #[arg(long, value_enum, default_value = "text")]
        output: OutputFormat,
        /// Every oci:// module must carry a cosign-compatible signature that verifies with this
        /// public key (PEM); http(s) modules must then be pinned by sha256.
        #[arg(long, value_name = "KEY.pub")]
        require_signature: Option<PathBuf>,
        /// Istio's imagePullPolicy for oci:// modules: the default uses a cached module for a
        /// tag it has pulled before, except `latest`, which is asked for every time.
        #[arg(long, value_enum, default_value = "default")]
        pull_policy: PullPolicyArg,
        /// Speak plain HTTP to this registry (host:port; repeatable); loopback ones always are.
        #[arg(long = "plain-http", value_name = "REGISTRY")]
        plain_http: Vec<String>,
    },
    /// Run the instrumented sample upstream (the demo and test workload).
    Upstream {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Reported in every response's x-upstream-name header.
        #[arg(long, default_value = "upstream")]
        name: String,
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// Serve global rate limits: Envoy's rate-limit service API as JSON (POST /json), counters
    /// in memory or shared through Redis.
    RatelimitService(ratelimit::Args),
    /// Generate load: open-loop constant rate (coordinated-omission-correct) or closed-loop max.
    Load(meshwork_load::LoadArgs),
    /// Run an SMP performance profile: scenarios side by side, SMP result documents.
    Bench(meshwork_load::BenchArgs),
    /// Load, observe and unload meshwork's eBPF programs (XDP rate limiting, TCP RTT histograms,
    /// connect-time circuit breaking); emit the DaemonSet that runs them on every node.
    Ebpf(meshwork_ebpf::cli::EbpfArgs),
    /// The catalog of patterns, filters, eBPF programs and policies: browse, validate, build,
    /// export, publish to and pull from OCI registries, sign and verify, render the web site.
    Catalog(catalog_cli::CatalogArgs),
    /// Conformance suites (SMI, GAMMA MESH-HTTP, the Service Mesh Patterns) against meshwork,
    /// an Envoy bootstrap, nginx or HAProxy: reports, signed attestations, a matrix.
    Conformance(conformance_cli::ConformanceArgs),
    /// A catalog item as the configuration a mesh accepts (Envoy, Istio, Envoy Gateway, Consul,
    /// Kuma, meshwork; eBPF DaemonSets), validated; `--apply` sends it to a cluster.
    Deploy(Box<deploy_cli::DeployArgs>),
    /// Hamlet federation between meshes over mutually authenticated gRPC: serve the services
    /// this mesh exports, subscribe to another mesh's, create certificates, benchmark.
    Federation(federation::cli::FederationArgs),
    /// Work with proxy-wasm filter modules.
    Filter {
        #[command(subcommand)]
        command: FilterCommand,
    },
}

#[derive(Subcommand)]
enum FilterCommand {
    /// Show a module's ABI version, callbacks, imports, and what this host lacks for it.
    Inspect {
        file: PathBuf,
        #[arg(long, value_enum, default_value = "text")]
        output: OutputFormat,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&cli.log_level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run {
            config,
            envoy_config,
            allow_unsupported,
            check,
            resolve,
            output,
            require_signature,
            pull_policy,
            plain_http,
            istio,
            kuma,
            upstream,
            listen,
            admin,
            workload_labels,
            namespace,
            workload_name,
            outbound,
        } => {
            let kind = match (config, envoy_config, upstream) {
                (Some(path), _, _) => proxy::reload::ConfigKind::Native(path),
                (None, Some(path), _) => proxy::reload::ConfigKind::Envoy { path, allow_unsupported },
                (None, None, Some(upstream)) => {
                    let (labels, name) = (workload_labels, workload_name);
                    let mut workload = istio::Workload::from_flags(&upstream, listen, admin, labels, namespace, name)?;
                    for c in &outbound {
                        let (name, address) =
                            c.split_once('=').with_context(|| format!("--cluster {c}: want NAME=HOST:PORT"))?;
                        workload.outbound.push((name.to_owned(), config::EndpointConfig::parse(address, "--cluster")?));
                    }
                    if istio.is_empty() {
                        proxy::reload::ConfigKind::Kuma { files: kuma, workload }
                    } else {
                        proxy::reload::ConfigKind::Istio { files: istio, workload }
                    }
                }
                (None, None, None) => anyhow::bail!("give --config, --envoy-config, --istio or --kuma"),
            };
            let require_signature = require_signature
                .map(|path| {
                    let pem = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
                    meshwork_oci::sign::VerifyingKey::from_pem(&pem).with_context(|| format!("key {}", path.display()))
                })
                .transpose()?;
            let pull = modules::PullSettings {
                registry: meshwork_oci::RegistryOptions { plain_http, ..Default::default() },
                require_signature,
                pull_policy: match pull_policy {
                    PullPolicyArg::Default => meshwork_oci::fetch::PullPolicy::Default,
                    PullPolicyArg::IfNotPresent => meshwork_oci::fetch::PullPolicy::IfNotPresent,
                    PullPolicyArg::Always => meshwork_oci::fetch::PullPolicy::Always,
                },
            };
            let source = proxy::reload::ConfigSource {
                kind,
                resolve: resolve.into_iter().collect(),
                pull,
                imports: federation::imports::Imports::new(),
            };
            let config = source.load()?;
            if check {
                let filters = config.all_filters().count();
                proxy::check(config)?;
                println!("meshwork: configuration ok ({filters} filter(s) started and configured)");
                return Ok(ExitCode::SUCCESS);
            }
            let workers = config.workers;
            let filters: Vec<String> = config.all_filters().map(|f| f.plugin.name.clone()).collect();
            let proxy = proxy::start(config, source)?;
            let mut stdout = std::io::stdout();
            let listeners: Vec<String> =
                proxy.listeners.iter().map(|(name, scheme, addr)| format!("{scheme}://{addr} ({name})")).collect();
            match output {
                OutputFormat::Json => writeln!(
                    stdout,
                    "{}",
                    serde_json::json!({
                        "event": "ready",
                        "listen": proxy.listeners.first().map(|l| l.2.to_string()),
                        "listeners": proxy.listeners.iter().map(|(name, scheme, addr)| serde_json::json!({
                            "name": name, "scheme": scheme, "address": addr.to_string(),
                        })).collect::<Vec<_>>(),
                        "admin": proxy.admin.map(|a| a.to_string()),
                        "workers": workers,
                        "filters": filters,
                    })
                )?,
                OutputFormat::Text => writeln!(
                    stdout,
                    "meshwork: listening on {} with {workers} worker(s), filters [{}]{}",
                    if listeners.is_empty() { "nothing (services only)".to_owned() } else { listeners.join(", ") },
                    filters.join(", "),
                    proxy.admin.map(|a| format!(", admin on http://{a}")).unwrap_or_default()
                )?,
            }
            stdout.flush()?;
            proxy::wait_for_shutdown(&proxy.reloader)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Upstream { listen, name, threads } => {
            app::serve(listen, name, threads)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::RatelimitService(args) => {
            ratelimit::serve(args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Load(args) => meshwork_load::run_load(args),
        Command::Bench(args) => meshwork_load::run_bench(args),
        Command::Ebpf(args) => meshwork_ebpf::cli::run(args),
        Command::Catalog(args) => catalog_cli::run(args),
        Command::Conformance(args) => conformance_cli::run(args),
        Command::Deploy(args) => deploy_cli::run(*args),
        Command::Federation(args) => federation::cli::run(args),
        Command::Filter { command: FilterCommand::Inspect { file, output } } => {
            let report = inspect::inspect(&file)?;
            match output {
                OutputFormat::Json => {
                    println!("{}", serde_json::to_string_pretty(&report.json(&file))?)
                }
                OutputFormat::Text => print!("{}", report.text(&file)),
            }
            Ok(if report.problems().is_empty() { ExitCode::SUCCESS } else { ExitCode::from(2) })
        }
    }
}

/// `HOST=IP[,IP...]` for `--resolve`.
fn parse_resolve(text: &str) -> Result<(String, Vec<std::net::IpAddr>), String> {
    let (host, ips) = text.split_once('=').ok_or_else(|| format!("{text:?} is not HOST=IP[,IP...]"))?;
    let ips = ips
        .split(',')
        .map(|ip| ip.trim().parse().map_err(|_| format!("{ip:?} in {text:?} is not an IP address")))
        .collect::<Result<Vec<_>, _>>()?;
    if host.is_empty() {
        return Err(format!("{text:?} names no host"));
    }
    Ok((host.to_ascii_lowercase(), ips))
}
