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
//! Actions a filter requests (continue, local reply, close) run after its callback returns.
//! A local reply goes back through the response callbacks of every filter whose context exists.
//! A failing filter is skipped (fail open) or answered with 503 (fail closed).
//!
//! The engine is synchronous: the proxy pushes events in, takes [`Output`]s out, and calls
//! [`FilterStream::process_actions`] when the stream's waker fires.

use std::collections::VecDeque;
use std::rc::Rc;

use bytes::Bytes;

use crate::abi::{Action, CallbackKind};
use crate::headers::HeaderMap;
use crate::stream_data::{Body, LocalReply, SharedStream, StreamData, StreamInfo};
use crate::vm::{Failure, PluginVm, Raw};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    Request = 0,
    Response = 1,
}

impl Dir {
    fn other(self) -> Dir {
        match self {
            Dir::Request => Dir::Response,
            Dir::Response => Dir::Request,
        }
    }
}

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
#[derive(Clone, Copy, Debug, Default)]
struct Flow {
    headers: HeadersAt,
    hold: Hold,
    headers_eos: bool,
    eos_held: bool,
    trailers_held: bool,
}

struct Stage {
    vm: Rc<PluginVm>,
    created: bool,
    /// Bypassed: the filter failed open (or never saw the request, for local replies).
    skip: bool,
    flows: [Flow; 2],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Continue,
    Stop { drop_data: bool },
    Abort,
}

pub struct FilterStream {
    stages: Vec<Stage>,
    data: SharedStream,
    out: [VecDeque<Output>; 2],
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
            vms.into_iter().map(|vm| Stage { vm, created: false, skip: false, flows: Default::default() }).collect();
        let data = Rc::new(std::cell::RefCell::new(StreamData::new(request_headers, info, stages.len())));
        FilterStream {
            stages,
            data,
            out: Default::default(),
            request_aborted: false,
            reset: false,
            response_generation: 0,
            local_reply_active: false,
            response_headers_emitted: false,
            deferred: Vec::new(),
            finished: false,
        }
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

    pub fn next_output(&mut self, dir: Dir) -> Option<Output> {
        self.out[dir as usize].pop_front()
    }

    // ----- events in ------------------------------------------------------------------------

    pub fn request_headers(&mut self, end_stream: bool) {
        self.run_headers(Dir::Request, 0, end_stream);
        self.settle_deferred();
    }

    pub fn request_data(&mut self, bytes: Bytes, end_stream: bool) {
        self.data.borrow_mut().info.request_body_bytes += bytes.len() as u64;
        self.run_data(Dir::Request, 0, bytes, end_stream);
        self.settle_deferred();
    }

