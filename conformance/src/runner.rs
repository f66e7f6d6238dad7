//! The runner: for each test, echo backends (`meshwork upstream`), the implementation under
//! test configured by an adapter, the test's check over real HTTP, then everything torn down.
//! Tests run in parallel on separate ports; results stream out as each assertion finishes.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::adapters::{Adapter, Env, Rendered};
use crate::intent::Intent;
use crate::outcome::{AssertionResult, Verdict};
use crate::probe::Probe;
use crate::suites::Test;

#[derive(Clone, Debug)]
pub struct Options {
    /// The `meshwork` binary: the echo backends, and the meshwork targets.
    pub meshwork: PathBuf,
    /// Where `<filter>.wasm` modules are.
    pub filters: PathBuf,
    /// Each test this many times; a test passes only if every run passes.
    pub repeat: u32,
    /// Tests at once.
    pub parallel: usize,
    /// Run each test's known-bad configuration instead, which the check must reject.
    pub negative: bool,
    /// Scratch space; a directory per test under it.
    pub workdir: PathBuf,
}

/// Runs `tests` against `adapter`, calling `each` as every result is known.
pub async fn run(
    tests: Vec<&'static Test>,
    adapter: Arc<dyn Adapter>,
    options: &Options,
    mut each: impl FnMut(&AssertionResult),
) -> Vec<AssertionResult> {
    let semaphore = Arc::new(tokio::sync::Semaphore::new(options.parallel.max(1)));
    let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel();
    for (index, test) in tests.iter().enumerate() {
        let (adapter, options, sender, semaphore) =
            (adapter.clone(), options.clone(), sender.clone(), semaphore.clone());
        let test: &'static Test = test;
        tokio::spawn(async move {
            let _permit = semaphore.acquire_owned().await;
            let target = adapter.name();
            // A check that panics is a failure of that assertion, never a lost result.
            let result = match tokio::spawn(async move { run_one(test, adapter.as_ref(), &options, index).await }).await
            {
                Ok(result) => result,
                Err(e) => AssertionResult {
                    verdict: Verdict::Fail(format!("the check panicked: {e}")),
                    ..blank(test, target)
                },
            };
            let _ = sender.send((index, result));
        });
    }
    drop(sender);
    let mut results: Vec<Option<AssertionResult>> = vec![None; tests.len()];
    while let Some((index, result)) = receiver.recv().await {
        each(&result);
        results[index] = Some(result);
    }
    results.into_iter().flatten().collect()
}

/// One test, `options.repeat` times.
async fn run_one(test: &'static Test, adapter: &dyn Adapter, options: &Options, index: usize) -> AssertionResult {
    let started = Instant::now();
    let mut result = blank(test, adapter.name());
    let intent = match (options.negative, test.known_bad) {
        (false, _) => (test.intent)(),
        (true, Some(bad)) => bad(),
        (true, None) => {
            result.verdict = Verdict::Skipped("no known-bad configuration".into());
            return result;
        }
    };
    if let Some(missing) = test.needs.iter().find(|need| !adapter_supports(adapter, need)) {
        result.verdict = Verdict::Unsupported(format!("{} does not implement {missing}", adapter.name()));
        return result;
    }
    let mut failures = Vec::new();
    for run in 0..options.repeat.max(1) {
        let dir = options.workdir.join(format!("{index:03}-{}-{run}", test.id.replace('/', "_")));
        // Ports are picked free and then bound by other processes, so another test may take
        // one in between: a start that fails is tried again on fresh ports.
        let mut outcome = attempt(test, &intent, adapter, options, &dir).await;
        for _ in 0..3 {
            if !matches!(outcome, Attempt::StartFailed(_)) {
                break;
            }
            let _ = std::fs::remove_dir_all(&dir);
            outcome = attempt(test, &intent, adapter, options, &dir).await;
        }
        let _ = std::fs::remove_dir_all(&dir);
        result.runs += 1;
        match outcome {
            Attempt::Checked(configuration, check) => {
                result.configuration = configuration;
                match check {
                    Ok(()) => result.passes += 1,
                    Err(reason) => failures.push(reason),
                }
            }
            Attempt::Unsupported(reason) => {
                result.verdict = Verdict::Unsupported(reason);
                result.millis = started.elapsed().as_millis() as u64;
                return result;
            }
            Attempt::Broken(reason) | Attempt::StartFailed(reason) => failures.push(reason),
        }
    }
    result.verdict = match (failures.first(), options.negative) {
        (None, false) => Verdict::Pass,
        (Some(reason), false) if result.passes > 0 => {
            Verdict::Fail(format!("flaky: passed {} of {} runs; {reason}", result.passes, result.runs))
        }
        (Some(reason), false) => Verdict::Fail(reason.clone()),
        // A negative case passes when the check rejected the known-bad configuration every time.
        (Some(_), true) if result.passes == 0 => Verdict::Pass,
        (_, true) => Verdict::Fail(format!(
            "the check accepted the known-bad configuration in {} of {} runs",
            result.passes, result.runs
        )),
    };
    if options.negative {
        // For a negative case a "pass" of the check is the failure; count what was caught.
        result.passes = result.runs - result.passes;
    }
    result.millis = started.elapsed().as_millis() as u64;
    result
}

