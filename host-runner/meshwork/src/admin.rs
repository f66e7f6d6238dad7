//! The admin listener: `/ready`, `/stats/prometheus`, `/stats` (text, or JSON with
//! `?format=json`) and `POST /quitquitquit`, on its own thread.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use meshwork_wasm_host::Services;
use meshwork_wasm_host::metrics::Value;
use serde_json::json;

pub fn start(addr: SocketAddr, services: Arc<Services>) -> anyhow::Result<SocketAddr> {
    let listener =
        std::net::TcpListener::bind(addr).with_context(|| format!("cannot listen on admin address {addr}"))?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    std::thread::Builder::new().name("admin".into()).spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(r) => r,
            Err(e) => return tracing::error!("admin runtime failed: {e}"),
        };
        runtime.block_on(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                return;
            };
            while let Ok((stream, _)) = listener.accept().await {
                let services = services.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |r| {
                        let services = services.clone();
                        async move { Ok::<_, std::convert::Infallible>(respond(&r, &services)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    })?;
    Ok(local)
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<bytes::Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    r
}

fn respond(request: &Request<Incoming>, services: &Services) -> Response<Full<bytes::Bytes>> {
    let json_format = request.uri().query().is_some_and(|q| q.split('&').any(|p| p == "format=json"));
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/ready") => text(StatusCode::OK, "text/plain", "LIVE\n".into()),
        (&Method::GET, "/stats/prometheus") => {
            text(StatusCode::OK, "text/plain; version=0.0.4", services.metrics.render_prometheus())
        }
        (&Method::GET, "/stats") if json_format => text(StatusCode::OK, "application/json", stats_json(services)),
        (&Method::GET, "/stats") => text(StatusCode::OK, "text/plain", stats_text(services)),
        (&Method::POST, "/quitquitquit") => {
            // Answer first, then leave: the client sees the reply.
            std::thread::spawn(|| {
                std::thread::sleep(std::time::Duration::from_millis(50));
                std::process::exit(0);
            });
            text(StatusCode::OK, "text/plain", "OK\n".into())
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "admin: /ready, /stats, /stats?format=json, /stats/prometheus, POST /quitquitquit\n".into(),
        ),
    }
}

fn stats_json(services: &Services) -> String {
    let stats: Vec<_> = services
        .metrics
        .snapshot_values()
        .into_iter()
        .map(|m| {
            let tags: serde_json::Map<_, _> = m.tags.into_iter().map(|(k, v)| (k, json!(v))).collect();
            match m.value {
                Value::Counter(v) => json!({"name": m.name, "tags": tags, "type": "counter", "value": v}),
                Value::Gauge(v) => json!({"name": m.name, "tags": tags, "type": "gauge", "value": v}),
                Value::Histogram(h) => json!({
                    "name": m.name, "tags": tags, "type": "histogram",
                    "count": h.count, "sum": h.sum as f64, "min": h.min, "max": h.max,
                    "quantiles": h.quantiles.iter().map(|(q, v)| json!({"quantile": q, "value": v})).collect::<Vec<_>>(),
                }),
            }
        })
        .collect();
    serde_json::to_string_pretty(&json!({ "stats": stats })).unwrap_or_default()
}

fn stats_text(services: &Services) -> String {
    let mut out = String::new();
    for m in services.metrics.snapshot_values() {
        let tags: Vec<String> = m.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let name = if tags.is_empty() { m.name.clone() } else { format!("{}{{{}}}", m.name, tags.join(",")) };
        match m.value {
            Value::Counter(v) => out.push_str(&format!("{name}: {v}\n")),
            Value::Gauge(v) => out.push_str(&format!("{name}: {v}\n")),
            Value::Histogram(h) => {
                let qs: Vec<String> = h.quantiles.iter().map(|(q, v)| format!("P{}({v})", q * 100.0)).collect();
                out.push_str(&format!("{name}: count={} {}\n", h.count, qs.join(" ")));
            }
        }
    }
    out
}
