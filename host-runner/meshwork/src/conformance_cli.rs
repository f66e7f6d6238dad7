//! `meshwork conformance`: run the suites against a target, write the reports users already
//! read (GAMMA ConformanceReport, JUnit, Meshery's SMI result, a summary), sign the results as
//! an in-toto attestation, verify and reproduce one, and compare targets in a matrix.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use meshwork_conformance::adapters::envoy::{Envoy, Runner};
use meshwork_conformance::adapters::haproxy::Haproxy;
use meshwork_conformance::adapters::meshwork::Meshwork;
use meshwork_conformance::adapters::nginx::Nginx;
use meshwork_conformance::adapters::{Adapter, Env};
use meshwork_conformance::outcome::{AssertionResult, Machine, RunRecord, SuiteName, Verdict};
use meshwork_conformance::{attest, report, runner, suites};

use crate::OutputFormat;

#[derive(Args)]
pub struct ConformanceArgs {
    #[command(subcommand)]
    command: ConformanceCommand,
}

#[derive(Subcommand)]
enum ConformanceCommand {
    /// Run suites against one target; write reports (and a signed attestation with --sign-key).
    Run(RunArgs),
    /// List the assertions: id, spec, features, statistics.
    List {
        #[arg(long = "suite", value_enum)]
        suites: Vec<SuiteArg>,
        #[arg(long, value_enum, default_value = "text")]
        output: OutputFormat,
    },
    /// Create a signing key pair: KEY (PKCS#8 PEM, mode 0600) and KEY.pub.
    Keygen {
        #[arg(long, value_name = "KEY")]
        out: PathBuf,
        #[arg(long, value_enum, default_value = "ed25519")]
        algorithm: AlgorithmArg,
    },
    /// Check an attestation's signature and that its subjects' digests match the files at hand.
    Verify {
        attestation: PathBuf,
        #[arg(long, value_name = "KEY.pub")]
        key: PathBuf,
    },
    /// Re-run exactly what an attestation records and compare every verdict.
    Reproduce {
        attestation: PathBuf,
        #[arg(long, value_name = "KEY.pub")]
        key: PathBuf,
        #[arg(long, default_value = "conformance-reproduce")]
        report_dir: PathBuf,
    },
    /// Run the suites on every available target; write an assertion × target table.
    Matrix {
        #[arg(long = "target", value_enum)]
        targets: Vec<TargetArg>,
        #[arg(long = "suite", value_enum)]
        suites: Vec<SuiteArg>,
        #[arg(long, default_value = "conformance-matrix")]
        out: PathBuf,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Args, Clone)]
struct Common {
    /// Where the filter modules are (default: $MESHWORK_FILTERS, else target/filters beside
    /// this binary).
    #[arg(long)]
    filters: Option<PathBuf>,
    /// Tests at once (each on its own ports).
    #[arg(long, default_value_t = 4)]
    parallel: usize,
}

