//! The Redis the shared counters live in, through the `redis` crate: one multiplexed
//! connection that reconnects by itself (its `ConnectionManager`), opened on first use so the
//! service starts, and answers 500, while Redis is down. Every exchange has a deadline; a late
//! reply is discarded by the client, never read as the answer to a later command.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("Redis at {addr} did not answer within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    #[error("Redis at {addr}: {source}")]
    Redis { addr: String, source: redis::RedisError },
}

pub struct Redis {
    client: redis::Client,
    addr: String,
    timeout: Duration,
    connection: tokio::sync::Mutex<Option<ConnectionManager>>,
}

impl Redis {
    /// `redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]`.
    pub fn open(url: &str, timeout: Duration) -> Result<Redis, String> {
        let usage = "expected redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]";
        if url.starts_with("rediss://") {
            return Err(format!("{url:?}: TLS (rediss://) is not supported; {usage}"));
        }
        if !url.starts_with("redis://") {
            return Err(format!("{url:?}: {usage}"));
        }
        let client = redis::Client::open(url).map_err(|e| format!("{url:?}: {e}; {usage}"))?;
        let addr = client.get_connection_info().addr().to_string();
        Ok(Redis { client, addr, timeout, connection: tokio::sync::Mutex::new(None) })
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    fn failed(&self, source: redis::RedisError) -> RedisError {
        RedisError::Redis { addr: self.addr.clone(), source }
    }

    async fn connection(&self) -> Result<ConnectionManager, RedisError> {
        let mut slot = self.connection.lock().await;
        if let Some(c) = &*slot {
            return Ok(c.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1);
        let opened =
            tokio::time::timeout(self.timeout, ConnectionManager::new_with_config(self.client.clone(), config))
                .await
                .map_err(|_| RedisError::Timeout { addr: self.addr.clone(), timeout: self.timeout })?
                .map_err(|e| self.failed(e))?;
        *slot = Some(opened.clone());
        Ok(opened)
    }

    /// For each (key, hits, ttl): `INCRBY key hits` and `EXPIRE key ttl`, all in one
    /// pipeline as envoyproxy/ratelimit sends them; the counts after, in order.
    pub async fn add(&self, increments: &[(&str, u64, u64)]) -> Result<Vec<u64>, RedisError> {
        let mut pipe = redis::pipe();
        for (key, hits, ttl) in increments {
            pipe.cmd("INCRBY").arg(*key).arg(*hits);
            pipe.cmd("EXPIRE").arg(*key).arg(*ttl).ignore();
        }
        let mut c = self.connection().await?;
        tokio::time::timeout(self.timeout, pipe.query_async::<Vec<u64>>(&mut c))
            .await
            .map_err(|_| RedisError::Timeout { addr: self.addr.clone(), timeout: self.timeout })?
            .map_err(|e| self.failed(e))
    }

    pub async fn ping(&self) -> Result<(), RedisError> {
        let mut c = self.connection().await?;
        tokio::time::timeout(self.timeout, redis::cmd("PING").query_async::<String>(&mut c))
            .await
            .map_err(|_| RedisError::Timeout { addr: self.addr.clone(), timeout: self.timeout })?
            .map(|_| ())
            .map_err(|e| self.failed(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let open = |s: &str| Redis::open(s, Duration::from_secs(1)).map(|r| r.addr);
        assert_eq!(open("redis://127.0.0.1:7000").unwrap(), "127.0.0.1:7000");
        assert_eq!(open("redis://localhost").unwrap(), "localhost:6379");
        assert!(open("redis://me:secret@db:1/2").is_ok());
        assert!(open("127.0.0.1:6379").unwrap_err().contains("expected redis://"));
        assert!(open("rediss://h").unwrap_err().contains("TLS"));
        assert!(open("redis://h/x").is_err(), "a database that is not a number");
    }
}
