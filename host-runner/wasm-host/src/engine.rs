//! Runs one HTTP stream through a chain of filters with Envoy's semantics.
//!
//! Requests pass filters 0..n, responses n..0. At each filter a callback's answer decides:
//! - headers: Continue passes them on; Pause holds the stream there (Envoy's
//!   StopAllIterationAndWatermark): body data is buffered by the host without callbacks and is
//!   delivered in one body callback after `proxy_continue_stream`. For a plugin configured with
//!   `allow_on_headers_stop_iteration`, Pause holds only the headers (Envoy's StopIteration):
//!   the filter still sees the body and trailers, and Continue from them releases the headers;
//! - body: Pause buffers (the next callback sees everything buffered so far); Envoy's
//!   StopIterationNoBuffer drops the chunk; Continue passes the buffer on;
//! - trailers: Pause holds them (and any data held with them).
//!
//! Data a filter holds counts against the stream's buffer limit (Envoy's
//! `per_connection_buffer_limit_bytes`). A watermark hold (Pause on headers, StopIterationAndWatermark)
//! only makes [`FilterStream::accepts`] say no, so the proxy stops reading; a buffering hold
//! (StopIterationAndBuffer, StopAllIterationAndBuffer) past the limit gets Envoy's answers: 413
//! for a request, 500 for a response whose headers have not left, a reset otherwise.
//!
//! Actions a filter requests (continue, local reply, close) run after its callback returns.
//! A local reply goes back through the response callbacks of every filter whose context exists.
//! A failing filter is skipped (fail open) or answered with 503 (fail closed).
//!
//! The engine is synchronous: the proxy pushes events in, takes [`Output`]s out, and calls
//! [`FilterStream::process_actions`] when the stream's waker fires.

use std::collections::VecDeque;
use std::rc::Rc;

use bytes::Bytes;

use crate::abi::{Action, CallbackKind, Overflow};
use crate::error::Failure;
use crate::headers::HeaderMap;
use crate::stream_data::{Body, LocalReply, PerDir, SharedStream, StreamData, StreamInfo};
use crate::vm::{PluginVm, Raw};

pub use crate::stream_data::Dir;

/// What leaves the chain: towards the upstream (request) or the client (response). Headers and
/// trailers themselves are in the stream's [`StreamData`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    Headers { end_stream: bool },
    Data { bytes: Bytes, end_stream: bool },
    Trailers,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum HeadersAt {
    #[default]
    NotSeen,
    Stopped,
    /// Stopped, but the filter still gets body and trailer callbacks (StopIteration).
    StoppedSeeingBody,
    Passed,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Hold {
    #[default]
    Nothing,
    Buffer,
    NoBuffer,
    Trailers,
}

/// One direction of the stream at one filter.
#[derive(Clone, Copy, Debug)]
struct Flow {
    headers: HeadersAt,
    hold: Hold,
    /// What a hold does at the buffer limit.
    overflow: Overflow,
    headers_eos: bool,
    eos_held: bool,
    trailers_held: bool,
}

impl Default for Flow {
    fn default() -> Self {
        Flow {
            headers: HeadersAt::NotSeen,
            hold: Hold::Nothing,
            overflow: Overflow::Backpressure,
            headers_eos: false,
            eos_held: false,
            trailers_held: false,
        }
    }
}

struct Stage {
    vm: Rc<PluginVm>,
    created: bool,
    /// Bypassed: the filter failed open (or never saw the request, for local replies).
    skip: bool,
    flows: PerDir<Flow>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Continue,
    Stop { drop_data: bool, overflow: Overflow },
    Abort,
}

#[derive(Clone, Copy)]
enum Part {
    Headers,
    Body,
    Trailers,
}

pub struct FilterStream {
    stages: Vec<Stage>,
    data: SharedStream,
    out: PerDir<VecDeque<Output>>,
    /// Body bytes waiting in `out`, per direction.
    queued: PerDir<usize>,
    /// Most body bytes the chain holds per direction before it pushes back or answers.
    buffer_limit: usize,
    /// Stop sending anything upstream (a local reply or a reset took over).
    request_aborted: bool,
    reset: bool,
    /// Bumped by every local reply: response work started before it is stale.
    response_generation: u32,
    local_reply_active: bool,
    response_headers_emitted: bool,
    /// Work queued while another direction was running (fail-open releases).
    deferred: Vec<(Dir, usize)>,
    finished: bool,
}

impl std::fmt::Debug for FilterStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FilterStream").field("filters", &self.stages.len()).field("reset", &self.reset).finish()
    }
}

