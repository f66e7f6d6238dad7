//! Harness for end-to-end tests: starts real `meshwork` processes on loopback (port 0, reading
//! the chosen address from their first line of output), and talks HTTP to them over sockets.
//!
//! Needs the release binary and the filter modules: `make build filters test-filters` (which
//! `make test` runs first). Set MESHWORK_BIN to test another binary.

pub mod grpc;
pub mod registry;
pub mod static_files;
pub mod tls;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

pub fn meshwork_bin() -> PathBuf {
    let bin =
        std::env::var_os("MESHWORK_BIN").map(PathBuf::from).unwrap_or_else(|| root().join("target/release/meshwork"));
    assert!(
        bin.exists(),
        "{} is missing: run `make build` (or `make test`, which builds everything first)",
        bin.display()
    );
    bin
}

/// A filter module built by `make filters` (product) or `make test-filters` (test filters).
pub fn wasm(name: &str) -> PathBuf {
    for dir in ["target/filters", "target/test-filters"] {
        let p = root().join(dir).join(format!("{name}.wasm"));
        if p.exists() {
            return p;
        }
    }
    panic!("filter module {name}.wasm is missing: run `make filters test-filters` (or `make test`)");
}

/// A fresh directory under target/e2e for one test's files.
pub fn scratch(label: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir =
        root().join("target/e2e").join(format!("{label}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst)));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Compiled modules are cached here across test processes.
pub fn module_cache() -> PathBuf {
    root().join("target/e2e-module-cache")
}

/// A child process, killed when dropped; its stderr is collected for diagnostics.
pub struct Process {
    child: Child,
    stderr: Arc<Mutex<String>>,
    stdout: Arc<Mutex<String>>,
    pub first_line: String,
}

impl Process {
    /// Starts `meshwork args…` and waits (up to 60 s) for its first line on stdout.
    pub fn start(args: &[&str]) -> Result<Process, String> {
        let mut command = Command::new(meshwork_bin());
        command.args(args);
        Process::spawn(command, args)
    }

    /// Starts `meshwork args…` in the network namespace `netns` (`ip netns exec`, which execs
    /// meshwork in place, so killing the child kills meshwork).
    pub fn start_in(netns: &str, args: &[&str]) -> Result<Process, String> {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", netns]).arg(meshwork_bin()).args(args);
        Process::spawn(command, args)
    }

    fn spawn(mut command: Command, args: &[&str]) -> Result<Process, String> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start meshwork: {e}"))?;
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().expect("stderr");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        let rest = Arc::new(Mutex::new(String::new()));
        let sink = rest.clone();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next();
            let _ = tx.send(first);
            for line in lines.map_while(Result::ok) {
                let mut rest = sink.lock().unwrap();
                rest.push_str(&line);
                rest.push('\n');
            }
        });
        let first = rx.recv_timeout(Duration::from_secs(60));
        match first {
            Ok(Some(Ok(line))) => Ok(Process { child, stderr, stdout: rest, first_line: line }),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(100));
                Err(format!("meshwork {args:?} did not start:\n{}", stderr.lock().unwrap()))
            }
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Whether `text` shows up in its stderr within 5 s: a line logged as a response is sent
    /// can reach the reader thread after the test has the response.
    pub fn logged(&self, text: &str) -> bool {
        eventually(Duration::from_secs(5), || self.stderr().contains(text).then_some(())).is_some()
    }

    /// What it printed on stdout after its first line.
    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True while the process runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find_addr(line: &str, after: &str) -> Option<SocketAddr> {
    let start = line.find(after)? + after.len();
    let rest = &line[start..];
    let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':')).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// The sample upstream.
pub struct Upstream {
    pub process: Process,
    pub addr: SocketAddr,
}

pub fn upstream(name: &str) -> Upstream {
    let process = Process::start(&["upstream", "--listen", "127.0.0.1:0", "--name", name]).expect("upstream starts");
    let addr = find_addr(&process.first_line, "http://").expect("upstream address");
    Upstream { process, addr }
}

impl Upstream {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The upstream's request counters.
    pub fn stats(&self) -> serde_json::Value {
        let r = get(&self.url("/stats"), &[]);
        serde_json::from_slice(&r.body).expect("stats json")
    }

