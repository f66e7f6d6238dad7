//! The `meshwork ebpf` subcommands (the CLI edge: anyhow from here up).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};

use crate::config;
use crate::instance::{self, Instance};
use crate::loader::{self, LoadRequest, XdpModeChoice};
use crate::manifest::{self, ManifestOptions};
use crate::preflight::{self, Target};
use crate::{Program, stats};

#[derive(Args, Debug)]
pub struct EbpfArgs {
    #[command(subcommand)]
    pub command: EbpfCommand,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Output {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum StatsOutput {
    Text,
    Json,
    Prometheus,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum ManifestOutput {
    Yaml,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum EbpfCommand {
    /// Load a program and attach it. Stays in the foreground (Ctrl-C / SIGTERM detaches) unless
    /// --pin, which pins it under /sys/fs/bpf/meshwork/NAME/ and returns.
    Load {
        #[arg(value_enum)]
        program: Program,
        /// Network interface (XDP programs).
        #[arg(long, conflicts_with = "cgroup")]
        iface: Option<String>,
        /// cgroup2 directory (sock_ops and connect programs); default: the cgroup2 mount root.
        #[arg(long)]
        cgroup: Option<PathBuf>,
        /// Config: inline YAML/JSON (`{rate: 1000, burst: 100}`) or a file (see ebpf/README.md).
        #[arg(long)]
        config: Option<String>,
        /// Pin the attachment so it outlives this command; `meshwork ebpf unload` removes it.
        #[arg(long)]
        pin: bool,
        /// Instance name (default: the program's name); lets one program run more than once.
        #[arg(long)]
        name: Option<String>,
        /// XDP attach mode.
        #[arg(long, value_enum, default_value = "auto")]
        xdp_mode: XdpModeChoice,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Loaded instances and what holds them.
    List {
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Counters, and percentiles for sockops-rtt, read from a loaded instance's maps.
    Stats {
        /// Instance name (the program's name unless loaded with --name).
        instance: String,
        #[arg(long, value_enum, default_value = "text")]
        output: StatsOutput,
    },
    /// Detach an instance and remove its pins (a stale one: just remove its pins).
    Unload {
        #[arg(required_unless_present_any = ["all", "stale"])]
        instance: Option<String>,
        /// Every instance meshwork loaded, and every pin directory under /sys/fs/bpf/meshwork/.
        #[arg(long, conflicts_with_all = ["instance", "stale"])]
        all: bool,
        /// Only what dead loaders left behind (map pins and records); nothing attached is touched.
        #[arg(long, conflicts_with = "instance")]
        stale: bool,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// A Kubernetes DaemonSet that loads a program on every node.
    Manifest {
        #[arg(value_enum)]
        program: Program,
        /// Node interface for XDP programs.
        #[arg(long, conflicts_with = "cgroup")]
        iface: Option<String>,
        /// cgroup2 path on the nodes for cgroup programs.
        #[arg(long, default_value = None)]
        cgroup: Option<PathBuf>,
        /// Inline YAML/JSON config, checked now.
        #[arg(long)]
        config: Option<String>,
        #[arg(long)]
        image: String,
        #[arg(long, default_value = "kube-system")]
        namespace: String,
        /// DaemonSet name (default: meshwork-PROGRAM).
        #[arg(long)]
        name: Option<String>,
        #[arg(long, value_enum, default_value = "yaml")]
        output: ManifestOutput,
    },
}

pub fn run(args: EbpfArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        EbpfCommand::Load { program, iface, cgroup, config, pin, name, xdp_mode, output } => {
            let target = Target::from_args(program, iface, cgroup)?;
            let parsed = config::parse(program, config.as_deref())?;
            let config_json = match config.as_deref() {
                Some(text) if text.trim_start().starts_with('{') => {
                    serde_saphyr::from_str::<serde_json::Value>(text).unwrap_or(serde_json::Value::Null)
                }
                Some(path) => serde_json::Value::String(path.to_owned()),
                None => serde_json::Value::Null,
            };
            if !pin {
                // Before anything can fail half-way: the signal must reach sigwait, not kill us.
                loader::block_signals();
            }
            let name = name.unwrap_or_else(|| program.name().to_owned());
            let loaded =
                loader::load(LoadRequest { program, target, config: parsed, config_json, name, pin, xdp_mode })?;
            if !loaded.swept.is_empty() {
                eprintln!(
                    "meshwork ebpf: removed the pins of stale instances (their loaders are gone): {}",
                    loaded.swept.join(", ")
                );
            }
            let i = &loaded.instance;
            let mut stdout = std::io::stdout();
            match output {
                Output::Json => writeln!(
                    stdout,
                    "{}",
                    serde_json::json!({"event": "attached", "instance": i.name, "program": i.program, "target": i.target,
                        "mode": i.mode, "pinned": i.pinned, "program_ids": i.program_ids, "pid": i.pid})
                )?,
                Output::Text => writeln!(
                    stdout,
                    "meshwork ebpf: {} attached to {} ({} mode) as instance {}; {}",
                    i.program,
                    i.target,
                    i.mode,
                    i.name,
                    if pin { "pinned: `meshwork ebpf unload` detaches it" } else { "Ctrl-C or SIGTERM detaches it" }
                )?,
            }
            stdout.flush()?;
            if pin {
                // The links are pinned; dropping the loader's handles keeps them attached.
                drop(loaded);
                return Ok(ExitCode::SUCCESS);
            }
            let signal = loader::wait_for_signal();
            let name = loaded.instance.name.clone();
            loaded.release()?;
            match output {
                Output::Json => writeln!(
                    stdout,
                    "{}",
                    serde_json::json!({"event": "detached", "instance": name, "signal": signal})
                )?,
                Output::Text => writeln!(stdout, "meshwork ebpf: {name} detached (signal {signal})")?,
            }
            Ok(ExitCode::SUCCESS)
        }
        EbpfCommand::List { output } => {
            let all = Instance::all()?;
            let orphans = instance::orphans();
            match output {
                Output::Json => {
                    let mut rows: Vec<_> = all
                        .iter()
                        .map(|i| {
                            let mut v = serde_json::to_value(i).expect("serialisable");
                            v["live"] = i.is_live().into();
                            v["state"] = i.state().into();
                            v
                        })
                        .collect();
                    rows.extend(orphans.iter().map(|o| {
                        serde_json::json!({"name": o.name, "orphan": true, "pinned": o.links_pinned,
                            "live": o.links_pinned, "state": o.state()})
                    }));
                    println!("{}", serde_json::to_string_pretty(&rows)?);
                }
                Output::Text => {
                    if all.is_empty() && orphans.is_empty() {
                        println!("no meshwork eBPF programs loaded");
                    }
                    for i in &all {
                        println!(
                            "{:<20} {:<16} {:<32} {:<7} ids {:?}  {}",
                            i.name,
                            i.program.name(),
                            i.target.to_string(),
                            i.mode,
                            i.program_ids,
                            i.state()
                        );
                    }
                    for o in &orphans {
                        println!("{:<20} {:<16} {:<32} {:<7} {}", o.name, "?", "?", "?", o.state());
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        EbpfCommand::Stats { instance, output } => {
            let stats = stats::read(&instance, None)?;
            match output {
                StatsOutput::Json => println!("{}", serde_json::to_string_pretty(&stats)?),
                StatsOutput::Text => print!("{}", stats.text()),
                StatsOutput::Prometheus => print!("{}", stats.prometheus()),
            }
            Ok(ExitCode::SUCCESS)
        }
        EbpfCommand::Unload { instance, all, stale, output } => {
            if stale {
                preflight::check_capabilities("meshwork ebpf unload")?;
                let cleaned = instance::sweep_stale();
                match output {
                    Output::Json => println!("{}", serde_json::json!({ "stale_removed": cleaned })),
                    Output::Text if cleaned.is_empty() => println!("meshwork ebpf: nothing stale"),
                    Output::Text => {
                        for name in cleaned {
                            println!("meshwork ebpf: {name} was stale; its pins and record are removed");
                        }
                    }
                }
                return Ok(ExitCode::SUCCESS);
            }
            let names: Vec<String> = if all {
                let mut names: Vec<String> = Instance::all()?.into_iter().map(|i| i.name).collect();
                names.extend(instance::pinned_names());
                names.sort();
                names.dedup();
                names
            } else {
                instance.into_iter().collect()
            };
            let mut reports = Vec::new();
            for name in names {
                let report = loader::unload(&name)?;
                if output == Output::Text {
                    println!(
                        "meshwork ebpf: {name} unloaded{}",
                        report.stopped_pid.map(|p| format!(" (stopped its loader, pid {p})")).unwrap_or_default()
                    );
                }
                reports.push(report);
            }
            if output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&reports)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        EbpfCommand::Manifest { program, iface, cgroup, config, image, namespace, name, output } => {
            let target = match (iface, cgroup) {
                (Some(i), None) => Target::Interface(i),
                (None, Some(c)) => Target::Cgroup(c),
                _ => Target::from_args(program, None, Some("/sys/fs/cgroup".into()))?,
            };
            let target = match (program.target_kind(), target) {
                (crate::program::TargetKind::Interface, Target::Cgroup(_)) => {
                    anyhow::bail!("{program} attaches to a network interface: give --iface IF")
                }
                (_, t) => t,
            };
            let ds = manifest::daemonset(&ManifestOptions {
                program,
                target,
                config,
                name: name.unwrap_or_else(|| format!("meshwork-{}", program.name())),
                namespace,
                image,
            })?;
            match output {
                ManifestOutput::Yaml => print!("{}", serde_saphyr::to_string(&ds)?),
                ManifestOutput::Json => println!("{}", serde_json::to_string_pretty(&ds)?),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