    pub fn request_trailers(&mut self, trailers: HeaderMap) {
        self.data.borrow_mut().request_trailers = Some(trailers);
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
            d.response_headers = headers;
        }
        self.run_headers(Dir::Response, 0, end_stream);
        self.settle_deferred();
    }

    pub fn response_data(&mut self, bytes: Bytes, end_stream: bool) {
        if self.local_reply_active || self.reset {
            return;
        }
        self.data.borrow_mut().info.response_body_bytes += bytes.len() as u64;
        self.run_data(Dir::Response, 0, bytes, end_stream);
        self.settle_deferred();
    }

    pub fn response_trailers(&mut self, trailers: HeaderMap) {
        if self.local_reply_active || self.reset {
            return;
        }
        self.data.borrow_mut().response_trailers = Some(trailers);
        self.run_trailers(Dir::Response, 0);
        self.settle_deferred();
    }

    /// The proxy's own reply (no upstream, upstream failed, timeout), sent through the response
    /// callbacks as Envoy sends its local replies.
    pub fn local_reply(&mut self, reply: LocalReply) {
        self.start_local_reply(reply);
        self.settle_deferred();
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
                    for d in [Dir::Request, Dir::Response] {
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
                if actions.continue_request {
                    self.resume(Dir::Request, f);
                }
                if actions.continue_response {
                    self.resume(Dir::Response, f);
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
        &mut self.stages[f].flows[d as usize]
    }

    fn holds(&self, d: Dir, f: usize) -> bool {
        let flow = &self.stages[f].flows[d as usize];
        matches!(flow.headers, HeadersAt::Stopped | HeadersAt::StoppedSeeingBody) || flow.hold != Hold::Nothing
    }

    fn take_buffer(&self, d: Dir, f: usize) -> Bytes {
        self.with_buffer(d, f, Body::take)
    }

    fn with_buffer<R>(&self, d: Dir, f: usize, op: impl FnOnce(&mut Body) -> R) -> R {
        let mut data = self.data.borrow_mut();
        let s = &mut data.stages[f];
        op(match d {
            Dir::Request => &mut s.request_body,
            Dir::Response => &mut s.response_body,
        })
    }

    fn has_trailers(&self, d: Dir) -> bool {
        let data = self.data.borrow();
        match d {
            Dir::Request => data.request_trailers.is_some(),
            Dir::Response => data.response_trailers.is_some(),
        }
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
                Step::Stop { .. } => {
                    self.flow(d, f).headers = if self.stages[f].vm.plugin.allow_on_headers_stop_iteration && !eos {
                        HeadersAt::StoppedSeeingBody
                    } else {
                        HeadersAt::Stopped
                    };
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
                Step::Stop { drop_data } => {
                    let flow = self.flow(d, f);
                    flow.eos_held = eos;
                    flow.hold = if drop_data { Hold::NoBuffer } else { Hold::Buffer };
                    if drop_data {
                        self.with_buffer(d, f, Body::clear);
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
                        self.set_access(d, f, Access::Body, false);
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
        self.set_access(d, f, Access::Headers, false);
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
                self.set_access(d, f, Access::Body, false);
                let chunk = self.take_buffer(d, f);
                if !chunk.is_empty() || flow.eos_held {
                    self.run_data(d, p + 1, chunk, flow.eos_held);
                }
                if hold == Hold::Trailers {
                    self.set_access(d, f, Access::Trailers, false);
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
                self.set_access(d, f, Access::Headers, false);
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
                self.set_access(d, f, Access::Body, false);
                let chunk = self.take_buffer(d, f);
                if !chunk.is_empty() || flow.eos_held {
                    self.run_data(d, p + 1, chunk, flow.eos_held);
                }
            }
            (HeadersAt::Passed, Hold::Trailers) => {
                self.flow(d, f).hold = Hold::Nothing;
                self.set_access(d, f, Access::Trailers, false);
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

    fn set_access(&self, d: Dir, f: usize, what: Access, on: bool) {
        let mut data = self.data.borrow_mut();
        let a = &mut data.stages[f].access;
        match (d, what) {
            (Dir::Request, Access::Headers) => a.request_headers = on,
            (Dir::Request, Access::Body) => a.request_body = on,
            (Dir::Request, Access::Trailers) => a.request_trailers = on,
            (Dir::Response, Access::Headers) => a.response_headers = on,
            (Dir::Response, Access::Body) => a.response_body = on,
            (Dir::Response, Access::Trailers) => a.response_trailers = on,
        }
    }

    fn headers_step(&mut self, d: Dir, f: usize, eos: bool) -> Step {
        let ctx = match self.context_for(d, f) {
            None => return Step::Continue,
            Some(Err(e)) => return self.failure(d, f, e),
            Some(Ok(ctx)) => ctx,
        };
        self.set_access(d, f, Access::Headers, true);
        let count = {
            let data = self.data.borrow();
            match d {
                Dir::Request => data.request_headers.len(),
                Dir::Response => data.response_headers.len(),
            }
        } as u32;
        let vm = self.stages[f].vm.clone();
        let raw = match d {
            Dir::Request => vm.on_request_headers(ctx, count, eos),
            Dir::Response => vm.on_response_headers(ctx, count, eos),
        };
        let step = self.settle(d, f, raw, CallbackKind::Headers);
        if !matches!(step, Step::Stop { .. }) {
            self.set_access(d, f, Access::Headers, false);
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
            let no_trailers = match d {
                Dir::Request => data.request_trailers.is_none(),
                Dir::Response => data.response_trailers.is_none(),
            };
            let s = &mut data.stages[f];
            match d {
                Dir::Request => {
                    s.access.request_body = true;
                    s.access.may_add_request_trailers = eos && no_trailers;
                    s.request_body.len()
                }
                Dir::Response => {
                    s.access.response_body = true;
                    s.access.may_add_response_trailers = eos && no_trailers;
                    s.response_body.len()
                }
            }
        } as u32;
        let vm = self.stages[f].vm.clone();
        let raw = match d {
            Dir::Request => vm.on_request_body(ctx, size, eos),
            Dir::Response => vm.on_response_body(ctx, size, eos),
        };
        {
            let mut data = self.data.borrow_mut();
            let a = &mut data.stages[f].access;
            a.may_add_request_trailers = false;
            a.may_add_response_trailers = false;
        }
        let step = self.settle(d, f, raw, CallbackKind::Body);
        if step != (Step::Stop { drop_data: false }) {
            self.set_access(d, f, Access::Body, false);
        }
        step
    }

    fn trailers_step(&mut self, d: Dir, f: usize) -> Step {
        let ctx = match self.context_for(d, f) {
            None => return Step::Continue,
            Some(Err(e)) => return self.failure(d, f, e),
            Some(Ok(ctx)) => ctx,
        };
        self.set_access(d, f, Access::Trailers, true);
        let count = {
            let data = self.data.borrow();
            match d {
                Dir::Request => data.request_trailers.as_ref().map_or(0, HeaderMap::len),
                Dir::Response => data.response_trailers.as_ref().map_or(0, HeaderMap::len),
            }
        } as u32;
        let vm = self.stages[f].vm.clone();
        let raw = match d {
            Dir::Request => vm.on_request_trailers(ctx, count),
            Dir::Response => vm.on_response_trailers(ctx, count),
        };
        let step = self.settle(d, f, raw, CallbackKind::Trailers);
        if !matches!(step, Step::Stop { .. }) {
            self.set_access(d, f, Access::Trailers, false);
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
            let callback = match (d, kind) {
                (Dir::Request, CallbackKind::Headers) => "proxy_on_request_headers",
                (Dir::Request, CallbackKind::Body) => "proxy_on_request_body",
                (Dir::Request, CallbackKind::Trailers) => "proxy_on_request_trailers",
                (Dir::Response, CallbackKind::Headers) => "proxy_on_response_headers",
                (Dir::Response, CallbackKind::Body) => "proxy_on_response_body",
                (Dir::Response, CallbackKind::Trailers) => "proxy_on_response_trailers",
            };
            return self.failure(d, f, Failure::BadReturn { callback, value: raw });
        };
        let continued_here = match d {
            Dir::Request => actions.continue_request,
            Dir::Response => actions.continue_response,
        };
        self.put_back_other_direction(d, f, &actions);
        match action {
            Action::Continue => Step::Continue,
            // A continue requested during the callback runs right after it: no pause.
            Action::Pause | Action::PauseNoBuffer if continued_here => Step::Continue,
            Action::Pause => Step::Stop { drop_data: false },
            Action::PauseNoBuffer => Step::Stop { drop_data: true },
        }
    }

    fn put_back_other_direction(&mut self, d: Dir, f: usize, actions: &crate::stream_data::Actions) {
        let other = match d.other() {
            Dir::Request => actions.continue_request,
            Dir::Response => actions.continue_response,
        };
        if other {
            self.data.borrow_mut().act(f, |a| match d.other() {
                Dir::Request => a.continue_request = true,
                Dir::Response => a.continue_response = true,
            });
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
        {
            let mut data = self.data.borrow_mut();
            data.stages[f].access = Default::default();
        }
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
        self.out = Default::default();
    }

    fn start_local_reply(&mut self, reply: LocalReply) {
        if self.reset {
            return;
        }
        self.request_aborted = true;
        self.out[Dir::Request as usize].clear();
        if self.response_headers_emitted {
            // Too late to answer differently: the client already has response headers.
            self.reset_stream();
            return;
        }
        let run_filters = !self.local_reply_active;
        self.local_reply_active = true;
        self.response_generation += 1;
        self.out[Dir::Response as usize].clear();
        for f in 0..self.stages.len() {
            self.stages[f].flows[Dir::Response as usize] = Flow::default();
        }
        {
            let mut data = self.data.borrow_mut();
            let grpc = data.request_headers.get_str("content-type").is_some_and(|c| c.starts_with("application/grpc"));
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
            if !reply.body.is_empty() {
                add(b"content-type", b"text/plain");
            }
            add(b"content-length", body_len.as_bytes());
            if grpc && let Some(code) = reply.grpc_status {
                add(b"grpc-status", code.to_string().as_bytes());
                add(b"grpc-message", reply.details.as_bytes());
            }
            for (k, v) in &reply.headers {
                // Filter-supplied headers replace the defaults above (content-type, say).
                if headers.replace(k, v).is_err() {
                    tracing::warn!("dropping an invalid local reply header {:?}", String::from_utf8_lossy(k));
                }
            }
            data.response_headers = headers;
            data.response_trailers = None;
            data.info.response_code = Some(status);
            data.info.response_code_details = Some(reply.details.clone());
            data.info.response_body_bytes = reply.body.len() as u64;
            for s in &mut data.stages {
                s.response_body.clear();
                s.access.response_headers = false;
                s.access.response_body = false;
                s.access.response_trailers = false;
            }
        }
        let body = reply.body;
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
            let data = &mut *data;
            // A filter rewrote the body before the headers left: the origin's length is wrong.
            let (rewritten, headers) = match d {
                Dir::Request => (data.request_body_rewritten, &mut data.request_headers),
                Dir::Response => (data.response_body_rewritten && !self.local_reply_active, &mut data.response_headers),
            };
            if rewritten {
                headers.remove(b"content-length");
            }
        }
        self.emit(d, Output::Headers { end_stream });
    }

    fn emit(&mut self, d: Dir, output: Output) {
        if self.reset || (d == Dir::Request && self.request_aborted) {
            return;
        }
        if d == Dir::Response && matches!(output, Output::Headers { .. }) {
            self.response_headers_emitted = true;
        }
        self.out[d as usize].push_back(output);
    }
}

#[derive(Clone, Copy)]
enum Access {
    Headers,
    Body,
    Trailers,
}

impl Drop for FilterStream {
    fn drop(&mut self) {
        self.finish();
    }
}
