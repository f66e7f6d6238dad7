//! One TCP connection through a chain of network filters, with Envoy's semantics (its
//! `envoy.filters.network.wasm` in front of a TCP proxy):
//!
//! - each filter gets a context per connection and `proxy_on_new_connection` in order; Pause
//!   stops there, and the upstream is connected only once every filter has continued;
//! - bytes from the client pass filters 0..n (`proxy_on_downstream_data`), bytes to the client
//!   pass them n..0 (`proxy_on_upstream_data`, Envoy runs write filters in reverse); Pause holds
//!   the data at the filter, which is called again with everything it holds as more arrives,
//!   and `proxy_continue_stream` or a later Continue releases it;
//! - the client closing gives `proxy_on_downstream_connection_close` (1 local, 2 remote), the
//!   upstream's end of stream `proxy_on_upstream_connection_close(0)`; at the end, every context
//!   gets `proxy_on_done`, `proxy_on_log`, `proxy_on_delete`;
//! - a filter whose VM fails is skipped (fail open) or closes the connection (fail closed).
//!
//! The connection is kept as a [`StreamData`] with `network` set: a stage's body buffers are
//! its DOWNSTREAM_DATA ([`Dir::Request`]) and UPSTREAM_DATA ([`Dir::Response`]). Like the HTTP
//! engine this is synchronous: the proxy pushes events in and takes bytes out.

use std::collections::VecDeque;
use std::rc::Rc;

use bytes::Bytes;

use crate::error::Failure;
use crate::headers::HeaderMap;
use crate::stream_data::{Dir, PerDir, SharedStream, StreamData, StreamInfo};
use crate::vm::PluginVm;

/// Who closed the client connection (`proxy_peer_type_t`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    Unknown = 0,
    Local = 1,
    Remote = 2,
}

struct Stage {
    vm: Rc<PluginVm>,
    created: bool,
    skip: bool,
    /// Holding data in this direction (paused on it).
    holds: PerDir<bool>,
    /// The data it holds ends the stream.
    eos_held: PerDir<bool>,
}

pub struct ConnectionStream {
    stages: Vec<Stage>,
    data: SharedStream,
    out: PerDir<VecDeque<Bytes>>,
    queued: PerDir<usize>,
    /// The end of stream has left the chain in this direction.
    out_eos: PerDir<bool>,
    buffer_limit: usize,
    /// The first filter whose `proxy_on_new_connection` has not continued (None: all have).
    opening_at: Option<usize>,
    closed: bool,
    close_events: PerDir<bool>,
    finished: bool,
}

impl std::fmt::Debug for ConnectionStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionStream").field("filters", &self.stages.len()).field("closed", &self.closed).finish()
    }
}

impl ConnectionStream {
    pub fn new(vms: impl IntoIterator<Item = Rc<PluginVm>>, info: StreamInfo, buffer_limit: usize) -> ConnectionStream {
        let stages: Vec<Stage> = vms
            .into_iter()
            .map(|vm| Stage { vm, created: false, skip: false, holds: PerDir::default(), eos_held: PerDir::default() })
            .collect();
        let mut data = StreamData::new(HeaderMap::new(), info, stages.len());
        data.network = true;
        ConnectionStream {
            stages,
            data: Rc::new(std::cell::RefCell::new(data)),
            out: PerDir::default(),
            queued: PerDir::default(),
            out_eos: PerDir::default(),
            buffer_limit: buffer_limit.max(1),
            opening_at: Some(0),
            closed: false,
            close_events: PerDir::default(),
            finished: false,
        }
    }

    pub fn data(&self) -> &SharedStream {
        &self.data
    }

    /// Stage index of position `p` in direction `d`.
    fn index(&self, d: Dir, p: usize) -> usize {
        match d {
            Dir::Request => p,
            Dir::Response => self.stages.len() - 1 - p,
        }
    }

    fn position(&self, d: Dir, i: usize) -> usize {
        self.index(d, i)
    }

    /// Starts every filter's connection context; the upstream may be connected once
    /// [`ConnectionStream::may_connect`] says so.
    pub fn open(&mut self) {
        self.continue_opening(0);
        self.process_actions();
    }

