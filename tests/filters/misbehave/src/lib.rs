//! A hostile filter for sandbox tests. Requests with the header `x-misbehave` make it do what
//! its configuration says, in the callback it names; other requests pass with
//! `x-misbehave-ok: 1`, so tests can see the filter working before and after a failure.
//!
//! Configuration: `{"do": "loop" | "trap" | "memory" | "headers-10k", "at": "request_headers" |
//! "response_headers" | "request_body"}`.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use serde::Deserialize;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug, Default)]
#[serde(rename_all = "kebab-case")]
enum Misdeed {
    #[default]
    Loop,
    Trap,
    Memory,
    #[serde(rename = "headers-10k")]
    Headers10k,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug, Default)]
#[serde(rename_all = "snake_case")]
enum Callback {
    #[default]
    RequestHeaders,
    ResponseHeaders,
    RequestBody,
}

#[derive(Deserialize, Clone, Copy, Default)]
struct Config {
    #[serde(rename = "do", default)]
    misdeed: Misdeed,
    #[serde(default)]
    at: Callback,
}

#[derive(Default)]
struct Root {
    config: Config,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match serde_json::from_slice(&bytes) {
            Ok(c) => {
                self.config = c;
                true
            }
            Err(e) => {
                let _ = proxy_wasm::hostcalls::log(LogLevel::Error, &format!("misbehave: bad configuration: {e}"));
                false
            }
        }
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream { config: self.config, armed: false }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream {
    config: Config,
    armed: bool,
}

/// Keeps the optimiser from removing the loop and the allocations.
static mut SINK: usize = 0;

impl Stream {
    fn misbehave(&mut self, at: Callback) {
        if !self.armed || at != self.config.at {
            return;
        }
        match self.config.misdeed {
            Misdeed::Loop => {
                let mut i: usize = 0;
                loop {
                    i = i.wrapping_add(1);
                    unsafe { std::ptr::write_volatile(&raw mut SINK, i) };
                }
            }
            Misdeed::Trap => panic!("misbehave: trapping on purpose"),
            Misdeed::Memory => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    let chunk = vec![1u8; 1 << 20];
                    unsafe { std::ptr::write_volatile(&raw mut SINK, chunk.len() + hoard.len()) };
                    hoard.push(chunk);
                }
            }
            Misdeed::Headers10k => {
                for i in 0..10_000 {
                    match at {
                        Callback::ResponseHeaders => self.add_http_response_header(&format!("x-flood-{i}"), "1"),
                        _ => self.add_http_request_header(&format!("x-flood-{i}"), "1"),
                    }
                }
            }
        }
    }
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        self.armed = self.get_http_request_header("x-misbehave").is_some();
        self.misbehave(Callback::RequestHeaders);
        Action::Continue
    }

    fn on_http_request_body(&mut self, _: usize, _: bool) -> Action {
        self.misbehave(Callback::RequestBody);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        self.misbehave(Callback::ResponseHeaders);
        self.add_http_response_header("x-misbehave-ok", "1");
        Action::Continue
    }
}
