//! `meshwork federation serve | subscribe | certs | bench`.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use meshwork_grpc_api::hamlet::types::FederatedService;
use serde::Deserialize;

use super::consumer::ConsumerSpec;
use super::model::ServiceSpec;
use super::owner::{Exports, Policy};
use super::tls::MtlsFiles;
use super::{Event, Observer};

#[derive(Args)]
pub struct FederationArgs {
    #[command(subcommand)]
    command: FederationCommand,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Output {
    Text,
    Json,
}

#[derive(Subcommand)]
enum FederationCommand {
    /// Be an owner: serve the Hamlet discovery API (gRPC, mTLS) for the services the file
    /// exports. The file is read again when it changes or on SIGHUP; consumers get the
    /// difference.
    Serve {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Overrides the file's `listen`.
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
        /// Export the services as written, without the checks a consumer makes: to see how
        /// consumers (meshwork's or another mesh's) treat malformed resources.
        #[arg(long)]
        no_check: bool,
    },
    /// Be a consumer: follow the owners the file names and print every change to the
    /// imported services. Exits (status 1) when every owner has refused this mesh.
    Subscribe {
        /// A file with the `federation:` section's fields at the top level (mesh, tls, owners),
        /// or a `meshwork run` configuration with a `federation:` section.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Create a federation CA (unless DIR has one) and a certificate per mesh.
    Certs {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// A mesh to issue a certificate for (repeatable): DIR/MESH.pem and DIR/MESH-key.pem.
        #[arg(long = "mesh", value_name = "NAME", required = true)]
        meshes: Vec<String>,
        #[arg(long, default_value_t = 365)]
        days: i64,
        /// Issue this mesh's certificate already expired (repeatable), to see refusals.
        #[arg(long = "expired", value_name = "NAME")]
        expired: Vec<String>,
        /// An extra SAN for a mesh's certificate (repeatable): `mesh-a=ingress.mesh-a.example`.
        #[arg(long = "san", value_name = "MESH=NAME")]
        sans: Vec<String>,
    },
    /// One owner federating many services to many consumers on this machine: time to full
    /// sync, memory per consumer, propagation latency of endpoint changes.
    Bench(super::bench::BenchArgs),
}

/// The owner's file.
#[derive(Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct OwnerFile {
    /// This mesh's name, for logs.
    mesh: String,
    listen: String,
    tls: MtlsFiles,
    /// Consumers allowed, by a URI or DNS SAN of their certificate; any from the CA if empty.
    #[serde(default)]
    consumers: Vec<String>,
    nack_retry: Option<String>,
    ack_timeout: Option<String>,
    /// `services:` with nothing under it exports nothing, as `services: []` does.
    services: Option<Vec<ServiceSpec>>,
}

impl OwnerFile {
    /// Everything but the services, which are what a reload may change.
    fn settings_differ(&self, other: &OwnerFile) -> bool {
        (&self.mesh, &self.listen, &self.tls, &self.consumers, &self.nack_retry, &self.ack_timeout)
            != (&other.mesh, &other.listen, &other.tls, &other.consumers, &other.nack_retry, &other.ack_timeout)
    }
}

fn read_owner(path: &Path, check: bool) -> anyhow::Result<(OwnerFile, Vec<FederatedService>)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut file: OwnerFile =
        meshwork_yaml::from_str(&text).with_context(|| format!("{} is not valid", path.display()))?;
    file.tls.resolve(path.parent().unwrap_or(Path::new(".")));
    let specs = file.services.as_deref().unwrap_or_default();
    let services = if check {
        exported(specs).with_context(|| format!("{} is not valid", path.display()))?
    } else {
        specs.iter().map(ServiceSpec::to_proto).collect()
    };
    Ok((file, services))
}

/// The services as resources, each checked as a consumer will check it.
fn exported(specs: &[ServiceSpec]) -> anyhow::Result<Vec<FederatedService>> {
    let (mut names, mut fqdns) = (HashSet::new(), HashSet::new());
    let mut out = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let service = spec.to_proto();
        super::model::check(&service).map_err(|e| anyhow::anyhow!("services[{i}]: {e}"))?;
        if !names.insert(service.name.clone()) {
            bail!("services[{i}]: name {:?} is exported twice", service.name);
        }
        if !fqdns.insert(service.fqdn.to_ascii_lowercase()) {
            bail!("services[{i}]: fqdn {:?} is exported twice", service.fqdn);
        }
        out.push(service);
    }
    Ok(out)
}

/// A duration setting; at least 100 ms, since it paces re-sending and waiting.
fn duration(text: Option<&str>, default: Duration, what: &str) -> anyhow::Result<Duration> {
    let d = text.map_or(Ok(default), |t| crate::config::parse_duration(t).with_context(|| what.to_owned()))?;
    if d < Duration::from_millis(100) {
        bail!("{what} must be at least 100ms (got {d:?})");
    }
    Ok(d)
}

/// Prints events as lines, text or JSON.
pub fn printer(output: Output) -> Observer {
    Arc::new(move |event: &Event| {
        let mut stdout = std::io::stdout().lock();
        let _ = match output {
            Output::Json => writeln!(stdout, "{}", serde_json::to_string(event).unwrap_or_default()),
            Output::Text => writeln!(stdout, "{event}"),
        };
        let _ = stdout.flush();
    })
}

