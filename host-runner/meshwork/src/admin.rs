//! The admin listener: `/ready`, `/stats/prometheus`, `/stats` (text, or JSON with
//! `?format=json`), `POST /reload` and `POST /quitquitquit`, on its own thread.
//!
//! The mutating endpoints refuse what a web page could send: a request with an `Origin`
//! header, or with a body type an HTML form or a CORS-simple `fetch` may use without a
//! preflight (`text/plain`, `application/x-www-form-urlencoded`, `multipart/form-data`). A
//! browser cannot send a cross-origin POST without one of those, so a page the operator visits
//! cannot stop or reload the proxy. Command-line clients (`curl -X POST`) send neither.

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

use crate::proxy::reload::Reloader;

pub fn start(addr: SocketAddr, services: Arc<Services>, reloader: Arc<Reloader>) -> anyhow::Result<SocketAddr> {
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
            loop {
                let stream = match listener.accept().await {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of descriptors, say: the admin port must outlive it, since it is
                        // where an operator looks to find out what is wrong.
                        tracing::debug!("admin accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (services, reloader) = (services.clone(), reloader.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |r| {
                        let (services, reloader) = (services.clone(), reloader.clone());
                        async move { Ok::<_, std::convert::Infallible>(respond(&r, &services, &reloader).await) }
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

/// Why a request to a mutating endpoint looks like it came from a web page, if it does.
fn from_a_browser(request: &Request<Incoming>) -> Option<&'static str> {
    if request.headers().contains_key(http::header::ORIGIN) {
        return Some("it carries an Origin header");
    }
    let content_type = request.headers().get(http::header::CONTENT_TYPE)?.to_str().unwrap_or("").to_ascii_lowercase();
    let essence = content_type.split(';').next().unwrap_or("").trim();
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
        .contains(&essence)
        .then_some("its content type is one a web page may send cross-origin")
}

const MUTATING: [&str; 2] = ["/reload", "/quitquitquit"];

async fn respond(
    request: &Request<Incoming>,
    services: &Services,
    reloader: &Arc<Reloader>,
) -> Response<Full<bytes::Bytes>> {
    let path = request.uri().path();
    if MUTATING.contains(&path) {
        if request.method() != Method::POST {
            return text(StatusCode::METHOD_NOT_ALLOWED, "text/plain", format!("{path} takes POST\n"));
        }
        if let Some(why) = from_a_browser(request) {
            return text(
                StatusCode::FORBIDDEN,
                "text/plain",
                format!(
                    "refused: {why}; the admin endpoints that change the proxy do not take requests a web page could make\n"
                ),
            );
        }
    }
    let json_format = request.uri().query().is_some_and(|q| q.split('&').any(|p| p == "format=json"));
    match (request.method(), path) {
        (&Method::GET, "/ready") => text(StatusCode::OK, "text/plain", "LIVE\n".into()),
        (&Method::GET, "/stats/prometheus") => {
            text(StatusCode::OK, "text/plain; version=0.0.4", services.metrics.render_prometheus())
        }
        (&Method::GET, "/stats") if json_format => text(StatusCode::OK, "application/json", stats_json(services)),
        (&Method::GET, "/stats") => text(StatusCode::OK, "text/plain", stats_text(services)),
        (&Method::POST, "/reload") => {
            let reloader = reloader.clone();
            match tokio::task::spawn_blocking(move || reloader.reload()).await {
                Ok(Ok(report)) => text(StatusCode::OK, "text/plain", format!("{report}\n")),
                Ok(Err(e)) => {
                    tracing::error!(
                        "POST /reload: the configuration was not reloaded, the old one keeps serving: {e:#}"
                    );
                    text(
                        StatusCode::BAD_REQUEST,
                        "text/plain",
                        format!("not reloaded (the old configuration keeps serving): {e:#}\n"),
                    )
                }
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", format!("reload failed: {e}\n")),
            }
        }
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
            "admin: /ready, /stats, /stats?format=json, /stats/prometheus, POST /reload, POST /quitquitquit\n".into(),
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
