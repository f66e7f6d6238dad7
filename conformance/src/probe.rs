//! What a check has in hand: an HTTP client aimed at the implementation under test (redirects
//! are not followed: they are what some tests check), the echo backends' own counters, and the
//! implementation's metrics when it exports any.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use serde::Deserialize;

#[derive(Clone)]
pub struct Probe {
    pub listen: SocketAddr,
    backends: BTreeMap<String, SocketAddr>,
    metrics_url: Option<String>,
    client: reqwest::Client,
    meshwork: std::path::PathBuf,
    /// Backends a check started; they end with the probe.
    started: std::sync::Arc<std::sync::Mutex<Vec<tokio::process::Child>>>,
}

/// What `meshwork upstream` saw of a request (its echo body).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Echo {
    pub upstream: String,
    pub method: String,
    /// Path and query as they arrived.
    pub path: String,
    pub headers: BTreeMap<String, String>,
}

#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Set when an echo backend answered.
    pub echo: Option<Echo>,
}

impl Reply {
    /// The backend that answered, or "" when the implementation answered itself.
    pub fn backend(&self) -> &str {
        self.echo.as_ref().map_or("", |e| e.upstream.as_str())
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Every value of a response header, in order.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers.get_all(name).iter().filter_map(|v| v.to_str().ok().map(str::to_owned)).collect()
    }

    /// A header the echo backend received (names are lower-case).
    pub fn upstream_header(&self, name: &str) -> Option<&str> {
        self.echo.as_ref().and_then(|e| e.headers.get(name)).map(String::as_str)
    }
}

impl Probe {
    pub fn new(listen: SocketAddr, backends: BTreeMap<String, SocketAddr>, metrics_url: Option<String>) -> Probe {
        // reqwest needs a process-wide rustls provider even for plain HTTP; meshwork uses ring.
        #[allow(
            deprecated,
            reason = "ring is the provider meshwork uses everywhere; its lack of post-quantum key exchange does not matter for plain-HTTP probes"
        )]
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(16)
            .build()
            .expect("an HTTP client without TLS always builds");
        Probe { listen, backends, metrics_url, client, meshwork: "meshwork".into(), started: Default::default() }
    }

    /// The binary [`Probe::start_backend`] runs.
    pub fn with_meshwork(mut self, meshwork: &std::path::Path) -> Probe {
        self.meshwork = meshwork.to_path_buf();
        self
    }

    /// Starts an echo backend at the address of backend `name` (one the intent left absent):
    /// an upstream that comes back.
    pub async fn start_backend(&self, name: &str) -> Result<(), String> {
        let at = *self.backends.get(name).ok_or_else(|| format!("no backend {name}"))?;
        let (child, _) = crate::runner::start_backend(&self.meshwork, name, Some(at)).await?;
        self.started.lock().map_err(|_| "poisoned")?.push(child);
        Ok(())
    }

    /// The `Host` a client of this listener sends.
    pub fn host(&self) -> String {
        self.listen.to_string()
    }

    pub async fn get(&self, path: &str) -> Result<Reply, String> {
        self.send("GET", path, &[]).await
    }

    pub async fn send(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Result<Reply, String> {
        let method = http::Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
        let url = format!("http://{}{path}", self.listen);
        let mut request = self.client.request(method.clone(), &url);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = request.send().await.map_err(|e| format!("{method} {path}: {e}"))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.bytes().await.map_err(|e| format!("{method} {path}: reading the body: {e}"))?;
        let echo =
            headers.contains_key("x-upstream-name").then(|| serde_json::from_slice::<Echo>(&body).ok()).flatten();
        Ok(Reply { status, headers, body, echo })
    }

    /// `n` requests to `path`, counted by the backend that answered ("" for local answers)
    /// and by status.
    pub async fn tally(&self, path: &str, headers: &[(&str, &str)], n: usize) -> Result<Tally, String> {
        let mut tally = Tally::default();
        for _ in 0..n {
            let reply = self.send("GET", path, headers).await?;
            *tally.backends.entry(reply.backend().to_owned()).or_default() += 1;
            *tally.statuses.entry(reply.status).or_default() += 1;
        }
        Ok(tally)
    }

    /// How many requests an echo backend has received.
    pub async fn backend_requests(&self, name: &str) -> Result<u64, String> {
        let stats = self.backend_stats(name).await?;
        Ok(stats["requests_total"].as_u64().unwrap_or(0))
    }

    /// An echo backend's `/stats` document.
    pub async fn backend_stats(&self, name: &str) -> Result<serde_json::Value, String> {
        let addr = self.backends.get(name).ok_or_else(|| format!("no backend {name}"))?;
        let body = self
            .client
            .get(format!("http://{addr}/stats"))
            .send()
            .await
            .map_err(|e| format!("backend {name} /stats: {e}"))?
            .bytes()
            .await
            .map_err(|e| e.to_string())?;
        serde_json::from_slice(&body).map_err(|e| format!("backend {name} /stats: {e}"))
    }

    /// The implementation's Prometheus metrics.
    pub async fn metrics(&self) -> Result<String, String> {
        let url = self.metrics_url.as_deref().ok_or("this implementation exports no metrics")?;
        let response = self.client.get(url).send().await.map_err(|e| format!("{url}: {e}"))?;
        response.text().await.map_err(|e| format!("{url}: {e}"))
    }
}

#[derive(Clone, Debug, Default)]
pub struct Tally {
    pub backends: BTreeMap<String, usize>,
    pub statuses: BTreeMap<u16, usize>,
}

impl Tally {
    pub fn backend(&self, name: &str) -> usize {
        self.backends.get(name).copied().unwrap_or(0)
    }

    pub fn status(&self, status: u16) -> usize {
        self.statuses.get(&status).copied().unwrap_or(0)
    }
}

/// The value of one Prometheus sample `name{labels…}` whose labels include all of `labels`.
pub fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
        if metric != name {
            return None;
        }
        let all = labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
        all.then(|| value.parse().ok()).flatten()
    })
}