impl FilterStream {
    pub fn new(
        vms: impl IntoIterator<Item = Rc<PluginVm>>,
        request_headers: HeaderMap,
        info: StreamInfo,
    ) -> FilterStream {
        let stages: Vec<Stage> =
            vms.into_iter().map(|vm| Stage { vm, created: false, skip: false, flows: PerDir::default() }).collect();
        let data = Rc::new(std::cell::RefCell::new(StreamData::new(request_headers, info, stages.len())));
        FilterStream {
            stages,
            data,
            out: PerDir::default(),
            queued: PerDir::default(),
            buffer_limit: usize::MAX,
            request_aborted: false,
            reset: false,
            response_generation: 0,
            local_reply_active: false,
            response_headers_emitted: false,
            deferred: Vec::new(),
            finished: false,
        }
    }

    /// Caps the body bytes the chain holds per direction (default: no cap).
    pub fn with_buffer_limit(mut self, bytes: usize) -> FilterStream {
        self.buffer_limit = bytes.max(1);
        self
    }

    pub fn data(&self) -> &SharedStream {
        &self.data
    }

    /// Nothing more should go upstream: a local reply is answering, or the stream was reset.
    pub fn request_aborted(&self) -> bool {
        self.request_aborted || self.reset
    }

    /// A filter closed the stream, or a reply was needed after the response had started.
    pub fn is_reset(&self) -> bool {
        self.reset
    }

    /// The response comes from a local reply, not from the upstream.
    pub fn is_local_reply(&self) -> bool {
        self.local_reply_active
    }

    /// Response headers have left the chain: a different answer is no longer possible.
    pub fn response_started(&self) -> bool {
        self.response_headers_emitted
    }

    pub fn next_output(&mut self, d: Dir) -> Option<Output> {
        let output = self.out[d].pop_front()?;
        if let Output::Data { bytes, .. } = &output {
            self.queued[d] -= bytes.len();
        }
        Some(output)
    }

    /// The next output of `d`, without taking it.
    pub fn peek_output(&self, d: Dir) -> Option<&Output> {
        self.out[d].front()
    }

    /// Body bytes of direction `d` inside the chain: held by filters, or waiting to leave.
    pub fn buffered(&self, d: Dir) -> usize {
        let data = self.data.borrow();
        data.stages.iter().map(|s| s.body[d].len()).sum::<usize>() + self.queued[d]
    }

    /// Whether the chain takes more body data in direction `d` now. When it says no the proxy
    /// stops reading that side (backpressure) until outputs are taken or filters release.
    pub fn accepts(&self, d: Dir) -> bool {
        self.queued[d] == 0 && self.buffered(d) < self.buffer_limit
    }

    // ----- events in ------------------------------------------------------------------------

    pub fn request_headers(&mut self, end_stream: bool) {
        self.run_headers(Dir::Request, 0, end_stream);
        self.settle_deferred();
    }

    pub fn request_data(&mut self, bytes: Bytes, end_stream: bool) {
        self.data.borrow_mut().info.body_bytes[Dir::Request] += bytes.len() as u64;
        self.run_data(Dir::Request, 0, bytes, end_stream);
        self.settle_deferred();
    }

    pub fn request_trailers(&mut self, trailers: HeaderMap) {
        self.data.borrow_mut().trailers[Dir::Request] = Some(trailers);
        self.run_trailers(Dir::Request, 0);
        self.settle_deferred();
    }

    /// The upstream's response headers (ignored once a local reply answers the stream).
    pub fn response_headers(&mut self, headers: HeaderMap, end_stream: bool) {
        if self.local_reply_active || self.reset {
            return;
        }
        {
            let mut d = self.data.borrow_mut();
            d.info.response_code = headers.get_str(":status").and_then(|s| s.parse().ok());
            d.info.response_code_details.get_or_insert_with(|| "via_upstream".into());
            d.headers[Dir::Response] = headers;
        }
        self.run_headers(Dir::Response, 0, end_stream);
        self.settle_deferred();
    }

    pub fn response_data(&mut self, bytes: Bytes, end_stream: bool) {
        if self.local_reply_active || self.reset {
            return;
        }
        self.data.borrow_mut().info.body_bytes[Dir::Response] += bytes.len() as u64;
        self.run_data(Dir::Response, 0, bytes, end_stream);
        self.settle_deferred();
    }

