//! Where the fixed-window counters live: in this process (the default) or in Redis, shared by
//! every service instance pointed at it. Both add a request's hits and return the new counts;
//! Redis gets `INCRBY key hits` + `EXPIRE key ttl` per counter, all in one pipeline, as
//! envoyproxy/ratelimit sends them.

use std::sync::{Arc, Mutex};

use meshwork_rate_limit_descriptors::check::Increment;
use meshwork_rate_limit_descriptors::counters::Counters;

use super::redis::{Command, Redis, RedisError};
use super::resp::Reply;

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
                let commands: Vec<Command> = increments
                    .iter()
                    .flat_map(|i| {
                        let key = i.key.as_bytes().to_vec();
                        [
                            vec![b"INCRBY".to_vec(), key.clone(), i.hits.to_string().into_bytes()],
                            vec![b"EXPIRE".to_vec(), key, i.ttl_s.to_string().into_bytes()],
                        ]
                    })
                    .collect();
                let replies = redis.pipeline(commands).await?;
                counts(&replies)
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

/// The counts from (INCRBY, EXPIRE) reply pairs.
fn counts(replies: &[Reply]) -> Result<Vec<u64>, RedisError> {
    replies
        .chunks(2)
        .map(|pair| {
            let expire = pair.get(1).cloned().unwrap_or(Reply::Bulk(None));
            match (&pair[0], expire) {
                (Reply::Integer(n), Reply::Integer(_)) if *n >= 0 => Ok(*n as u64),
                (Reply::Error(message), _) => {
                    Err(RedisError::Refused { command: "INCRBY".into(), message: message.clone() })
                }
                (_, Reply::Error(message)) => Err(RedisError::Refused { command: "EXPIRE".into(), message }),
                (Reply::Integer(_), reply) => Err(RedisError::Unexpected { command: "EXPIRE".into(), reply }),
                (reply, _) => Err(RedisError::Unexpected { command: "INCRBY".into(), reply: reply.clone() }),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_come_from_incrby_replies() {
        let ok = [Reply::Integer(3), Reply::Integer(1), Reply::Integer(1), Reply::Integer(0)];
        assert_eq!(counts(&ok).unwrap(), vec![3, 1]);
        let wrongtype = [Reply::Error("WRONGTYPE Operation against a key".into()), Reply::Integer(1)];
        assert!(counts(&wrongtype).unwrap_err().to_string().contains("refused INCRBY: WRONGTYPE"));
        let odd = [Reply::Simple("OK".into()), Reply::Integer(1)];
        assert!(counts(&odd).unwrap_err().to_string().contains("answered INCRBY"));
        let short = [Reply::Integer(3)];
        assert!(counts(&short).is_err());
    }
}
