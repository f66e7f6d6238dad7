pub fn run(_args: &crate::BenchArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("not yet")
}