    pub fn requests(&self) -> u64 {
        self.stats()["requests_total"].as_u64().unwrap_or(0)
    }
}

/// A running proxy.
pub struct Proxy {
    pub process: Process,
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub dir: PathBuf,
}

/// Starts `meshwork run --config` with `yaml` (listen and admin on port 0 are filled in when
/// absent, and the shared module cache is used).
pub fn try_proxy(yaml: &str) -> Result<Proxy, String> {
    let dir = scratch("proxy");
    let path = dir.join("proxy.yaml");
    std::fs::write(&path, complete_config(yaml)).expect("write config");
    let process = Process::start(&["run", "--config", path.to_str().unwrap()])?;
    Ok(Proxy {
        addr: find_addr(&process.first_line, "listening on http://").expect("proxy address"),
        admin: find_addr(&process.first_line, "admin on http://"),
        process,
        dir,
    })
}

/// `yaml` with listen and admin on port 0 and the shared module cache, unless it sets them.
fn complete_config(yaml: &str) -> String {
    let mut yaml = yaml.to_owned();
    if !yaml.contains("listen:") {
        yaml = format!("listen: 127.0.0.1:0\n{yaml}");
    }
    if !yaml.contains("admin:") {
        yaml = format!("admin: 127.0.0.1:0\n{yaml}");
    }
    if !yaml.contains("cache_dir:") {
        yaml = format!("cache_dir: {}\n{yaml}", module_cache().display());
    }
    yaml
}

/// A proxy with several listeners, by name (from its first line: `scheme://addr (name)`).
pub struct Listeners {
    pub process: Process,
    pub addrs: std::collections::BTreeMap<String, SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub dir: PathBuf,
}

impl Listeners {
    pub fn addr(&self, name: &str) -> SocketAddr {
        *self.addrs.get(name).unwrap_or_else(|| panic!("no listener {name:?} in {:?}", self.addrs))
    }

    pub fn url(&self, name: &str, path: &str) -> String {
        format!("http://{}{path}", self.addr(name))
    }
}

/// Starts `meshwork run --config` with `yaml` exactly as given (plus the module cache) and
/// reads where each listener is.
pub fn try_listeners(yaml: &str, args: &[&str]) -> Result<Listeners, String> {
    let dir = scratch("listeners");
    let path = dir.join("proxy.yaml");
    let yaml = if yaml.contains("cache_dir:") {
        yaml.to_owned()
    } else {
        format!("cache_dir: {}\n{yaml}", module_cache().display())
    };
    std::fs::write(&path, yaml).expect("write config");
    let mut all = vec!["run", "--config", path.to_str().unwrap()];
    all.extend_from_slice(args);
    let process = Process::start(&all)?;
    let mut addrs = std::collections::BTreeMap::new();
    let line = process.first_line.clone();
    for part in line.split("://").skip(1) {
        let addr: String = part.chars().take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':').collect();
        let name = part.split_once(" (").and_then(|(_, rest)| rest.split_once(')')).map(|(n, _)| n.to_owned());
        if let (Ok(addr), Some(name)) = (addr.parse(), name) {
            addrs.insert(name, addr);
        }
    }
    Ok(Listeners { admin: find_addr(&line, "admin on http://"), process, addrs, dir })
}

pub fn listeners(yaml: &str) -> Listeners {
    try_listeners(yaml, &[]).unwrap_or_else(|e| panic!("{e}"))
}

pub fn proxy(yaml: &str) -> Proxy {
    try_proxy(yaml).unwrap_or_else(|e| panic!("{e}"))
}