    pub fn response_trailers(&mut self, trailers: HeaderMap) {
        if self.local_reply_active || self.reset {
            return;
        }
        self.data.borrow_mut().trailers[Dir::Response] = Some(trailers);
        self.run_trailers(Dir::Response, 0);
        self.settle_deferred();
    }

    /// The proxy's own reply (no upstream, upstream failed, timeout), sent through the response
    /// callbacks as Envoy sends its local replies. After response headers left, a reset.
    pub fn local_reply(&mut self, reply: LocalReply) {
        self.start_local_reply(reply);
        self.settle_deferred();
    }

    /// Ends the stream abruptly (the client or the upstream went away mid-stream): nothing
    /// more leaves the chain in either direction.
    pub fn reset(&mut self) {
        self.reset_stream();
    }

    /// Applies actions filters recorded outside the engine's own calls (from callout
    /// responses, timers, queues), and fail policy for filters whose VM died meanwhile.
    pub fn process_actions(&mut self) {
        let quiet = !self.data.borrow().actions_pending
            && self.deferred.is_empty()
            && !self.stages.iter().any(|s| !s.skip && s.created && s.vm.is_failed());
        if quiet {
            return;
        }
        loop {
            let mut progressed = false;
            let pending = std::mem::take(&mut self.data.borrow_mut().actions_pending);
            for f in 0..self.stages.len() {
                if self.reset {
                    return;
                }
                let stage = &self.stages[f];
                if !stage.skip && stage.created && stage.vm.is_failed() {
                    for d in Dir::BOTH {
                        if self.holds(d, f) {
                            progressed = true;
                            if self.failure(d, f, Failure::VmFailed) == Step::Continue {
                                self.resume(d, f);
                            }
                        }
                    }
                }
                if !pending {
                    continue;
                }
                let actions = std::mem::take(&mut self.data.borrow_mut().stages[f].actions);
                if actions.is_empty() {
                    continue;
                }
                progressed = true;
                if actions.close {
                    self.reset_stream();
                    return;
                }
                if let Some(reply) = actions.local_reply {
                    self.start_local_reply(reply);
                }
                for d in Dir::BOTH {
                    if actions.resume[d] {
                        self.resume(d, f);
                    }
                }
            }
            progressed |= self.run_deferred();
            if !progressed {
                return;
            }
        }
    }

