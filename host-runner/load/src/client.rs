//! The client side of one connection: a lean HTTP/1.1 exchange over a raw socket (the request
//! is encoded once; the response is parsed in place and its body counted, not kept), and
//! HTTP/2 (h2c, prior knowledge) through hyper.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Why a request got no response. Kinds are what the summary counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fail {
    Connect,
    Write,
    Read,
    Timeout,
    Protocol,
}

impl Fail {
    pub fn kind(self) -> &'static str {
        match self {
            Fail::Connect => "connect",
            Fail::Write => "write",
            Fail::Read => "read",
            Fail::Timeout => "timeout",
            Fail::Protocol => "protocol",
        }
    }
}

/// What came back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    /// Header and body bytes read.
    pub bytes: u64,
    /// False when the server will close the connection after this response.
    pub keep_alive: bool,
}

pub async fn connect(addr: SocketAddr) -> Result<TcpStream, Fail> {
    let stream = TcpStream::connect(addr).await.map_err(|_| Fail::Connect)?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

const BUF: usize = 16 * 1024;
const MAX_HEAD: usize = 1 << 20;

/// One HTTP/1.1 connection, one request at a time.
pub struct H1 {
    stream: TcpStream,
    buf: Vec<u8>,
}

enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

impl H1 {
    pub fn new(stream: TcpStream) -> H1 {
        H1 { stream, buf: vec![0; BUF] }
    }

    pub async fn exchange(&mut self, request: &[u8], head: bool) -> Result<Reply, Fail> {
        self.stream.write_all(request).await.map_err(|_| Fail::Write)?;
        self.read_response(head).await
    }

    async fn fill(&mut self, from: usize) -> Result<usize, Fail> {
        match self.stream.read(&mut self.buf[from..]).await {
            Ok(0) | Err(_) => Err(Fail::Read),
            Ok(n) => Ok(n),
        }
    }

    async fn read_response(&mut self, head: bool) -> Result<Reply, Fail> {
        let mut filled = 0;
        let (status, head_len, framing, mut keep_alive) = loop {
            filled += self.fill(filled).await?;
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(&self.buf[..filled]) {
                Ok(httparse::Status::Complete(len)) => {
                    let status = response.code.unwrap_or(0);
                    let http10 = response.version == Some(0);
                    let mut keep_alive = !http10;
                    let mut length = None;
                    let mut chunked = false;
                    for h in response.headers.iter() {
                        // Only three names matter: compare lengths before bytes.
                        if !matches!(h.name.len(), 10 | 14 | 17) {
                            continue;
                        }
                        if h.name.eq_ignore_ascii_case("content-length") {
                            length = std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse::<u64>().ok());
                            if length.is_none() {
                                return Err(Fail::Protocol);
                            }
                        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                            chunked = h.value.windows(7).any(|w| w.eq_ignore_ascii_case(b"chunked"));
                        } else if h.name.eq_ignore_ascii_case("connection") {
                            if h.value.windows(5).any(|w| w.eq_ignore_ascii_case(b"close")) {
                                keep_alive = false;
                            } else if h.value.windows(10).any(|w| w.eq_ignore_ascii_case(b"keep-alive")) {
                                keep_alive = true;
                            }
                        }
                    }
                    let framing = if head || status == 204 || status == 304 || (100..200).contains(&status) {
                        Framing::None
                    } else if chunked {
                        Framing::Chunked
                    } else if let Some(n) = length {
                        Framing::Length(n)
                    } else {
                        Framing::UntilClose
                    };
                    break (status, len, framing, keep_alive);
                }
                Ok(httparse::Status::Partial) => {
                    if filled == self.buf.len() {
                        if self.buf.len() >= MAX_HEAD {
                            return Err(Fail::Protocol);
                        }
                        self.buf.resize(self.buf.len() * 2, 0);
                    }
                }
                Err(_) => return Err(Fail::Protocol),
            }
        };
        let mut bytes = filled as u64;
        match framing {
            Framing::None => {}
            Framing::Length(n) => {
                let mut have = (filled - head_len) as u64;
                while have < n {
                    let got = self.fill(0).await? as u64;
                    have += got;
                    bytes += got;
                }
            }
            Framing::Chunked => {
                let mut decoder = Chunked::default();
                let mut start = head_len;
                let mut end = filled;
                loop {
                    if decoder.feed(&self.buf[start..end])? {
                        break;
                    }
                    let got = self.fill(0).await?;
                    bytes += got as u64;
                    start = 0;
                    end = got;
                }
            }
            Framing::UntilClose => {
                keep_alive = false;
                while let Ok(got) = self.fill(0).await {
                    bytes += got as u64;
                }
            }
        }
        if self.buf.len() > BUF {
            self.buf.truncate(BUF);
            self.buf.shrink_to_fit();
        }
        // The whole response is read and the server sends nothing before the next request: forget
        // the socket's cached readability, so the next read waits for epoll instead of first
        // trying a read that can only fail with EAGAIN (one syscall less per request). tokio
        // clears only the readiness it observed, so an event arriving meanwhile is kept.
        let _ =
            self.stream.try_io(tokio::io::Interest::READABLE, || Err::<(), _>(std::io::ErrorKind::WouldBlock.into()));
        Ok(Reply { status, bytes, keep_alive })
    }
}