impl Proxy {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin.expect("admin listener"))
    }

    /// Replaces the configuration file the proxy was started with (completed as at start).
    pub fn rewrite_config(&self, yaml: &str) {
        std::fs::write(self.dir.join("proxy.yaml"), complete_config(yaml)).expect("write config");
    }

    /// `POST /reload` on the admin listener.
    pub fn reload(&self) -> Reply {
        post(&self.admin_url("/reload"), &[], b"")
    }

    /// `/stats?format=json` as (name, tags, value-or-histogram) entries.
    pub fn stats(&self) -> Vec<serde_json::Value> {
        let r = get(&self.admin_url("/stats?format=json"), &[]);
        let v: serde_json::Value = serde_json::from_slice(&r.body).expect("stats json");
        v["stats"].as_array().cloned().unwrap_or_default()
    }

    /// The value of the counter or gauge `name` whose tags include all of `tags`.
    pub fn stat(&self, name: &str, tags: &[(&str, &str)]) -> Option<i64> {
        self.stats()
            .into_iter()
            .find(|s| s["name"] == name && tags.iter().all(|(k, v)| s["tags"][*k] == *v))
            .and_then(|s| s["value"].as_i64())
    }

    /// The sum of every counter `name` whose tags include all of `tags`.
    pub fn stat_sum(&self, name: &str, tags: &[(&str, &str)]) -> i64 {
        self.stats()
            .into_iter()
            .filter(|s| s["name"] == name && tags.iter().all(|(k, v)| s["tags"][*k] == *v))
            .filter_map(|s| s["value"].as_i64())
            .sum()
    }

    pub fn histogram(&self, name: &str, tags: &[(&str, &str)]) -> Option<serde_json::Value> {
        self.stats().into_iter().find(|s| s["name"] == name && tags.iter().all(|(k, v)| s["tags"][*k] == *v))
    }
}

/// What came back.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    pub trailers: Option<http::HeaderMap>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// A header the sample upstream received (it echoes request headers as JSON).
    pub fn echoed(&self, name: &str) -> Option<String> {
        self.json()["headers"][name].as_str().map(str::to_owned)
    }
}

/// One HTTP/1.1 request on a fresh connection (or h2c with prior knowledge when `h2`).
pub async fn send(method: &str, url: &str, headers: &[(&str, &str)], body: Bytes, h2: bool) -> Result<Reply, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("{e}"))?;
    let authority = uri.authority().ok_or("no authority")?.clone();
    let stream = tokio::net::TcpStream::connect(authority.as_str()).await.map_err(|e| format!("connect: {e}"))?;
    let io = TokioIo::new(stream);
    let mut builder = http::Request::builder().method(method).uri(if h2 {
        uri.to_string()
    } else {
        uri.path_and_query().map_or("/".into(), |p| p.to_string())
    });
    if !h2 && !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        builder = builder.header("host", authority.as_str());
    }
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let request = builder.body(Full::new(body)).map_err(|e| format!("{e}"))?;
    let response = if h2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .map_err(|e| format!("h2 handshake: {e}"))?;
        tokio::spawn(conn);
        sender.send_request(request).await.map_err(|e| format!("request: {e}"))?
    } else {
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(io).await.map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        sender.send_request(request).await.map_err(|e| format!("request: {e}"))?
    };
    let (parts, body) = response.into_parts();
    let collected = body.collect().await.map_err(|e| format!("body: {e}"))?;
    let trailers = collected.trailers().cloned();
    Ok(Reply { status: parts.status.as_u16(), headers: parts.headers, body: collected.to_bytes(), trailers })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

pub fn try_request(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<Reply, String> {
    runtime().block_on(async {
        tokio::time::timeout(Duration::from_secs(30), send(method, url, headers, Bytes::copy_from_slice(body), false))
            .await
            .map_err(|_| "timed out after 30s".to_string())?
    })
}

pub fn get(url: &str, headers: &[(&str, &str)]) -> Reply {
    try_request("GET", url, headers, b"").unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

pub fn post(url: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    try_request("POST", url, headers, body).unwrap_or_else(|e| panic!("POST {url}: {e}"))
}

pub fn get_h2(url: &str, headers: &[(&str, &str)]) -> Reply {
    runtime()
        .block_on(async {
            tokio::time::timeout(Duration::from_secs(30), send("GET", url, headers, Bytes::new(), true))
                .await
                .map_err(|_| "timed out after 30s".to_string())?
        })
        .unwrap_or_else(|e| panic!("h2 GET {url}: {e}"))
}

/// Sends `n` requests with up to `concurrency` in flight, each on its own connection (so the
/// kernel spreads them over the proxy's workers). Returns every outcome in order.
pub fn storm(n: usize, concurrency: usize, url: &str, headers: &[(&str, &str)]) -> Vec<Result<Reply, String>> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async {
        let semaphore = Arc::new(tokio::sync::Semaphore::new(concurrency));
        let mut tasks = Vec::with_capacity(n);
        for _ in 0..n {
            let permit = semaphore.clone().acquire_owned().await.expect("semaphore");
            let url = url.to_owned();
            let headers: Vec<(String, String)> = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            tasks.push(tokio::spawn(async move {
                let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                let r = tokio::time::timeout(Duration::from_secs(30), send("GET", &url, &h, Bytes::new(), false))
                    .await
                    .unwrap_or_else(|_| Err("timed out after 30s".into()));
                drop(permit);
                r
            }));
        }
        let mut out = Vec::with_capacity(n);
        for t in tasks {
            out.push(t.await.unwrap_or_else(|e| Err(format!("task: {e}"))));
        }
        out
    })
}