    /// Logs and tears down every filter's context: `proxy_on_log` for all (creating contexts
    /// for filters the stream never reached, as Envoy's access-log path does), then
    /// `proxy_on_done` and `proxy_on_delete`. Runs once; also on drop.
    pub fn finish(&mut self) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        {
            let mut d = self.data.borrow_mut();
            d.in_log = true;
            d.info.request_duration = d.info.start_time.elapsed().ok();
            for s in &mut d.stages {
                s.access = Default::default();
            }
        }
        for f in 0..self.stages.len() {
            let vm = self.stages[f].vm.clone();
            if vm.is_failed() {
                continue;
            }
            let Ok(ctx) = self.ensure_context(f) else {
                continue;
            };
            if let Err(e) = vm.on_log(ctx) {
                self.report(f, &e);
            }
        }
        for f in 0..self.stages.len() {
            let ctx = self.data.borrow().stages[f].context_id;
            let vm = self.stages[f].vm.clone();
            if ctx != 0
                && !vm.is_failed()
                && let Err(e) = vm.delete_stream_context(ctx)
            {
                self.report(f, &e);
            }
        }
    }

    // ----- the pipeline ---------------------------------------------------------------------

    fn position(&self, d: Dir, index: usize) -> usize {
        match d {
            Dir::Request => index,
            Dir::Response => self.stages.len() - 1 - index,
        }
    }

    fn halted(&self, d: Dir, generation: u32) -> bool {
        self.reset
            || match d {
                Dir::Request => self.request_aborted,
                Dir::Response => self.response_generation != generation,
            }
    }

    fn flow(&mut self, d: Dir, f: usize) -> &mut Flow {
        &mut self.stages[f].flows[d]
    }

    fn holds(&self, d: Dir, f: usize) -> bool {
        let flow = &self.stages[f].flows[d];
        matches!(flow.headers, HeadersAt::Stopped | HeadersAt::StoppedSeeingBody) || flow.hold != Hold::Nothing
    }

    fn take_buffer(&self, d: Dir, f: usize) -> Bytes {
        self.with_buffer(d, f, Body::take)
    }

    fn with_buffer<R>(&self, d: Dir, f: usize, op: impl FnOnce(&mut Body) -> R) -> R {
        op(&mut self.data.borrow_mut().stages[f].body[d])
    }

    fn has_trailers(&self, d: Dir) -> bool {
        self.data.borrow().trailers[d].is_some()
    }

    fn run_headers(&mut self, d: Dir, from: usize, eos: bool) {
        let generation = self.response_generation;
        for p in from..self.stages.len() {
            if self.halted(d, generation) {
                return;
            }
            let f = self.position(d, p);
            if self.stages[f].skip {
                continue;
            }
            self.flow(d, f).headers_eos = eos;
            match self.headers_step(d, f, eos) {
                Step::Continue => self.flow(d, f).headers = HeadersAt::Passed,
                Step::Stop { overflow, .. } => {
                    let seeing_body = self.stages[f].vm.plugin.allow_on_headers_stop_iteration && !eos;
                    let flow = self.flow(d, f);
                    flow.headers = if seeing_body { HeadersAt::StoppedSeeingBody } else { HeadersAt::Stopped };
                    flow.overflow = overflow;
                    return;
                }
                Step::Abort => return,
            }
        }
        if !self.halted(d, generation) {
            self.emit_headers(d, eos);
        }
    }

    fn run_data(&mut self, d: Dir, from: usize, chunk: Bytes, eos: bool) {
        let mut trailers_added_at = None;
        self.pass_data(d, from, chunk, eos, &mut trailers_added_at);
        // Trailers a filter added to the last chunk follow that chunk, even when a later filter
        // holds the data: they reach it and release what it holds.
        if let Some(p) = trailers_added_at {
            self.run_trailers(d, p + 1);
        }
    }

    /// Moves one chunk down the chain from position `from` until a filter holds it or it
    /// leaves the chain.
    fn pass_data(
        &mut self,
        d: Dir,
        from: usize,
        mut chunk: Bytes,
        mut eos: bool,
        trailers_added_at: &mut Option<usize>,
    ) {
        let generation = self.response_generation;
        for p in from..self.stages.len() {
            if self.halted(d, generation) {
                return;
            }
            let f = self.position(d, p);
            if self.stages[f].skip {
                continue;
            }
            let flow = *self.flow(d, f);
            if flow.headers == HeadersAt::Stopped {
                // Held at a filter that stopped on headers: no callback until it continues.
                self.with_buffer(d, f, |b| b.append(chunk));
                self.flow(d, f).eos_held |= eos;
                self.check_overflow(d, f);
                return;
            }
            self.with_buffer(d, f, |b| {
                if flow.hold != Hold::Buffer {
                    b.clear();
                }
                b.append(chunk);
            });
            let trailers_before = self.has_trailers(d);
            match self.body_step(d, f, eos) {
                Step::Continue => {
                    self.flow(d, f).hold = Hold::Nothing;
                    chunk = self.take_buffer(d, f);
                    if flow.headers == HeadersAt::StoppedSeeingBody {
                        self.release_headers(d, f, p);
                    }
                    if eos && !trailers_before && self.has_trailers(d) {
                        // The filter added trailers to the last chunk: they follow the data.
                        eos = false;
                        trailers_added_at.get_or_insert(p);
                    }
                }
                Step::Stop { drop_data, overflow } => {
                    let flow = self.flow(d, f);
                    flow.eos_held = eos;
                    flow.hold = if drop_data { Hold::NoBuffer } else { Hold::Buffer };
                    flow.overflow = overflow;
                    if drop_data {
                        self.with_buffer(d, f, Body::clear);
                    } else {
                        self.check_overflow(d, f);
                    }
                    return;
                }
                Step::Abort => return,
            }
        }
        if !self.halted(d, generation) {
            self.emit(d, Output::Data { bytes: chunk, end_stream: eos });
        }
    }

    /// A buffering hold past the limit is answered as Envoy answers it; a watermark hold only
    /// stops the proxy from reading more (see [`FilterStream::accepts`]).
    fn check_overflow(&mut self, d: Dir, f: usize) {
        if self.stages[f].flows[d].overflow != Overflow::Answer {
            return;
        }
        let held = self.data.borrow().stages[f].body[d].len();
        if held <= self.buffer_limit {
            return;
        }
        let filter = self.stages[f].vm.plugin.name.clone();
        tracing::debug!(%filter, held, limit = self.buffer_limit, "a filter buffered past the limit");
        self.stages[f].vm.services.metrics.counter(BUFFER_OVERFLOWS[d.index()]).increment(1).ok();
        match d {
            Dir::Request => self.start_local_reply(LocalReply {
                status: 413,
                details: "request_payload_too_large".into(),
                body: Bytes::from_static(b"Payload Too Large"),
                headers: Vec::new(),
                grpc_status: None,
            }),
            Dir::Response if !self.response_headers_emitted => self.start_local_reply(LocalReply {
                status: 500,
                details: "response_payload_too_large".into(),
                body: Bytes::from_static(b"Internal Server Error"),
                headers: Vec::new(),
                grpc_status: None,
            }),
            Dir::Response => self.reset_stream(),
        }
    }

    fn run_trailers(&mut self, d: Dir, from: usize) {
        let generation = self.response_generation;
        for p in from..self.stages.len() {
            if self.halted(d, generation) {
                return;
            }
            let f = self.position(d, p);
            if self.stages[f].skip {
                continue;
            }
            let flow = *self.flow(d, f);
            if flow.headers == HeadersAt::Stopped {
                self.flow(d, f).trailers_held = true;
                return;
            }
            match self.trailers_step(d, f) {
                Step::Continue => {
                    if flow.headers == HeadersAt::StoppedSeeingBody {
                        self.release_headers(d, f, p);
                    }
                    if matches!(flow.hold, Hold::Buffer | Hold::NoBuffer) {
                        // Trailers end the body: data held for the body goes on first.
                        self.flow(d, f).hold = Hold::Nothing;
                        self.set_access(d, f, Part::Body, false);
                        let chunk = self.take_buffer(d, f);
                        if !chunk.is_empty() {
                            self.run_data(d, p + 1, chunk, false);
                        }
                    }
                }
                Step::Stop { .. } => {
                    self.flow(d, f).hold = Hold::Trailers;
                    return;
                }
                Step::Abort => return,
            }
        }
        if !self.halted(d, generation) {
            self.emit(d, Output::Trailers);
        }
    }

    /// Headers a filter stopped with StopIteration go on (before the data it releases).
    fn release_headers(&mut self, d: Dir, f: usize, p: usize) {
        let eos = {
            let flow = self.flow(d, f);
            flow.headers = HeadersAt::Passed;
            flow.headers_eos
        };
        self.set_access(d, f, Part::Headers, false);
        self.run_headers(d, p + 1, eos);
    }

    /// Releases what filter `f` holds in direction `d` (its `proxy_continue_stream`).
    fn resume(&mut self, d: Dir, f: usize) {
        let p = (0..self.stages.len()).find(|p| self.position(d, *p) == f).unwrap_or(0);
        let flow = *self.flow(d, f);
        match (flow.headers, flow.hold) {
            (HeadersAt::StoppedSeeingBody, hold) => {
                // The filter has seen what it holds: headers, then that data and trailers, go
                // on to the next filter.
                self.release_headers(d, f, p);
                self.flow(d, f).hold = Hold::Nothing;
                self.flow(d, f).eos_held = false;
                self.set_access(d, f, Part::Body, false);
                let chunk = self.take_buffer(d, f);
                if !chunk.is_empty() || flow.eos_held {
                    self.run_data(d, p + 1, chunk, flow.eos_held);
                }
                if hold == Hold::Trailers {
                    self.set_access(d, f, Part::Trailers, false);
                    self.run_trailers(d, p + 1);
                }
            }
            (HeadersAt::Stopped, _) => {
                {
                    let flow = self.flow(d, f);
                    flow.headers = HeadersAt::Passed;
                    flow.eos_held = false;
                    flow.trailers_held = false;
                }
                self.set_access(d, f, Part::Headers, false);
                let buffered = self.take_buffer(d, f);
                let has_data = !buffered.is_empty() || flow.eos_held;
                self.run_headers(d, p + 1, flow.headers_eos);
                if has_data {
                    // The filter has not seen this data yet: it gets it first, in one callback.
                    self.run_data(d, p, buffered, flow.eos_held && !flow.trailers_held);
                }
                if flow.trailers_held {
                    self.run_trailers(d, p);
                }
            }
            (HeadersAt::Passed, Hold::Buffer | Hold::NoBuffer) => {
                {
                    let flow = self.flow(d, f);
                    flow.hold = Hold::Nothing;
                    flow.eos_held = false;
                }
                self.set_access(d, f, Part::Body, false);
                let chunk = self.take_buffer(d, f);
                if !chunk.is_empty() || flow.eos_held {
                    self.run_data(d, p + 1, chunk, flow.eos_held);
                }
            }
            (HeadersAt::Passed, Hold::Trailers) => {
                self.flow(d, f).hold = Hold::Nothing;
                self.set_access(d, f, Part::Trailers, false);
                let chunk = self.take_buffer(d, f);
                if !chunk.is_empty() {
                    self.run_data(d, p + 1, chunk, false);
                }
                self.run_trailers(d, p + 1);
            }
            _ => {}
        }
    }

    // ----- one callback ---------------------------------------------------------------------

    fn ensure_context(&mut self, f: usize) -> Result<u32, Failure> {
        if self.stages[f].created {
            let id = self.data.borrow().stages[f].context_id;
            return if id == 0 { Err(Failure::VmFailed) } else { Ok(id) };
        }
        self.stages[f].created = true;
        let vm = self.stages[f].vm.clone();
        vm.create_stream_context(&self.data, f)
    }

    /// The context of `f` for a callback in `d`; `None` when the filter must be passed by
    /// (a response to a request it never saw).
    fn context_for(&mut self, d: Dir, f: usize) -> Option<Result<u32, Failure>> {
        match d {
            Dir::Request => Some(self.ensure_context(f)),
            Dir::Response if self.stages[f].created => Some(self.ensure_context(f)),
            Dir::Response => None,
        }
    }

    fn set_access(&self, d: Dir, f: usize, part: Part, on: bool) {
        let mut data = self.data.borrow_mut();
        let a = &mut data.stages[f].access;
        match part {
            Part::Headers => a.headers[d] = on,
            Part::Body => a.body[d] = on,
            Part::Trailers => a.trailers[d] = on,
        }
    }

    fn headers_step(&mut self, d: Dir, f: usize, eos: bool) -> Step {
        let ctx = match self.context_for(d, f) {
            None => return Step::Continue,
            Some(Err(e)) => return self.failure(d, f, e),
            Some(Ok(ctx)) => ctx,
        };
        self.set_access(d, f, Part::Headers, true);
        let count = self.data.borrow().headers[d].len() as u32;
        let vm = self.stages[f].vm.clone();
        let raw = vm.on_headers(d, ctx, count, eos);
        let step = self.settle(d, f, raw, CallbackKind::Headers);
        if !matches!(step, Step::Stop { .. }) {
            self.set_access(d, f, Part::Headers, false);
        }
        step
    }

    fn body_step(&mut self, d: Dir, f: usize, eos: bool) -> Step {
        let ctx = match self.context_for(d, f) {
            None => return Step::Continue,
            Some(Err(e)) => return self.failure(d, f, e),
            Some(Ok(ctx)) => ctx,
        };
        let size = {
            let mut data = self.data.borrow_mut();
            let no_trailers = data.trailers[d].is_none();
            let s = &mut data.stages[f];
            s.access.body[d] = true;
            s.access.may_add_trailers[d] = eos && no_trailers;
            s.body[d].len()
        } as u32;
        let vm = self.stages[f].vm.clone();
        let raw = vm.on_body(d, ctx, size, eos);
        self.data.borrow_mut().stages[f].access.may_add_trailers = PerDir::default();
        let step = self.settle(d, f, raw, CallbackKind::Body);
        if !matches!(step, Step::Stop { drop_data: false, .. }) {
            self.set_access(d, f, Part::Body, false);
        }
        step
    }

    fn trailers_step(&mut self, d: Dir, f: usize) -> Step {
        let ctx = match self.context_for(d, f) {
            None => return Step::Continue,
            Some(Err(e)) => return self.failure(d, f, e),
            Some(Ok(ctx)) => ctx,
        };
        self.set_access(d, f, Part::Trailers, true);
        let count = self.data.borrow().trailers[d].as_ref().map_or(0, HeaderMap::len) as u32;
        let vm = self.stages[f].vm.clone();
        let raw = vm.on_trailers(d, ctx, count);
        let step = self.settle(d, f, raw, CallbackKind::Trailers);
        if !matches!(step, Step::Stop { .. }) {
            self.set_access(d, f, Part::Trailers, false);
        }
        step
    }

    /// Turns a callback's outcome and the actions it requested into the next step.
    fn settle(&mut self, d: Dir, f: usize, raw: Raw, kind: CallbackKind) -> Step {
        let raw = match raw {
            Ok(v) => v,
            Err(e) => return self.failure(d, f, e),
        };
        let mut actions = std::mem::take(&mut self.data.borrow_mut().stages[f].actions);
        if actions.close {
            self.reset_stream();
            return Step::Abort;
        }
        if let Some(reply) = actions.local_reply.take() {
            // Whatever the callback returned, a local reply stops the iteration.
            self.put_back_other_direction(d, f, &actions);
            self.start_local_reply(reply);
            return Step::Abort;
        }
        let Some(action) = Action::from_raw(kind, raw) else {
            const NAMES: [[&str; 3]; 2] = [
                ["proxy_on_request_headers", "proxy_on_request_body", "proxy_on_request_trailers"],
                ["proxy_on_response_headers", "proxy_on_response_body", "proxy_on_response_trailers"],
            ];
            let callback = NAMES[d.index()][kind as usize];
            return self.failure(d, f, Failure::BadReturn { callback, value: raw });
        };
        let continued_here = actions.resume[d];
        self.put_back_other_direction(d, f, &actions);
        match action {
            Action::Continue => Step::Continue,
            // A continue requested during the callback runs right after it: no pause.
            Action::Pause(_) | Action::PauseNoBuffer if continued_here => Step::Continue,
            Action::Pause(overflow) => Step::Stop { drop_data: false, overflow },
            Action::PauseNoBuffer => Step::Stop { drop_data: true, overflow: Overflow::Backpressure },
        }
    }

    fn put_back_other_direction(&mut self, d: Dir, f: usize, actions: &crate::stream_data::Actions) {
        let other = d.other();
        if actions.resume[other] {
            self.data.borrow_mut().act(f, |a| a.resume[other] = true);
        }
    }

    fn report(&self, f: usize, failure: &Failure) {
        let vm = &self.stages[f].vm;
        let name = &vm.plugin.name;
        tracing::warn!(filter = %name, fail_open = vm.plugin.fail_open, "filter failed: {failure}");
        vm.services
            .metrics
            .counter(&format!("meshwork_filter_failures_total;.;filter=.={name};.;kind=.={}", failure.kind()))
            .increment(1)
            .ok();
    }

    /// Applies the filter's fail policy. Fail open: the filter is bypassed for the rest of the
    /// stream and what it held moves on. Fail closed: 503, as Envoy's `wasm_fail_stream`.
    fn failure(&mut self, d: Dir, f: usize, failure: Failure) -> Step {
        self.report(f, &failure);
        self.stages[f].skip = true;
        self.data.borrow_mut().stages[f].access = Default::default();
        if self.stages[f].vm.plugin.fail_open {
            if self.holds(d.other(), f) {
                self.deferred.push((d.other(), f));
            }
            return Step::Continue;
        }
        self.start_local_reply(LocalReply {
            status: 503,
            details: "wasm_fail_stream".into(),
            body: Bytes::new(),
            headers: Vec::new(),
            grpc_status: Some(14),
        });
        Step::Abort
    }

    fn settle_deferred(&mut self) {
        self.run_deferred();
        self.process_actions();
    }

    fn run_deferred(&mut self) -> bool {
        let work = std::mem::take(&mut self.deferred);
        let any = !work.is_empty();
        for (d, f) in work {
            self.resume(d, f);
        }
        any
    }

    // ----- replies, resets, outputs ---------------------------------------------------------

    fn reset_stream(&mut self) {
        self.reset = true;
        self.request_aborted = true;
        self.out = PerDir::default();
        self.queued = PerDir::default();
    }

    fn clear_output(&mut self, d: Dir) {
        self.out[d].clear();
        self.queued[d] = 0;
    }

    fn start_local_reply(&mut self, reply: LocalReply) {
        if self.reset {
            return;
        }
        self.request_aborted = true;
        self.clear_output(Dir::Request);
        if self.response_headers_emitted {
            // Too late to answer differently: the client already has response headers.
            self.reset_stream();
            return;
        }
        let run_filters = !self.local_reply_active;
        self.local_reply_active = true;
        self.response_generation += 1;
        self.clear_output(Dir::Response);
        for stage in &mut self.stages {
            stage.flows[Dir::Response] = Flow::default();
        }
        let grpc_trailers_only;
        {
            let mut data = self.data.borrow_mut();
            let grpc =
                data.headers[Dir::Request].get_str("content-type").is_some_and(|c| c.starts_with("application/grpc"));
            grpc_trailers_only = grpc && reply.grpc_status.is_some();
            let mut headers = HeaderMap::new();
            let body_len = reply.body.len().to_string();
            let status = if grpc && reply.grpc_status.is_some() { 200 } else { reply.status };
            let status_text = status.to_string();
            let mut add = |k: &[u8], v: &[u8]| {
                if headers.add(k, v).is_err() {
                    tracing::warn!("dropping an invalid local reply header {:?}", String::from_utf8_lossy(k));
                }
            };
            add(b":status", status_text.as_bytes());
            match reply.grpc_status.filter(|_| grpc) {
                // A gRPC client gets a trailers-only answer, as Envoy sends it: the body (or the
                // details) becomes grpc-message, percent-encoded.
                Some(code) => {
                    add(b"content-type", b"application/grpc");
                    add(b"grpc-status", code.to_string().as_bytes());
                    let text = if reply.body.is_empty() { reply.details.as_bytes() } else { &reply.body[..] };
                    let text = text.strip_suffix(b"\n").unwrap_or(text);
                    add(b"grpc-message", percent_encode(text).as_bytes());
                }
                None => {
                    if !reply.body.is_empty() {
                        add(b"content-type", b"text/plain");
                    }
                    add(b"content-length", body_len.as_bytes());
                }
            }
            for (k, v) in &reply.headers {
                // Filter-supplied headers replace the defaults above (content-type, say).
                if headers.replace(k, v).is_err() {
                    tracing::warn!("dropping an invalid local reply header {:?}", String::from_utf8_lossy(k));
                }
            }
            data.headers[Dir::Response] = headers;
            data.trailers[Dir::Response] = None;
            data.info.response_code = Some(status);
            data.info.response_code_details = Some(reply.details.clone());
            data.info.body_bytes[Dir::Response] = reply.body.len() as u64;
            for s in &mut data.stages {
                s.body[Dir::Response].clear();
                s.access.headers[Dir::Response] = false;
                s.access.body[Dir::Response] = false;
                s.access.trailers[Dir::Response] = false;
            }
        }
        let body = if grpc_trailers_only { Bytes::new() } else { reply.body };
        if run_filters {
            let generation = self.response_generation;
            self.run_headers(Dir::Response, 0, body.is_empty());
            if !body.is_empty() && !self.halted(Dir::Response, generation) {
                self.run_data(Dir::Response, 0, body, true);
            }
        } else {
            // A reply to a reply: sent as is, so two filters cannot bounce replies forever.
            self.emit_headers(Dir::Response, body.is_empty());
            if !body.is_empty() {
                self.emit(Dir::Response, Output::Data { bytes: body, end_stream: true });
            }
        }
    }

    fn emit_headers(&mut self, d: Dir, end_stream: bool) {
        {
            let mut data = self.data.borrow_mut();
            // A filter rewrote the body before the headers left: the origin's length is wrong.
            let rewritten = data.body_rewritten[d] && !(d == Dir::Response && self.local_reply_active);
            if rewritten {
                data.headers[d].remove(b"content-length");
            }
        }
        self.emit(d, Output::Headers { end_stream });
    }

    fn emit(&mut self, d: Dir, output: Output) {
        if self.reset || (d == Dir::Request && self.request_aborted) {
            return;
        }
        match &output {
            Output::Headers { .. } if d == Dir::Response => self.response_headers_emitted = true,
            Output::Data { bytes, .. } => self.queued[d] += bytes.len(),
            _ => {}
        }
        self.out[d].push_back(output);
    }
}

/// Streams answered because a filter buffered past the limit, by direction.
const BUFFER_OVERFLOWS: [&str; 2] = [
    "meshwork_filter_buffer_overflow_total;.;direction=.=request",
    "meshwork_filter_buffer_overflow_total;.;direction=.=response",
];

impl Drop for FilterStream {
    fn drop(&mut self) {
        self.finish();
    }
}

/// gRPC's percent-encoding of `grpc-message`: bytes outside printable ASCII, and `%`.
fn percent_encode(text: &[u8]) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests;
