//! The functions the host gives guests: proxy-wasm ABI v0.2.1/v0.2.0 in module `env`, and the
//! WASI preview1 subset Envoy provides (under both `wasi_snapshot_preview1` and `wasi_unstable`).
//!
//! Each hostcall returns exactly the status Envoy's host returns in the same situation (see
//! docs/host-semantics.md); guest pointers are always bounds-checked.

mod buffers;
mod foreign;
mod grpc;
mod http;
mod lifecycle;
mod maps;
mod metrics;
mod properties;
mod shared;
mod stream;
mod wasi;

use wasmtime::Linker;

use crate::abi::AbiVersion;
use crate::host_state::HostState;

/// Adds every function this host provides for modules of `abi` to `linker`.
pub fn add_to_linker(linker: &mut Linker<HostState>, abi: AbiVersion) -> wasmtime::Result<()> {
    lifecycle::add(linker, abi)?;
    buffers::add(linker)?;
    maps::add(linker)?;
    stream::add(linker)?;
    http::add(linker)?;
    grpc::add(linker)?;
    foreign::add(linker)?;
    shared::add(linker)?;
    metrics::add(linker)?;
    properties::add(linker)?;
    for module in wasi::MODULES {
        wasi::add(linker, module)?;
    }
    Ok(())
}

/// Whether this host provides `module.name` to a module of `abi` (for `filter inspect` and for
/// naming a missing import before instantiation fails).
pub fn provides(abi: AbiVersion, module: &str, name: &str) -> bool {
    match module {
        "env" => {
            ENV_COMMON.contains(&name)
                || (abi >= AbiVersion::V0_2_0 && ENV_0_2.contains(&name))
                || (abi == AbiVersion::V0_2_1 && name == "proxy_get_log_level")
        }
        m if wasi::MODULES.contains(&m) => wasi::FUNCTIONS.contains(&name),
        _ => false,
    }
}

const ENV_COMMON: &[&str] = &[
    "proxy_log",
    "proxy_get_status",
    "proxy_set_property",
    "proxy_get_property",
    "proxy_send_local_response",
    "proxy_get_shared_data",
    "proxy_set_shared_data",
    "proxy_register_shared_queue",
    "proxy_resolve_shared_queue",
    "proxy_dequeue_shared_queue",
    "proxy_enqueue_shared_queue",
    "proxy_get_header_map_value",
    "proxy_add_header_map_value",
    "proxy_replace_header_map_value",
    "proxy_remove_header_map_value",
    "proxy_get_header_map_pairs",
    "proxy_set_header_map_pairs",
    "proxy_get_header_map_size",
    "proxy_get_buffer_status",
    "proxy_get_buffer_bytes",
    "proxy_set_buffer_bytes",
    "proxy_http_call",
    "proxy_grpc_call",
    "proxy_grpc_stream",
    "proxy_grpc_close",
    "proxy_grpc_cancel",
    "proxy_grpc_send",
    "proxy_set_tick_period_milliseconds",
    "proxy_get_current_time_nanoseconds",
    "proxy_define_metric",
    "proxy_increment_metric",
    "proxy_record_metric",
    "proxy_get_metric",
    "proxy_set_effective_context",
    "proxy_done",
    "proxy_call_foreign_function",
    "pthread_equal",
    "emscripten_notify_memory_growth",
];

const ENV_0_2: &[&str] = &["proxy_continue_stream", "proxy_close_stream"];