/// Polls `check` until it returns Some or `timeout` passes.
pub fn eventually<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls an async `check` until it yields something, for up to `timeout`.
pub async fn eventually_async<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `meshwork args…` to completion: (exit code, stdout, stderr).
pub fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(meshwork_bin()).args(args).output().expect("run meshwork");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `meshwork args…` with `stdin` as its input and `env` added to its environment.
pub fn run_with(args: &[&str], stdin: &[u8], env: &[(&str, &str)]) -> (i32, String, String) {
    use std::io::Write;
    let mut child = Command::new(meshwork_bin())
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run meshwork");
    child.stdin.take().expect("stdin").write_all(stdin).expect("write stdin");
    let out = child.wait_with_output().expect("wait for meshwork");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Writes a WebAssembly text module as a binary `.wasm` file and returns its path.
pub fn wat_module(dir: &Path, name: &str, wat: &str) -> PathBuf {
    let bytes = wat::parse_str(wat).unwrap_or_else(|e| panic!("bad test module {name}: {e}"));
    let path = dir.join(format!("{name}.wasm"));
    std::fs::write(&path, bytes).expect("write module");
    path
}

/// A YAML cluster list entry pointing at `upstream`.
pub fn cluster(name: &str, upstream: &Upstream) -> String {
    format!("{{name: {name}, endpoints: [\"{}\"]}}", upstream.addr)
}

/// Starts the sample upstream on `addr`, e.g. to bring one back where a stopped one listened
/// (retrying for a few seconds while the port is still being released).
pub fn upstream_at(name: &str, addr: SocketAddr) -> Upstream {
    let listen = addr.to_string();
    let process =
        eventually(Duration::from_secs(10), || Process::start(&["upstream", "--listen", &listen, "--name", name]).ok())
            .unwrap_or_else(|| panic!("upstream {name} cannot listen on {listen}"));
    Upstream { process, addr }
}

// ----- global rate limiting: the rate-limit service and a private Redis ----------------------

/// A free port on 127.0.0.1 (bound, then released) for a server to take.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// An address on 127.0.0.1 where connections are refused: a service that is down. The port is
/// bound without listening, so nothing else can take it while this is held.
pub struct RefusingPort {
    _socket: tokio::net::TcpSocket,
    pub addr: SocketAddr,
}

pub fn refusing_port() -> RefusingPort {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind("127.0.0.1:0".parse().unwrap()).expect("bind");
    let addr = socket.local_addr().expect("addr");
    RefusingPort { _socket: socket, addr }
}

/// A running `meshwork ratelimit-service`.
pub struct RateLimitService {
    pub process: Process,
    pub addr: SocketAddr,
    pub dir: PathBuf,
}

/// Starts `meshwork ratelimit-service` with `limits` (envoyproxy/ratelimit YAML) as its limits
/// file, counting in memory or in the Redis at `redis_url`.
pub fn ratelimit_service(limits: &str, redis_url: Option<&str>) -> RateLimitService {
    let dir = scratch("ratelimit");
    let path = dir.join("limits.yaml");
    std::fs::write(&path, limits).expect("write limits");
    let mut args = vec!["ratelimit-service", "--listen", "127.0.0.1:0", "--config", path.to_str().unwrap()];
    if let Some(url) = redis_url {
        args.extend(["--redis", url]);
    }
    let process = Process::start(&args).unwrap_or_else(|e| panic!("{e}"));
    let addr = find_addr(&process.first_line, "listening on http://").expect("ratelimit-service address");
    RateLimitService { process, addr, dir }
}

impl RateLimitService {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// A private `redis-server` on a free loopback port, without persistence; killed when dropped.
pub struct RedisServer {
    child: Child,
    pub port: u16,
}

impl RedisServer {
    /// Starts one on a free port (Debian's `redis-server`; `make setup` installs it).
    pub fn start() -> RedisServer {
        for _ in 0..5 {
            if let Some(server) = RedisServer::try_start(free_port()) {
                return server;
            }
        }
        panic!("redis-server did not start on a free port")
    }

    /// Starts one on `port` (to bring one back where a stopped one listened), retrying while
    /// the port is still being released.
    pub fn start_on(port: u16) -> RedisServer {
        eventually(Duration::from_secs(10), || RedisServer::try_start(port))
            .unwrap_or_else(|| panic!("redis-server cannot listen on port {port}"))
    }

    fn try_start(port: u16) -> Option<RedisServer> {
        let dir = scratch("redis");
        let log = std::fs::File::create(dir.join("redis.log")).expect("redis log");
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run redis-server ({e}): install it with `make setup`"));
        let ready = eventually(Duration::from_secs(10), || {
            if !matches!(child.try_wait(), Ok(None)) {
                return Some(false);
            }
            redis_ping(port).then_some(true)
        });
        if ready == Some(true) {
            return Some(RedisServer { child, port });
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills it and waits until it is gone.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn redis_ping(port: u16) -> bool {
    use std::io::Write;
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut reply = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

/// Waits, if needed, until at least `margin` is left in the current fixed window of
/// `window_s` seconds (windows are aligned to the epoch), so a test's requests share one.
pub fn fresh_window(window_s: u64, margin: Duration) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock");
    let into_window = Duration::from_nanos((now.as_nanos() % (u128::from(window_s) * 1_000_000_000)) as u64);
    let left = Duration::from_secs(window_s) - into_window;
    if left < margin {
        std::thread::sleep(left + Duration::from_millis(50));
    }
}

// ----- raw HTTP/1.1 over sockets, for what a well-behaved client cannot send ---------------

/// Sends `bytes` on a fresh connection to `addr` and reads until the peer closes or `wait`
/// passes; returns what came back (possibly nothing).
pub fn raw_exchange(addr: SocketAddr, bytes: &[u8], wait: Duration) -> Vec<u8> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    let _ = s.write_all(bytes);
    read_until_closed(&mut s, wait)
}

/// Reads from `s` until EOF, an error, or `wait` has passed.
pub fn read_until_closed(s: &mut std::net::TcpStream, wait: Duration) -> Vec<u8> {
    let deadline = Instant::now() + wait;
    let mut out = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return out;
        }
        let _ = s.set_read_timeout(Some(left));
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// The status code of the first HTTP/1.x response in `bytes`.
pub fn status_of(bytes: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(bytes.get(..12)?).ok()?;
    text.strip_prefix("HTTP/1.")?.get(2..5)?.parse().ok()
}

/// True when the peer has closed `s` (EOF or reset) within `wait`.
pub fn closed_within(s: &mut std::net::TcpStream, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let _ = s.set_read_timeout(Some(left));
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return false;
            }
            Err(_) => return true,
        }
    }
}

/// (resident, peak resident) memory of a process in KiB, from /proc.
pub fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Resets a process's peak resident memory to its current one (`VmHWM` starts again).
pub fn reset_peak_rss(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

/// A TCP echo server on 127.0.0.1: every byte comes back (after `prefix`, once per
/// connection); the client's end of stream ends the echo. Runs until the test process ends.
pub fn tcp_echo(prefix: &'static str) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                use std::io::Write;
                let mut reader = stream.try_clone().expect("clone");
                let mut writer = stream;
                let mut first = true;
                let mut buf = [0u8; 16 << 10];
                loop {
                    match reader.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if first && !prefix.is_empty() {
                                let _ = writer.write_all(prefix.as_bytes());
                            }
                            first = false;
                            if writer.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = writer.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    addr
}

/// Reads from `s` until `want` bytes arrived, the peer closed, or `wait` passed.
pub fn read_exactly(s: &mut std::net::TcpStream, want: usize, wait: Duration) -> Vec<u8> {
    let deadline = Instant::now() + wait;
    let mut out = Vec::new();
    let mut buf = [0u8; 16 << 10];
    while out.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let _ = s.set_read_timeout(Some(left));
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    out
}
