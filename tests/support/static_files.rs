//! A static file server on 127.0.0.1 for the site tests: the catalog site is loaded over HTTP
//! as a user would serve it (browsers refuse module scripts and Wasm from file:// URLs), with
//! the media types browsers require for modules (`text/javascript`) and streaming Wasm
//! compilation (`application/wasm`). Every request is recorded, so a test can see what the
//! page asked for.

use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

pub struct StaticServer {
    pub addr: SocketAddr,
    /// Paths requested so far.
    pub requests: Arc<Mutex<Vec<String>>>,
    _runtime: tokio::runtime::Runtime,
}

impl StaticServer {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{}", self.addr, path.trim_start_matches('/'))
    }
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("css") => "text/css",
        Some("js") => "text/javascript",
        Some("wasm") => "application/wasm",
        Some("json") => "application/json",
        Some("svg") => "image/svg+xml",
        _ => "application/octet-stream",
    }
}

fn respond(root: &Path, path: &str) -> Response<Full<Bytes>> {
    let rel = path.trim_start_matches('/');
    let rel = if rel.is_empty() { "index.html" } else { rel };
    let rel = PathBuf::from(rel);
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Response::builder().status(400).body(Full::new(Bytes::new())).unwrap();
    }
    let file = root.join(&rel);
    match std::fs::read(&file) {
        Ok(data) => {
            Response::builder().header("content-type", content_type(&file)).body(Full::new(Bytes::from(data))).unwrap()
        }
        Err(_) => Response::builder().status(404).body(Full::new(Bytes::from_static(b"not found"))).unwrap(),
    }
}

/// Serves `root` until dropped.
pub fn serve(root: &Path) -> StaticServer {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let root = root.to_path_buf();
    let log = requests.clone();
    runtime.spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let root = root.clone();
            let log = log.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let path = req.uri().path().to_owned();
                    log.lock().unwrap().push(path.clone());
                    let response = respond(&root, &path);
                    async move { Ok::<_, std::convert::Infallible>(response) }
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    StaticServer { addr, requests, _runtime: runtime }
}
