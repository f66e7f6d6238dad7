//! A small async Redis client: a few connections, each used by one pipeline at a time, opened
//! on first use and reopened after any failure. A connection whose state is unknown (an I/O
//! error, a timeout, a protocol error) is closed rather than reused, so a late reply can never
//! be read as the answer to a later command.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::resp::{self, ProtocolError, Reply};

/// Where the store is: `redis://[[user]:password@]host[:port][/db]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisUrl {
    /// `host:port`, as given (a name is resolved on every connect).
    pub addr: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub db: u32,
}

impl RedisUrl {
    pub fn parse(text: &str) -> Result<RedisUrl, String> {
        let usage = "expected redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]";
        if text.starts_with("rediss://") {
            return Err(format!("{text:?}: TLS (rediss://) is not supported; {usage}"));
        }
        let rest = text.strip_prefix("redis://").ok_or_else(|| format!("{text:?}: {usage}"))?;
        let (authority, db) = match rest.split_once('/') {
            Some((a, "")) => (a, 0),
            Some((a, db)) => {
                (a, db.parse().map_err(|_| format!("{text:?}: database {db:?} is not a number; {usage}"))?)
            }
            None => (rest, 0),
        };
        let (credentials, host) = match authority.rsplit_once('@') {
            Some((c, h)) => (Some(c), h),
            None => (None, authority),
        };
        let (username, password) = match credentials {
            None => (None, None),
            Some(c) => match c.split_once(':') {
                Some((u, p)) => ((!u.is_empty()).then(|| u.to_owned()), Some(p.to_owned())),
                None => (None, Some(c.to_owned())),
            },
        };
        if host.is_empty() {
            return Err(format!("{text:?}: no host; {usage}"));
        }
        let has_port = match host.rfind(']') {
            Some(bracket) => host[bracket..].contains(':'),
            None => host.contains(':'),
        };
        let addr = if has_port { host.to_owned() } else { format!("{host}:6379") };
        Ok(RedisUrl { addr, username, password, db })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("cannot connect to Redis at {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("Redis at {addr} did not answer within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    #[error("connection to Redis at {addr} failed: {source}")]
    Io { addr: String, source: std::io::Error },
    #[error("Redis at {addr}: {source}")]
    Protocol { addr: String, source: ProtocolError },
    #[error("Redis refused {command}: {message}")]
    Refused { command: String, message: String },
    #[error("Redis answered {command} with {reply:?}")]
    Unexpected { command: String, reply: Reply },
}

/// A command: its arguments, the first being its name.
pub type Command = Vec<Vec<u8>>;

struct Connection {
    stream: TcpStream,
    /// Bytes read but not yet parsed.
    unread: Vec<u8>,
}

impl Connection {
    async fn open(url: &RedisUrl) -> Result<Connection, RedisError> {
        let stream = TcpStream::connect(&url.addr)
            .await
            .map_err(|source| RedisError::Connect { addr: url.addr.clone(), source })?;
        let _ = stream.set_nodelay(true);
        let mut conn = Connection { stream, unread: Vec::with_capacity(4096) };
        let mut hello = Vec::new();
        if let Some(password) = &url.password {
            let mut auth = vec![b"AUTH".to_vec()];
            auth.extend(url.username.iter().map(|u| u.as_bytes().to_vec()));
            auth.push(password.as_bytes().to_vec());
            hello.push(auth);
        }
        if url.db != 0 {
            hello.push(vec![b"SELECT".to_vec(), url.db.to_string().into_bytes()]);
        }
        if !hello.is_empty() {
            for (reply, command) in conn.round_trip(&url.addr, &hello).await?.into_iter().zip(&hello) {
                if let Reply::Error(message) = reply {
                    let command = String::from_utf8_lossy(&command[0]).into_owned();
                    return Err(RedisError::Refused { command, message });
                }
            }
        }
        Ok(conn)
    }

    /// Whether an idle connection can still be used: the server may have closed it (a
    /// restart, an idle timeout) since the last exchange. Checked before sending, so a dead
    /// connection is replaced without a command being sent twice.
    fn idle_and_open(&self) -> bool {
        let mut probe = [0u8; 1];
        // Ok(0): closed. Ok(n): bytes nobody asked for — the stream is out of step.
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    /// Writes every command at once, then reads one reply per command.
    async fn round_trip(&mut self, addr: &str, commands: &[Command]) -> Result<Vec<Reply>, RedisError> {
        let io = |source| RedisError::Io { addr: addr.to_owned(), source };
        let mut out = Vec::with_capacity(64 * commands.len());
        for command in commands {
            let args: Vec<&[u8]> = command.iter().map(Vec::as_slice).collect();
            resp::encode(&mut out, &args);
        }
        self.stream.write_all(&out).await.map_err(io)?;
        let mut replies = Vec::with_capacity(commands.len());
        let mut parsed = 0;
        while replies.len() < commands.len() {
            match resp::parse(&self.unread[parsed..])
                .map_err(|source| RedisError::Protocol { addr: addr.to_owned(), source })?
            {
                Some((reply, used)) => {
                    replies.push(reply);
                    parsed += used;
                }
                None => {
                    self.unread.drain(..parsed);
                    parsed = 0;
                    if self.stream.read_buf(&mut self.unread).await.map_err(io)? == 0 {
                        return Err(io(std::io::ErrorKind::UnexpectedEof.into()));
                    }
                }
            }
        }
        self.unread.drain(..parsed);
        Ok(replies)
    }
}

/// A pool of connections to one Redis.
pub struct Redis {
    url: RedisUrl,
    connections: Vec<tokio::sync::Mutex<Option<Connection>>>,
    next: AtomicUsize,
    timeout: Duration,
}

impl Redis {
    pub fn new(url: RedisUrl, connections: usize, timeout: Duration) -> Redis {
        Redis {
            url,
            connections: (0..connections.max(1)).map(|_| tokio::sync::Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
            timeout,
        }
    }

    pub fn addr(&self) -> &str {
        &self.url.addr
    }

    /// Sends `commands` as one pipeline and returns their replies in order. Error replies are
    /// replies (the connection stays); anything else that goes wrong closes the connection.
    /// Runs to completion even if the caller stops waiting, so a connection is never left
    /// with replies in flight.
    pub async fn pipeline(self: &Arc<Self>, commands: Vec<Command>) -> Result<Vec<Reply>, RedisError> {
        let this = Arc::clone(self);
        let task = tokio::spawn(async move {
            let slot = this.next.fetch_add(1, Ordering::Relaxed) % this.connections.len();
            let mut connection = this.connections[slot].lock().await;
            // The connection is taken out while in use and put back only after a complete
            // exchange: on an error or a timeout it is dropped, which closes it.
            let exchange = async {
                let mut c = match connection.take() {
                    Some(c) if c.idle_and_open() => c,
                    _ => Connection::open(&this.url).await?,
                };
                let replies = c.round_trip(&this.url.addr, &commands).await?;
                *connection = Some(c);
                Ok(replies)
            };
            tokio::time::timeout(this.timeout, exchange)
                .await
                .unwrap_or_else(|_| Err(RedisError::Timeout { addr: this.url.addr.clone(), timeout: this.timeout }))
        });
        task.await.unwrap_or_else(|e| {
            Err(RedisError::Io { addr: self.url.addr.clone(), source: std::io::Error::other(e.to_string()) })
        })
    }

    pub async fn ping(self: &Arc<Self>) -> Result<(), RedisError> {
        match self.pipeline(vec![vec![b"PING".to_vec()]]).await?.pop() {
            Some(Reply::Simple(s)) if s == "PONG" => Ok(()),
            Some(Reply::Error(message)) => Err(RedisError::Refused { command: "PING".into(), message }),
            reply => Err(RedisError::Unexpected { command: "PING".into(), reply: reply.unwrap_or(Reply::Bulk(None)) }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = |s: &str| RedisUrl::parse(s);
        assert_eq!(
            u("redis://127.0.0.1:7000").unwrap(),
            RedisUrl { addr: "127.0.0.1:7000".into(), username: None, password: None, db: 0 }
        );
        assert_eq!(u("redis://localhost").unwrap().addr, "localhost:6379");
        assert_eq!(u("redis://[::1]").unwrap().addr, "[::1]:6379");
        assert_eq!(u("redis://[::1]:7000/3").unwrap().db, 3);
        let auth = u("redis://me:secret@db:1/2").unwrap();
        assert_eq!((auth.username.as_deref(), auth.password.as_deref(), auth.db), (Some("me"), Some("secret"), 2));
        assert_eq!(u("redis://:secret@db").unwrap().username, None);
        assert!(u("127.0.0.1:6379").unwrap_err().contains("expected redis://"));
        assert!(u("rediss://h").unwrap_err().contains("TLS"));
        assert!(u("redis://h/x").unwrap_err().contains("database \"x\""));
        assert!(u("redis://").unwrap_err().contains("no host"));
    }
}