fn say(output: Output, json: serde_json::Value, text: String) {
    let mut stdout = std::io::stdout().lock();
    let _ = match output {
        Output::Json => writeln!(stdout, "{json}"),
        Output::Text => writeln!(stdout, "{text}"),
    };
    let _ = stdout.flush();
}

/// Reads a consumer file: the section's fields at the top level, or a `federation:` key.
pub fn read_consumer(path: &Path) -> anyhow::Result<ConsumerSpec> {
    #[derive(Deserialize)]
    struct Wrapped {
        federation: ConsumerSpec,
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let value: serde_json::Value =
        meshwork_yaml::from_str(&text).with_context(|| format!("{} is not valid", path.display()))?;
    let mut spec = if value.get("federation").is_some() {
        // Only the section matters here; the rest is the proxy's.
        let section = serde_json::json!({ "federation": value["federation"] });
        serde_json::from_value::<Wrapped>(section).map(|w| w.federation)
    } else {
        serde_json::from_value(value)
    }
    .with_context(|| format!("{} is not a valid federation section", path.display()))?;
    spec.resolve(path.parent().unwrap_or(Path::new(".")))?;
    Ok(spec)
}

pub fn run(args: FederationArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        FederationCommand::Certs { out, meshes, days, expired, sans } => {
            let written = super::certs::create(&super::certs::Request { out, meshes, days, expired, sans })?;
            for path in written {
                println!("{}", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        FederationCommand::Serve { config, listen, output, no_check } => serve(&config, listen, output, !no_check),
        FederationCommand::Subscribe { config, output } => subscribe(&config, output),
        FederationCommand::Bench(args) => super::bench::run(args),
    }
}

fn serve(path: &Path, listen: Option<String>, output: Output, check: bool) -> anyhow::Result<ExitCode> {
    let (file, services) = read_owner(path, check)?;
    let policy = Policy {
        consumers: file.consumers.clone(),
        nack_retry: duration(file.nack_retry.as_deref(), Duration::from_secs(30), "nack_retry")?,
        ack_timeout: duration(file.ack_timeout.as_deref(), Duration::from_secs(30), "ack_timeout")?,
    };
    let tls = file.tls.server().context("federation tls")?;
    let exports = Exports::new();
    exports.replace_all(services);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        let address = listen.unwrap_or(file.listen.clone());
        let listener = tokio::net::TcpListener::bind(&address)
            .await
            .with_context(|| format!("cannot listen on {address}"))?;
        let local = listener.local_addr()?;
        say(
            output,
            serde_json::json!({"event": "listening", "mesh": file.mesh, "listen": local.to_string(), "services": exports.len()}),
            format!("meshwork federation serve: mesh {} listening on {local} (mTLS), exporting {} service(s)", file.mesh, exports.len()),
        );
        // The file is read again when it changes (checked every half second) or on SIGHUP.
        let (watched, path, settings) = (exports.clone(), path.to_owned(), file);
        tokio::spawn(async move {
            let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            let mut last = crate::tls::watch::stamp(&path);
            loop {
                let signalled = async {
                    match hangup.as_mut() {
                        Some(h) => h.recv().await.is_some(),
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = signalled => {}
                    () = tokio::time::sleep(Duration::from_millis(500)) => {
                        let now = crate::tls::watch::stamp(&path);
                        if now == last { continue }
                    }
                }
                last = crate::tls::watch::stamp(&path);
                match read_owner(&path, check) {
                    Ok((new, services)) => {
                        let changed = watched.replace_all(services);
                        let restart = new.settings_differ(&settings);
                        let note = if restart {
                            "; settings other than services changed too, and take a restart to apply"
                        } else {
                            ""
                        };
                        say(
                            output,
                            serde_json::json!({"event": "exports", "services": watched.len(), "changed": changed, "restart_needed": restart}),
                            format!("exports reloaded: {} service(s), {changed} changed{note}", watched.len()),
                        );
                    }
                    Err(e) => say(
                        output,
                        serde_json::json!({"event": "exports-refused", "reason": format!("{e:#}")}),
                        format!("exports not reloaded, the previous ones keep being served: {e:#}"),
                    ),
                }
            }
        });
        super::owner::serve(listener, tls, exports, policy, printer(output)).await
    })?;
    Ok(ExitCode::SUCCESS)
}

fn subscribe(path: &Path, output: Output) -> anyhow::Result<ExitCode> {
    let spec = Arc::new(read_consumer(path)?);
    let imports = super::imports::Imports::new();
    let observer = printer(output);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let reasons = runtime.block_on(async {
        let follows: Vec<_> = spec
            .owners
            .iter()
            .map(|o| tokio::spawn(super::consumer::follow(o.clone(), spec.clone(), imports.clone(), observer.clone())))
            .collect();
        let mut reasons = Vec::new();
        for f in follows {
            reasons.push(f.await.unwrap_or_else(|e| e.to_string()));
        }
        reasons
    });
    eprintln!("meshwork federation subscribe: every owner refused this mesh: {}", reasons.join("; "));
    Ok(ExitCode::from(1))
}
