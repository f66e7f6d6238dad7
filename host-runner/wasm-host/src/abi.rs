//! Numbers of the proxy-wasm ABI v0.2.1 (and the WASI preview1 subset proxies provide).

/// `proxy_status_t`, plus the values Envoy's host uses beyond the spec's list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Status {
    Ok = 0,
    NotFound = 1,
    BadArgument = 2,
    SerializationFailure = 3,
    ParseFailure = 4,
    InvalidMemoryAccess = 6,
    Empty = 7,
    CasMismatch = 8,
    InternalFailure = 10,
    Unimplemented = 12,
}

/// What a hostcall returns to the guest: a status, never a host panic.
pub type HostResult<T = ()> = Result<T, Status>;

pub fn status_code(result: HostResult) -> i32 {
    match result {
        Ok(()) => Status::Ok as i32,
        Err(s) => s as i32,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
    Critical = 5,
}

impl LogLevel {
    pub fn from_raw(level: u32) -> Option<LogLevel> {
        Some(match level {
            0 => LogLevel::Trace,
            1 => LogLevel::Debug,
            2 => LogLevel::Info,
            3 => LogLevel::Warn,
            4 => LogLevel::Error,
            5 => LogLevel::Critical,
            _ => return None,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BufferType {
    HttpRequestBody = 0,
    HttpResponseBody = 1,
    DownstreamData = 2,
    UpstreamData = 3,
    HttpCallResponseBody = 4,
    GrpcReceiveBuffer = 5,
    VmConfiguration = 6,
    PluginConfiguration = 7,
    CallData = 8,
}

impl BufferType {
    pub fn from_raw(raw: u32) -> Option<BufferType> {
        Some(match raw {
            0 => BufferType::HttpRequestBody,
            1 => BufferType::HttpResponseBody,
            2 => BufferType::DownstreamData,
            3 => BufferType::UpstreamData,
            4 => BufferType::HttpCallResponseBody,
            5 => BufferType::GrpcReceiveBuffer,
            6 => BufferType::VmConfiguration,
            7 => BufferType::PluginConfiguration,
            8 => BufferType::CallData,
            _ => return None,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapType {
    RequestHeaders = 0,
    RequestTrailers = 1,
    ResponseHeaders = 2,
    ResponseTrailers = 3,
    GrpcInitialMetadata = 4,
    GrpcTrailingMetadata = 5,
    HttpCallResponseHeaders = 6,
    HttpCallResponseTrailers = 7,
}

impl MapType {
    pub fn from_raw(raw: u32) -> Option<MapType> {
        Some(match raw {
            0 => MapType::RequestHeaders,
            1 => MapType::RequestTrailers,
            2 => MapType::ResponseHeaders,
            3 => MapType::ResponseTrailers,
            4 => MapType::GrpcInitialMetadata,
            5 => MapType::GrpcTrailingMetadata,
            6 => MapType::HttpCallResponseHeaders,
            7 => MapType::HttpCallResponseTrailers,
            _ => return None,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamType {
    HttpRequest = 0,
    HttpResponse = 1,
    Downstream = 2,
    Upstream = 3,
}

impl StreamType {
    pub fn from_raw(raw: u32) -> Option<StreamType> {
        Some(match raw {
            0 => StreamType::HttpRequest,
            1 => StreamType::HttpResponse,
            2 => StreamType::Downstream,
            3 => StreamType::Upstream,
            _ => return None,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MetricType {
    Counter = 0,
    Gauge = 1,
    Histogram = 2,
}

impl MetricType {
    pub fn from_raw(raw: u32) -> Option<MetricType> {
        Some(match raw {
            0 => MetricType::Counter,
            1 => MetricType::Gauge,
            2 => MetricType::Histogram,
            _ => return None,
        })
    }
}

/// Return value of the stream callbacks (`proxy_action_t`), with Envoy's wider data statuses.
/// What a filter does with data it holds once the host's buffer limit is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overflow {
    /// The host stops reading more (Envoy's watermark statuses): the sender waits.
    Backpressure,
    /// The stream is answered (413 for a request, 500 or a reset for a response), as Envoy
    /// does for its buffering statuses.
    Answer,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Continue,
    /// Stop iteration; body data arriving meanwhile is held by the host.
    Pause(Overflow),
    /// Stop iteration and drop this chunk (Envoy's StopIterationNoBuffer, value 3 for bodies).
    PauseNoBuffer,
}

/// Which callback produced an action; the same number means different things per callback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallbackKind {
    Headers,
    Body,
    Trailers,
}

impl Action {
    /// Maps a callback's raw return value as Envoy does; `None` is garbage (a filter failure).
    pub fn from_raw(kind: CallbackKind, raw: u32) -> Option<Action> {
        use Overflow::{Answer, Backpressure};
        match (kind, raw) {
            (_, 0) => Some(Action::Continue),
            // Headers: ContinueAndEndStream falls through to Continue in Envoy.
            (CallbackKind::Headers, 2) => Some(Action::Continue),
            // Headers: StopIteration (which Envoy turns into StopAllIterationAndWatermark unless
            // allow_on_headers_stop_iteration) and StopAllIterationAndWatermark.
            (CallbackKind::Headers, 1 | 4) => Some(Action::Pause(Backpressure)),
            (CallbackKind::Headers, 3) => Some(Action::Pause(Answer)),
            // Body: StopIterationAndBuffer, StopIterationAndWatermark, StopIterationNoBuffer.
            (CallbackKind::Body, 1) => Some(Action::Pause(Answer)),
            (CallbackKind::Body, 2) => Some(Action::Pause(Backpressure)),
            (CallbackKind::Body, 3) => Some(Action::PauseNoBuffer),
            (CallbackKind::Trailers, 1) => Some(Action::Pause(Backpressure)),
            _ => None,
        }
    }
}

/// WASI preview1 errno values used by the subset proxies provide.
pub mod errno {
    pub const SUCCESS: i32 = 0;
    pub const BADF: i32 = 8;
    pub const FAULT: i32 = 21;
    pub const INVAL: i32 = 28;
    pub const NOSYS: i32 = 52;
    pub const NOTSUP: i32 = 58;
}

/// ABI versions a module can declare with a `proxy_abi_version_*` export.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum AbiVersion {
    V0_1_0,
    V0_2_0,
    V0_2_1,
}

impl AbiVersion {
    pub fn from_export(name: &str) -> Option<AbiVersion> {
        match name {
            "proxy_abi_version_0_1_0" => Some(AbiVersion::V0_1_0),
            "proxy_abi_version_0_2_0" => Some(AbiVersion::V0_2_0),
            "proxy_abi_version_0_2_1" => Some(AbiVersion::V0_2_1),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AbiVersion::V0_1_0 => "0.1.0",
            AbiVersion::V0_2_0 => "0.2.0",
            AbiVersion::V0_2_1 => "0.2.1",
        }
    }
}
