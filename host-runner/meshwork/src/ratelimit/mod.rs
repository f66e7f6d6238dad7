//! `meshwork ratelimit-service`: a global rate-limit service speaking Envoy's rate-limit
//! service API both ways, on one port: gRPC (`envoy.service.ratelimit.v3.RateLimitService/
//! ShouldRateLimit`, over h2c) and its JSON form (`POST /json`, as envoyproxy/ratelimit serves
//! it), with envoyproxy/ratelimit's limits files. Counters are fixed windows, kept in memory or, with
//! `--redis`, in Redis so several instances (one per proxy, say) enforce one limit together.
//! The decisions are in `meshwork_rate_limit_descriptors`; this module is the I/O around them.

mod config;
mod grpc;
mod http;
mod redis;
mod store;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use hyper_util::rt::TokioIo;

use crate::OutputFormat;
use redis::Redis;
use store::Store;

#[derive(clap::Args)]
pub struct Args {
    /// Address to serve on; port 0 picks one (the first line of output says which).
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// A limits file in envoyproxy/ratelimit's YAML format (one domain); repeat for more domains.
    #[arg(long = "config", required = true)]
    configs: Vec<PathBuf>,
    /// Keep counters in this Redis (redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]), shared by
    /// every service that uses it; without it, counters live in this process.
    #[arg(long)]
    redis: Option<String>,
    /// How long one Redis pipeline (connecting included) may take before the request fails.
    #[arg(long, default_value = "1s", value_parser = crate::config::parse_duration)]
    redis_timeout: Duration,
    /// Threads serving requests.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    #[arg(long, value_enum, default_value = "text")]
    output: OutputFormat,
}

/// Serves until the process ends. The first line of output says where.
pub fn serve(args: Args) -> anyhow::Result<()> {
    let limits = config::load(&args.configs)?;
    let store = match &args.redis {
        None => Store::memory(),
        Some(url) => Store::Redis(Arc::new(Redis::open(url, args.redis_timeout).map_err(|e| anyhow!("--redis: {e}"))?)),
    };
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(args.threads.max(1)).enable_all().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let local = listener.local_addr()?;
        // An unreachable Redis is not fatal: requests get 500 until it answers, as they would
        // if it went away later.
        if let Err(e) = store.check().await {
            tracing::warn!("{e}; answering 500 until it is reachable");
        }
        let domains: Vec<String> = limits.domains().map(str::to_owned).collect();
        let mut stdout = std::io::stdout();
        match args.output {
            OutputFormat::Text => writeln!(
                stdout,
                "meshwork ratelimit-service: listening on http://{local}, store {}, domains [{}]",
                store.describe(),
                domains.join(", ")
            )?,
            OutputFormat::Json => writeln!(
                stdout,
                "{}",
                serde_json::json!({"event": "ready", "listen": local.to_string(), "store": store.describe(), "domains": domains})
            )?,
        }
        stdout.flush()?;
        let service = Arc::new(http::Service { limits, store });
        let grpc = meshwork_grpc_api::ratelimit::rate_limit_service_server::RateLimitServiceServer::new(grpc::Grpc(
            service.clone(),
        ));
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors, say: keep serving the connections already open.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let (service, grpc) = (service.clone(), grpc.clone());
            tokio::spawn(async move {
                // gRPC by its content type, the JSON form otherwise; HTTP/1.1 and h2c alike.
                let handler = hyper::service::service_fn(move |r: ::http::Request<hyper::body::Incoming>| {
                    let (service, mut grpc) = (service.clone(), grpc.clone());
                    async move {
                        let is_grpc = r
                            .headers()
                            .get(::http::header::CONTENT_TYPE)
                            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
                        if is_grpc {
                            let response = tonic::codegen::Service::call(&mut grpc, r).await?;
                            return Ok::<_, std::convert::Infallible>(response);
                        }
                        let response = http::handle(service, r).await?;
                        Ok(response.map(tonic::body::Body::new))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), handler)
                    .await;
            });
        }
    })
}