/// A result with the test's facts and nothing run yet.
fn blank(test: &Test, target: &str) -> AssertionResult {
    AssertionResult {
        id: test.id.to_owned(),
        suite: test.suite,
        test: test.test.to_owned(),
        spec: test.spec.to_owned(),
        level: test.level,
        features: test.features.iter().map(|f| (*f).to_owned()).collect(),
        target: target.to_owned(),
        verdict: Verdict::Pass,
        runs: 0,
        passes: 0,
        millis: 0,
        configuration: String::new(),
    }
}

fn adapter_supports(adapter: &dyn Adapter, need: &str) -> bool {
    match need {
        // Pattern filters and cluster policies are meshwork's proxy-wasm filters.
        "proxy-wasm" => matches!(adapter.name(), "meshwork" | "envoy-config" | "envoy"),
        "metrics" => matches!(adapter.name(), "meshwork" | "envoy-config"),
        // Access control by client identity (SMI TrafficTarget sources) needs mutual TLS
        // identities in the mesh, which no target here issues.
        "mtls-identity" => false,
        _ => true,
    }
}

enum Attempt {
    /// The configuration used and what the check said.
    Checked(String, Result<(), String>),
    Unsupported(String),
    /// The test could not run: a failure.
    Broken(String),
    /// A backend or the implementation exited before listening (a port taken meanwhile, or a
    /// configuration it refuses): worth one more try on other ports.
    StartFailed(String),
}

async fn attempt(
    test: &Test,
    intent: &Intent,
    adapter: &dyn Adapter,
    options: &Options,
    dir: &std::path::Path,
) -> Attempt {
    if let Err(e) = std::fs::create_dir_all(dir) {
        return Attempt::Broken(format!("cannot create {}: {e}", dir.display()));
    }
    let mut backends = BTreeMap::new();
    let mut children = Vec::new();
    for name in &intent.backends {
        match start_backend(&options.meshwork, name, None).await {
            Ok((child, addr)) => {
                children.push(child);
                backends.insert(name.clone(), addr);
            }
            Err(e) => return Attempt::StartFailed(format!("backend {name}: {e}")),
        }
    }
    for name in &intent.absent {
        backends.insert(name.clone(), free_port());
    }
    if let Some(limits) = &intent.ratelimit_service {
        let file = dir.join("limits.yaml");
        if let Err(e) = std::fs::write(&file, limits) {
            return Attempt::Broken(format!("cannot write {}: {e}", file.display()));
        }
        let args = ["ratelimit-service", "--listen", "127.0.0.1:0", "--threads", "1", "--config"];
        let mut command = Command::new(&options.meshwork);
        command.args(args).arg(&file);
        match start_announcing(command).await {
            Ok((child, addr)) => {
                children.push(child);
                backends.insert("ratelimit".into(), addr);
            }
            Err(e) => return Attempt::StartFailed(format!("the rate-limit service: {e}")),
        }
    }
    let env = Env {
        listen: free_port(),
        backends: backends.clone(),
        dir: dir.to_path_buf(),
        meshwork: options.meshwork.clone(),
        filters: options.filters.clone(),
        admin: free_port(),
    };
    let rendered = match adapter.render(intent, &env) {
        Ok(r) => r,
        Err(unsupported) => return Attempt::Unsupported(unsupported.0),
    };
    let mut implementation = match start(&rendered, dir) {
        Ok(c) => c,
        Err(e) => return Attempt::Broken(e),
    };
    if let Err(e) = wait_listening(env.listen, std::slice::from_mut(&mut implementation)).await {
        let log = std::fs::read_to_string(dir.join("implementation.log")).unwrap_or_default();
        return Attempt::StartFailed(format!("{} did not start: {e}\n{}", adapter.name(), tail(&log)));
    }
    let probe = Probe::new(env.listen, backends, rendered.metrics_url.clone()).with_meshwork(&options.meshwork);
    let check = tokio::time::timeout(Duration::from_secs(60), (test.check)(probe))
        .await
        .unwrap_or_else(|_| Err("the check did not finish within 60 s".into()));
    stop(&mut implementation).await;
    for mut c in children {
        let _ = c.kill().await;
    }
    Attempt::Checked(rendered.configuration, check)
}

