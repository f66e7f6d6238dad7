//! Where the fixed-window counters live: in this process (the default) or in Redis, shared by
//! every service instance pointed at it. Both add a request's hits and return the new counts;
//! Redis gets `INCRBY key hits` + `EXPIRE key ttl` per counter, all in one pipeline, as
//! envoyproxy/ratelimit sends them.

use std::sync::{Arc, Mutex};

use meshwork_rate_limit_descriptors::check::Increment;
use meshwork_rate_limit_descriptors::counters::Counters;

use super::redis::{Redis, RedisError};

pub enum Store {
    Memory(Mutex<Counters>),
    Redis(Arc<Redis>),
}

impl Store {
    pub fn memory() -> Store {
        Store::Memory(Mutex::default())
    }

    /// For the start-up line and logs.
    pub fn describe(&self) -> String {
        match self {
            Store::Memory(_) => "memory".into(),
            Store::Redis(r) => format!("redis {}", r.addr()),
        }
    }

    /// Adds each increment's hits to its counter; the counts after, in order. Any failure is
    /// an error for the whole request: a partial answer could admit what it should not.
    pub async fn add(&self, increments: &[Increment], now_ns: u64) -> Result<Vec<u64>, RedisError> {
        match self {
            Store::Memory(counters) => {
                // Poisoning only means another request panicked mid-add; the counts stay valid.
                let mut counters = counters.lock().unwrap_or_else(|e| e.into_inner());
                Ok(increments.iter().map(|i| counters.add(&i.key, i.hits, i.ttl_s, now_ns)).collect())
            }
            Store::Redis(redis) => {
                let items: Vec<(&str, u64, u64)> =
                    increments.iter().map(|i| (i.key.as_str(), i.hits, i.ttl_s)).collect();
                redis.add(&items).await
            }
        }
    }

    /// Whether the store can count now (always, in memory; a PING for Redis).
    pub async fn check(&self) -> Result<(), RedisError> {
        match self {
            Store::Memory(_) => Ok(()),
            Store::Redis(redis) => redis.ping().await,
        }
    }
}