#[derive(Args, Clone)]
struct RunArgs {
    #[arg(long = "suite", value_enum)]
    suites: Vec<SuiteArg>,
    #[arg(long, value_enum, default_value = "meshwork")]
    target: TargetArg,
    /// Only assertions whose id contains this.
    #[arg(long)]
    filter: Option<String>,
    /// Run each assertion N times; any failing run fails it (and marks it flaky if others passed).
    #[arg(long, default_value_t = 1)]
    repeat: u32,
    /// Run the known-bad configurations instead: every check must reject its own.
    #[arg(long)]
    negative: bool,
    #[arg(long, default_value = "conformance-report")]
    report_dir: PathBuf,
    /// Sign the results with this private key (see `keygen`): attestation.dsse.json.
    #[arg(long, value_name = "KEY")]
    sign_key: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "text")]
    output: OutputFormat,
    #[command(flatten)]
    common: Common,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SuiteArg {
    Smi,
    Gamma,
    Patterns,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
enum TargetArg {
    Meshwork,
    EnvoyConfig,
    Envoy,
    Nginx,
    Haproxy,
    Kubernetes,
}

#[derive(Clone, Copy, ValueEnum)]
enum AlgorithmArg {
    Ed25519,
    P256,
}

fn suites_of(args: &[SuiteArg]) -> Vec<SuiteName> {
    args.iter()
        .map(|s| match s {
            SuiteArg::Smi => SuiteName::Smi,
            SuiteArg::Gamma => SuiteName::Gamma,
            SuiteArg::Patterns => SuiteName::Patterns,
        })
        .collect()
}

fn adapter(target: TargetArg, meshwork: &Path) -> anyhow::Result<Arc<dyn Adapter>> {
    Ok(match target {
        TargetArg::Meshwork => Arc::new(Meshwork { binary: meshwork.to_path_buf() }),
        TargetArg::EnvoyConfig => Arc::new(Envoy { runner: Runner::Meshwork }),
        TargetArg::Envoy => Arc::new(Envoy { runner: Runner::Envoy }),
        TargetArg::Nginx => Arc::new(Nginx),
        TargetArg::Haproxy => Arc::new(Haproxy),
        TargetArg::Kubernetes => bail!(
            "the kubernetes target needs a cluster with the mesh's CRDs; none can run on this machine, so it is not built (see docs/conformance.md)"
        ),
    })
}

fn default_filters(given: Option<PathBuf>) -> PathBuf {
    given
        .or_else(|| std::env::var_os("MESHWORK_FILTERS").map(PathBuf::from))
        .or_else(|| {
            let exe = std::env::current_exe().ok()?;
            Some(exe.parent()?.parent()?.join("filters"))
        })
        .unwrap_or_else(|| PathBuf::from("target/filters"))
}

fn machine() -> Machine {
    let read = |p: &str| std::fs::read_to_string(p).map(|s| s.trim().to_owned()).unwrap_or_default();
    let os = read("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_owned()))
        .unwrap_or_else(|| std::env::consts::OS.to_owned());
    Machine {
        os,
        kernel: read("/proc/sys/kernel/osrelease"),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        hostname: read("/proc/sys/kernel/hostname"),
    }
}

pub fn run(args: ConformanceArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        ConformanceCommand::Run(run) => {
            let arguments = std::env::args().skip(3).collect();
            let record = execute(&run, arguments, true)?;
            let failed = write_reports(&record, &run.report_dir, run.sign_key.as_deref(), run.output)?;
            Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
        }
        ConformanceCommand::List { suites, output } => {
            for t in suites::select(&suites_of(&suites), None) {
                match output {
                    OutputFormat::Json => println!(
                        "{}",
                        serde_json::json!({
                            "id": t.id, "suite": t.suite, "test": t.test, "spec": t.spec, "level": t.level,
                            "features": t.features, "needs": t.needs, "known_bad": t.known_bad.is_some(),
                            "statistics": t.statistics,
                        })
                    ),
                    OutputFormat::Text => println!(
                        "{:<62} {}{}",
                        t.id,
                        t.spec,
                        t.statistics.map(|s| format!(" [{s}]")).unwrap_or_default()
                    ),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        ConformanceCommand::Keygen { out, algorithm } => {
            let alg = match algorithm {
                AlgorithmArg::Ed25519 => attest::Algorithm::Ed25519,
                AlgorithmArg::P256 => attest::Algorithm::EcdsaP256,
            };
            let (private, public) = attest::generate_key(alg)?;
            write_private(&out, &private)?;
            let public_path = PathBuf::from(format!("{}.pub", out.display()));
            std::fs::write(&public_path, public).with_context(|| format!("writing {}", public_path.display()))?;
            println!("wrote {} and {}", out.display(), public_path.display());
            Ok(ExitCode::SUCCESS)
        }
        ConformanceCommand::Verify { attestation, key } => {
            let verified = verify(&attestation, &key)?;
            let record = verified.record();
            let mismatches = attest::check_artifacts(record, attest::sha256_file);
            println!(
                "signature ok (key {}): {} on {}, {} assertions, suite {}",
                verified.keyid,
                record.target,
                record.machine.hostname,
                record.results.len(),
                record.suite_version
            );
            if mismatches.is_empty() {
                println!("all {} subjects match the files at hand", record.artifacts.len());
                return Ok(ExitCode::SUCCESS);
            }
            for m in &mismatches {
                match &m.found {
                    None => eprintln!("{} ({}): missing", m.name, m.path.display()),
                    Some(found) => {
                        eprintln!(
                            "{} ({}): sha256 {found}, the attestation says {}",
                            m.name,
                            m.path.display(),
                            m.expected
                        )
                    }
                }
            }
            bail!("{} of {} subjects differ from the files at hand", mismatches.len(), record.artifacts.len())
        }
        ConformanceCommand::Reproduce { attestation, key, report_dir } => {
            let verified = verify(&attestation, &key)?;
            let recorded = verified.record().clone();
            let mismatches = attest::check_artifacts(&recorded, attest::sha256_file);
            if !mismatches.is_empty() {
                bail!(
                    "the artifacts differ from the attested ones ({}); reproducing would test something else",
                    mismatches.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", ")
                );
            }
            let mut argv = vec!["meshwork".to_owned(), "conformance".into(), "run".into()];
            argv.extend(recorded.arguments.iter().cloned());
            let parsed = match <ReproduceCli as clap::Parser>::try_parse_from(&argv) {
                Ok(p) => p,
                Err(e) => bail!("the attestation's arguments do not parse: {e}"),
            };
            let ReproduceCommand::Conformance(ConformanceArgs { command: ConformanceCommand::Run(mut run) }) =
                parsed.command
            else {
                bail!("the attestation does not record a `conformance run`");
            };
            run.report_dir = report_dir;
            run.sign_key = None;
            let again = execute(&run, recorded.arguments.clone(), true)?;
            write_reports(&again, &run.report_dir, None, OutputFormat::Text)?;
            let mut differ = 0;
            for before in &recorded.results {
                let now = again.results.iter().find(|r| r.id == before.id);
                let (was, is) = (before.verdict.word(), now.map_or("missing", |r| r.verdict.word()));
                if was != is {
                    differ += 1;
                    println!("DIFFERS {}: attested {was}, now {is}", before.id);
                }
            }
            if differ > 0 {
                bail!("{differ} of {} verdicts differ from the attestation", recorded.results.len());
            }
            println!("reproduced: all {} verdicts match the attestation", recorded.results.len());
            Ok(ExitCode::SUCCESS)
        }
        ConformanceCommand::Matrix { targets, suites, out, common } => {
            let targets = if targets.is_empty() {
                vec![
                    TargetArg::Meshwork,
                    TargetArg::EnvoyConfig,
                    TargetArg::Envoy,
                    TargetArg::Nginx,
                    TargetArg::Haproxy,
                ]
            } else {
                targets
            };
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            let mut records = Vec::new();
            let meshwork = std::env::current_exe()?;
            for target in targets {
                let adapter = adapter(target, &meshwork)?;
                if let Some(why) = adapter.unavailable() {
                    println!("{}: skipped ({why})", adapter.name());
                    continue;
                }
                let run = RunArgs {
                    suites: suites.clone(),
                    target,
                    filter: None,
                    repeat: 1,
                    negative: false,
                    report_dir: out.join(adapter.name()),
                    sign_key: None,
                    output: OutputFormat::Text,
                    common: common.clone(),
                };
                let record = execute(&run, Vec::new(), false)?;
                write_reports(&record, &run.report_dir, None, OutputFormat::Json)?;
                let count = |word: &str| record.results.iter().filter(|r| r.verdict.word() == word).count();
                println!(
                    "{}: {} pass, {} fail, {} unsupported, {} skipped (reports in {})",
                    record.target,
                    count("pass"),
                    count("fail"),
                    count("unsupported"),
                    count("skipped"),
                    run.report_dir.display()
                );
                records.push(record);
            }
            std::fs::write(out.join("matrix.md"), report::matrix_markdown(&records))?;
            std::fs::write(out.join("matrix.json"), report::matrix_json(&records))?;
            std::fs::write(out.join("matrix.html"), report::matrix_html(&records))?;
            let divergences = report::divergences(&records);
            println!("\n{}", report::matrix_markdown(&records));
            println!(
                "{} divergence(s); wrote {}/matrix.md, matrix.json, matrix.html",
                divergences.len(),
                out.display()
            );
            let failed = records.iter().flat_map(|r| &r.results).any(|r| matches!(r.verdict, Verdict::Fail(_)));
            Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
        }
    }
}

/// Lets `reproduce` parse the recorded arguments with the same definitions.
#[derive(clap::Parser)]
struct ReproduceCli {
    #[command(subcommand)]
    command: ReproduceCommand,
}

#[derive(Subcommand)]
enum ReproduceCommand {
    Conformance(ConformanceArgs),
}

fn verify(attestation: &Path, key: &Path) -> anyhow::Result<attest::Verified> {
    let envelope =
        std::fs::read_to_string(attestation).with_context(|| format!("reading {}", attestation.display()))?;
    let public = std::fs::read_to_string(key).with_context(|| format!("reading {}", key.display()))?;
    attest::verify(&envelope, &public).with_context(|| format!("{} does not verify", attestation.display()))
}

fn write_private(path: &Path, pem: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(pem.as_bytes())?;
    Ok(())
}

/// Runs the tests `run` selects, printing each result as it finishes.
fn execute(run: &RunArgs, arguments: Vec<String>, progress: bool) -> anyhow::Result<RunRecord> {
    let meshwork = std::env::current_exe().context("finding this binary")?;
    let adapter = adapter(run.target, &meshwork)?;
    if let Some(why) = adapter.unavailable() {
        bail!("target {}: {why}", adapter.name());
    }
    let tests = suites::select(&suites_of(&run.suites), run.filter.as_deref());
    if tests.is_empty() {
        bail!("no assertion matches (see `meshwork conformance list`)");
    }
    let workdir = std::env::temp_dir().join(format!("meshwork-conformance-{}", std::process::id()));
    let options = runner::Options {
        meshwork: meshwork.clone(),
        filters: default_filters(run.common.filters.clone()),
        repeat: run.repeat,
        parallel: run.common.parallel,
        negative: run.negative,
        workdir: workdir.clone(),
    };
    let env = Env {
        listen: runner::free_port(),
        backends: Default::default(),
        dir: workdir.clone(),
        meshwork: meshwork.clone(),
        filters: options.filters.clone(),
        admin: runner::free_port(),
    };
    let started = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let total = tests.len();
    let output = run.output;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let mut done = 0;
    let results = runtime.block_on(runner::run(tests, adapter.clone(), &options, |r: &AssertionResult| {
        done += 1;
        if progress {
            print_result(r, done, total, output);
        }
    }));
    let _ = std::fs::remove_dir_all(&workdir);
    Ok(RunRecord {
        suite_version: env!("CARGO_PKG_VERSION").to_owned(),
        target: adapter.name().to_owned(),
        implementation: adapter.implementation(),
        artifacts: adapter.artifacts(&env),
        arguments,
        started,
        finished: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        machine: machine(),
        results,
    })
}

fn print_result(r: &AssertionResult, done: usize, total: usize, output: OutputFormat) {
    match output {
        OutputFormat::Json => println!("{}", serde_json::to_string(r).unwrap_or_default()),
        OutputFormat::Text => {
            let reason = match &r.verdict {
                Verdict::Pass => String::new(),
                Verdict::Fail(why) | Verdict::Unsupported(why) | Verdict::Skipped(why) => format!(": {why}"),
            };
            println!(
                "[{done:>3}/{total}] {:<11} {:<62} {:>6} ms{reason}",
                r.verdict.word().to_uppercase(),
                r.id,
                r.millis
            );
        }
    }
}

/// Writes every report of `record` into `dir`; true when an assertion failed.
fn write_reports(
    record: &RunRecord,
    dir: &Path,
    sign_key: Option<&Path>,
    output: OutputFormat,
) -> anyhow::Result<bool> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let write = |name: &str, text: String| -> anyhow::Result<PathBuf> {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    };
    write("results.json", serde_json::to_string_pretty(record)?)?;
    write("gamma-conformance-report.yaml", report::gamma_report(record))?;
    write("junit.xml", report::junit_report(record))?;
    write("meshery-smi.json", report::meshery_report(record))?;
    let summary = report::summary_report(record);
    write("summary.txt", summary.clone())?;
    let attestation = match sign_key {
        Some(key) => {
            let private = std::fs::read_to_string(key).with_context(|| format!("reading {}", key.display()))?;
            Some(write("attestation.dsse.json", attest::sign(record, &private)?)?)
        }
        None => None,
    };
    if let OutputFormat::Text = output {
        println!("\n{summary}");
        println!("reports in {}", dir.display());
        if let Some(a) = attestation {
            println!(
                "attestation: {}\nverify with: meshwork conformance verify {} --key {}.pub",
                a.display(),
                a.display(),
                sign_key.map(|k| k.display().to_string()).unwrap_or_default()
            );
        }
    }
    Ok(record.results.iter().any(|r| matches!(r.verdict, Verdict::Fail(_))))
}