/// Walks a chunked body without keeping it: sizes, data, CRLFs, trailers.
#[derive(Default)]
struct Chunked {
    state: ChunkState,
    size: u64,
    /// Bytes of the current trailer line (0 at a line start).
    line: usize,
}

#[derive(Default, PartialEq)]
enum ChunkState {
    #[default]
    Size,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    Trailer,
    TrailerLf,
}

impl Chunked {
    /// Feeds bytes; true once the body (and its trailers) ended.
    fn feed(&mut self, mut data: &[u8]) -> Result<bool, Fail> {
        while !data.is_empty() {
            match self.state {
                ChunkState::Size => {
                    let b = data[0];
                    data = &data[1..];
                    match b {
                        b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                            let digit = (b as char).to_digit(16).unwrap_or(0) as u64;
                            self.size = self.size.checked_mul(16).ok_or(Fail::Protocol)? + digit;
                        }
                        b';' | b' ' | b'\t' => self.state = ChunkState::Extension,
                        b'\r' => self.state = ChunkState::SizeLf,
                        _ => return Err(Fail::Protocol),
                    }
                }
                ChunkState::Extension => {
                    let b = data[0];
                    data = &data[1..];
                    if b == b'\r' {
                        self.state = ChunkState::SizeLf;
                    }
                }
                ChunkState::SizeLf => {
                    if data[0] != b'\n' {
                        return Err(Fail::Protocol);
                    }
                    data = &data[1..];
                    if self.size == 0 {
                        self.state = ChunkState::Trailer;
                        self.line = 0;
                    } else {
                        self.state = ChunkState::Data;
                    }
                }
                ChunkState::Data => {
                    let take = (data.len() as u64).min(self.size);
                    data = &data[take as usize..];
                    self.size -= take;
                    if self.size == 0 {
                        self.state = ChunkState::DataCr;
                    }
                }
                ChunkState::DataCr => {
                    if data[0] != b'\r' {
                        return Err(Fail::Protocol);
                    }
                    data = &data[1..];
                    self.state = ChunkState::DataLf;
                }
                ChunkState::DataLf => {
                    if data[0] != b'\n' {
                        return Err(Fail::Protocol);
                    }
                    data = &data[1..];
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailer => {
                    let b = data[0];
                    data = &data[1..];
                    if b == b'\r' {
                        self.state = ChunkState::TrailerLf;
                    } else {
                        self.line += 1;
                    }
                }
                ChunkState::TrailerLf => {
                    if data[0] != b'\n' {
                        return Err(Fail::Protocol);
                    }
                    data = &data[1..];
                    if self.line == 0 {
                        return Ok(true);
                    }
                    self.line = 0;
                    self.state = ChunkState::Trailer;
                }
            }
        }
        Ok(false)
    }
}

/// One HTTP/2 connection (h2c with prior knowledge); clones share it, one stream each.
#[derive(Clone)]
pub struct H2 {
    sender: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
}

impl H2 {
    pub async fn connect(addr: SocketAddr) -> Result<H2, Fail> {
        let stream = connect(addr).await?;
        let (sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .map_err(|_| Fail::Connect)?;
        tokio::spawn(conn);
        Ok(H2 { sender })
    }

    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    pub async fn exchange(&mut self, request: http::Request<Full<Bytes>>) -> Result<Reply, Fail> {
        self.sender.ready().await.map_err(|_| Fail::Write)?;
        let response = self.sender.send_request(request).await.map_err(|e| {
            if e.is_timeout() {
                Fail::Timeout
            } else if e.is_parse() {
                Fail::Protocol
            } else {
                Fail::Read
            }
        })?;
        let status = response.status().as_u16();
        let mut body = response.into_body();
        let mut bytes = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| Fail::Read)?;
            if let Some(data) = frame.data_ref() {
                bytes += data.len() as u64;
            }
        }
        Ok(Reply { status, bytes, keep_alive: true })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_in_any_split() {
        let body = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nx-t: 1\r\n\r\n";
        for split in 0..body.len() {
            let mut d = Chunked::default();
            let first = d.feed(&body[..split]).unwrap();
            assert!(!first, "ended early at {split}");
            assert!(d.feed(&body[split..]).unwrap(), "did not end (split {split})");
        }
        assert!(Chunked::default().feed(b"zz\r\n").is_err());
    }

    #[test]
    fn h1_exchange_against_a_scripted_server() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move {
                let (mut s, _) = listener.accept().await.unwrap();
                let answers: [&[u8]; 3] = [
                    b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
                    b"HTTP/1.1 503 Service Unavailable\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
                    b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil close",
                ];
                let mut buf = [0u8; 1024];
                for a in answers {
                    let _ = s.read(&mut buf).await.unwrap();
                    // Dribble the answer to exercise partial reads.
                    for piece in a.chunks(7) {
                        s.write_all(piece).await.unwrap();
                        s.flush().await.unwrap();
                        tokio::task::yield_now().await;
                    }
                }
            });
            let mut c = H1::new(connect(addr).await.unwrap());
            let req = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";
            let r = c.exchange(req, false).await.unwrap();
            assert_eq!((r.status, r.keep_alive), (200, true));
            let r = c.exchange(req, false).await.unwrap();
            assert_eq!(r.status, 503);
            let r = c.exchange(req, false).await.unwrap();
            assert_eq!((r.status, r.keep_alive), (200, false));
            assert_eq!(c.exchange(req, false).await, Err(Fail::Read));
        });
    }
}