/// SIGTERM first, so a master process (nginx) takes its workers down with it; SIGKILL after 3 s.
async fn stop(child: &mut Child) {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped).
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        if tokio::time::timeout(Duration::from_secs(3), child.wait()).await.is_ok() {
            return;
        }
    }
    let _ = child.kill().await;
}

/// An echo backend: on a port the kernel picks (no race with other tests), or at `at`.
pub async fn start_backend(
    meshwork: &std::path::Path,
    name: &str,
    at: Option<SocketAddr>,
) -> Result<(Child, SocketAddr), String> {
    let listen = at.map_or_else(|| "127.0.0.1:0".to_owned(), |a| a.to_string());
    let mut command = Command::new(meshwork);
    command.args(["upstream", "--listen", &listen, "--name", name]);
    start_announcing(command).await
}

/// Starts a meshwork server whose first line of output says `… http://ADDR…` and reads ADDR.
async fn start_announcing(mut command: Command) -> Result<(Child, SocketAddr), String> {
    use tokio::io::AsyncBufReadExt;
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start it: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(stdout);
    let read = reader.read_line(&mut line);
    match tokio::time::timeout(Duration::from_secs(10), read).await {
        Ok(Ok(n)) if n > 0 => {}
        _ => return Err("did not say where it listens within 10 s".into()),
    }
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split([',', ' ', '\n']).next())
        .and_then(|a| a.trim().parse().ok())
        .ok_or_else(|| format!("unexpected first line {line:?}"))?;
    Ok((child, addr))
}

fn start(rendered: &Rendered, dir: &std::path::Path) -> Result<Child, String> {
    let (program, args) = rendered.command.split_first().ok_or("the adapter gave no command")?;
    let log = std::fs::File::create(dir.join("implementation.log")).map_err(|e| e.to_string())?;
    let err = log.try_clone().map_err(|e| e.to_string())?;
    Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdout(log)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {program}: {e}"))
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// A port nothing listens on now (the kernel's choice; released for the test to bind).
pub fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
}

/// Waits until `addr` accepts connections, or one of `children` exits, or 10 s pass.
async fn wait_listening(addr: SocketAddr, children: &mut [Child]) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let exited = |children: &mut [Child]| {
        children.iter_mut().find_map(|c| c.try_wait().ok().flatten()).map(|status| format!("exited with {status}"))
    };
    loop {
        if let Some(e) = exited(children) {
            return Err(e);
        }
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            // Someone listens; make sure it is ours (a process that lost the port to another
            // test exits at once).
            tokio::time::sleep(Duration::from_millis(30)).await;
            return exited(children).map_or(Ok(()), Err);
        }
        if Instant::now() > deadline {
            return Err(format!("nothing listens on {addr} after 10 s"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