    /// Every filter let the connection through (and none closed it).
    pub fn may_connect(&self) -> bool {
        self.opening_at.is_none() && !self.closed
    }

    /// A filter (or a fail-closed failure) asked to close the connection.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    fn continue_opening(&mut self, from: usize) {
        for i in from..self.stages.len() {
            if self.closed {
                return;
            }
            self.opening_at = Some(i);
            if self.stages[i].skip {
                continue;
            }
            let result = self.create(i).and_then(|ctx| self.stages[i].vm.on_new_connection(ctx));
            match result {
                Ok(0) => {}
                Ok(_) => return,
                Err(failure) => {
                    if !self.fail(i, failure) {
                        return;
                    }
                }
            }
        }
        self.opening_at = None;
    }

    fn create(&mut self, i: usize) -> Result<u32, Failure> {
        if !self.stages[i].created {
            let vm = self.stages[i].vm.clone();
            vm.create_connection_context(&self.data, i)?;
            self.stages[i].created = true;
        }
        Ok(self.data.borrow().stages[i].context_id)
    }

    /// Applies a filter's fail policy; true when the connection goes on without it.
    fn fail(&mut self, i: usize, failure: Failure) -> bool {
        let plugin = &self.stages[i].vm.plugin;
        tracing::warn!(filter = %plugin.name, "network filter failed: {failure}");
        if plugin.fail_open {
            self.stages[i].skip = true;
            true
        } else {
            self.closed = true;
            false
        }
    }

    /// Bytes (and the end of stream) in direction `d`: from the client (`Request`) or from the
    /// upstream (`Response`).
    pub fn data_in(&mut self, d: Dir, bytes: Bytes, end_stream: bool) {
        if self.closed || self.stages.is_empty() {
            if !self.closed {
                self.emit(d, bytes, end_stream);
            }
            return;
        }
        self.data.borrow_mut().info.body_bytes[d] += bytes.len() as u64;
        // New bytes enter at the first filter; a filter holding data gets them appended and is
        // called again with everything it holds.
        let i = self.index(d, 0);
        self.data.borrow_mut().stages[i].body[d].append(bytes);
        self.stages[i].eos_held[d] |= end_stream;
        self.run(d, 0);
        self.process_actions();
    }

    /// Runs the data held at position `p` of direction `d` through the filters from there.
    fn run(&mut self, d: Dir, from: usize) {
        let n = self.stages.len();
        let mut p = from;
        while p < n {
            if self.closed {
                return;
            }
            let i = self.index(d, p);
            // Client data does not pass a filter whose connection has not opened yet.
            if d == Dir::Request && self.opening_at.is_some_and(|at| i > at) {
                self.stages[i].holds[d] = true;
                return;
            }
            let eos = self.stages[i].eos_held[d];
            let verdict = if self.stages[i].skip || !self.stages[i].created {
                Ok(0)
            } else {
                let ctx = self.data.borrow().stages[i].context_id;
                let size = {
                    let mut data = self.data.borrow_mut();
                    let s = &mut data.stages[i];
                    s.access.body[d] = true;
                    s.body[d].len() as u32
                };
                self.stages[i].vm.on_data(d, ctx, size, eos)
            };
            match verdict {
                Ok(0) => {
                    self.data.borrow_mut().stages[i].access.body[d] = false;
                    if d == Dir::Request && self.opening_at == Some(i) {
                        // Data passing the paused filter opens the rest of the chain (Envoy).
                        self.continue_opening(i + 1);
                    }
                    self.pass(d, p);
                    p += 1;
                }
                Ok(_) => {
                    self.stages[i].holds[d] = true;
                    return;
                }
                Err(failure) => {
                    self.data.borrow_mut().stages[i].access.body[d] = false;
                    if !self.fail(i, failure) {
                        return;
                    }
                    self.pass(d, p);
                    p += 1;
                }
            }
        }
    }

    /// Moves what position `p` holds to the next filter, or out of the chain.
    fn pass(&mut self, d: Dir, p: usize) {
        let i = self.index(d, p);
        let bytes = self.data.borrow_mut().stages[i].body[d].take();
        let eos = std::mem::take(&mut self.stages[i].eos_held[d]);
        self.stages[i].holds[d] = false;
        if p + 1 < self.stages.len() {
            let next = self.index(d, p + 1);
            self.data.borrow_mut().stages[next].body[d].append(bytes);
            self.stages[next].eos_held[d] |= eos;
        } else {
            self.emit(d, bytes, eos);
        }
    }

    fn emit(&mut self, d: Dir, bytes: Bytes, eos: bool) {
        if !bytes.is_empty() {
            self.queued[d] += bytes.len();
            self.out[d].push_back(bytes);
        }
        self.out_eos[d] |= eos;
    }

    /// Carries out what filters asked for from outside the engine's own calls (callouts,
    /// timers): continue a direction, close the connection.
    pub fn process_actions(&mut self) {
        loop {
            if !std::mem::take(&mut self.data.borrow_mut().actions_pending) {
                return;
            }
            for i in 0..self.stages.len() {
                let actions = std::mem::take(&mut self.data.borrow_mut().stages[i].actions);
                if actions.close {
                    self.closed = true;
                }
                if self.closed {
                    continue;
                }
                if actions.resume[Dir::Request] && self.opening_at == Some(i) {
                    self.continue_opening(i + 1);
                    if self.stages[i].holds[Dir::Request] {
                        self.stages[i].holds[Dir::Request] = false;
                        let p = self.position(Dir::Request, i);
                        self.pass(Dir::Request, p);
                        self.run(Dir::Request, p + 1);
                    }
                    continue;
                }
                for d in Dir::BOTH {
                    if actions.resume[d] && self.stages[i].holds[d] {
                        let p = self.position(d, i);
                        self.data.borrow_mut().stages[i].access.body[d] = false;
                        self.pass(d, p);
                        self.run(d, p + 1);
                    }
                }
            }
        }
    }

    /// Bytes ready to leave in direction `d` (towards the upstream for `Request`).
    pub fn next_output(&mut self, d: Dir) -> Option<Bytes> {
        let bytes = self.out[d].pop_front()?;
        self.queued[d] -= bytes.len();
        Some(bytes)
    }

    /// The end of stream has left the chain in direction `d` (and nothing is queued).
    pub fn output_ended(&self, d: Dir) -> bool {
        self.out_eos[d] && self.out[d].is_empty()
    }

    /// Bytes of direction `d` inside the chain.
    pub fn buffered(&self, d: Dir) -> usize {
        let data = self.data.borrow();
        data.stages.iter().map(|s| s.body[d].len()).sum::<usize>() + self.queued[d]
    }

    /// Whether to read more in direction `d` now (backpressure at the buffer limit).
    pub fn accepts(&self, d: Dir) -> bool {
        self.queued[d] == 0 && self.buffered(d) < self.buffer_limit
    }

    /// The client connection closed (`Local`: meshwork closed it).
    pub fn downstream_closed(&mut self, peer: Peer) {
        self.close_event(Dir::Request, peer as u32);
    }

    /// The upstream ended its stream (Envoy reports only an orderly end, with peer Unknown).
    pub fn upstream_closed(&mut self) {
        self.close_event(Dir::Response, Peer::Unknown as u32);
    }

    fn close_event(&mut self, d: Dir, peer: u32) {
        if std::mem::replace(&mut self.close_events[d], true) {
            return;
        }
        for i in 0..self.stages.len() {
            let stage = &self.stages[i];
            if stage.created && !stage.skip {
                let ctx = self.data.borrow().stages[i].context_id;
                if let Err(failure) = stage.vm.on_connection_close(d, ctx, peer) {
                    self.fail(i, failure);
                }
            }
        }
    }

    /// Ends every filter's context: `proxy_on_done`, `proxy_on_log`, `proxy_on_delete`.
    pub fn finish(&mut self) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        for i in 0..self.stages.len() {
            if self.stages[i].created {
                let ctx = self.data.borrow().stages[i].context_id;
                let _ = self.stages[i].vm.finish_connection_context(ctx);
            }
        }
    }
}

impl Drop for ConnectionStream {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests;
