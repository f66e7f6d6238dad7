//! `meshwork load` and `meshwork bench` (issue 4). Work in progress.

use std::process::ExitCode;

/// `meshwork load URL ...`
#[derive(clap::Args, Debug)]
pub struct LoadArgs {
    /// The URL to load.
    pub url: Option<String>,
}

/// `meshwork bench --profile FILE`
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// An SMP performance profile (YAML).
    #[arg(long)]
    pub profile: Option<std::path::PathBuf>,
}

pub fn run_load(_args: LoadArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("meshwork load is not implemented yet")
}

pub fn run_bench(_args: BenchArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("meshwork bench is not implemented yet")
}
