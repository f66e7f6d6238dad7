//! What to send and how: the target URL, the request, and the load plan shared by every worker.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::LoadError;

/// A parsed `http://host:port/path?query` target.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Target {
    pub url: String,
    pub host: String,
    pub port: u16,
    /// Path and query, as sent on the request line.
    pub path: String,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, LoadError> {
        let bad = |reason: &str| LoadError::BadUrl { url: url.to_owned(), reason: reason.to_owned() };
        let uri: http::Uri = url.parse().map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => return Err(bad("https is not supported (TLS is not implemented); use http://")),
            Some(other) => return Err(bad(&format!("scheme {other:?} is not supported; use http://"))),
            None => return Err(bad("no scheme; write it as http://host:port/path")),
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_owned();
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let path = uri.path_and_query().map_or("/".to_owned(), |p| p.as_str().to_owned());
        let path = if path.is_empty() { "/".to_owned() } else { path };
        Ok(Target { url: url.to_owned(), host, port: authority.port_u16().unwrap_or(80), path })
    }

    /// The `Host` header value.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else if self.port == 80 {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    pub fn resolve(&self) -> Result<SocketAddr, LoadError> {
        (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| LoadError::Unreachable { addr: self.authority(), reason: format!("cannot resolve: {e}") })?
            .next()
            .ok_or_else(|| LoadError::Unreachable { addr: self.authority(), reason: "no address".into() })
    }
}

/// The request every connection sends.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RequestSpec {
    pub method: String,
    pub headers: Vec<(String, String)>,
    #[serde(with = "b64")]
    pub body: Vec<u8>,
}

mod b64 {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD.decode(s).map_err(serde::de::Error::custom)
    }
}

impl RequestSpec {
    /// Parses `-H 'name: value'` arguments.
    pub fn parse_headers(raw: &[String]) -> Result<Vec<(String, String)>, LoadError> {
        raw.iter()
            .map(|h| {
                let (k, v) = h
                    .split_once(':')
                    .ok_or_else(|| LoadError::BadInput(format!("header {h:?} is not 'name: value'")))?;
                let name = k.trim();
                http::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| LoadError::BadInput(format!("header name {name:?} is not valid")))?;
                http::HeaderValue::from_str(v.trim())
                    .map_err(|_| LoadError::BadInput(format!("header value {:?} is not valid", v.trim())))?;
                Ok((name.to_owned(), v.trim().to_owned()))
            })
            .collect()
    }

    /// The HTTP/1.1 request, encoded once and written as is for every request.
    pub fn encode_h1(&self, target: &Target) -> Vec<u8> {
        let mut out = Vec::with_capacity(128 + self.body.len());
        out.extend_from_slice(self.method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(target.path.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        let has = |name: &str| self.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
        if !has("host") {
            out.extend_from_slice(format!("host: {}\r\n", target.authority()).as_bytes());
        }
        if !has("user-agent") {
            out.extend_from_slice(b"user-agent: meshwork-load\r\n");
        }
        for (k, v) in &self.headers {
            out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        if (!self.body.is_empty() || matches!(self.method.as_str(), "POST" | "PUT" | "PATCH")) && !has("content-length")
        {
            out.extend_from_slice(format!("content-length: {}\r\n", self.body.len()).as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }
}

/// When the run stops.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Stop {
    /// Run for this long (after warm-up).
    Duration(#[serde(with = "secs")] Duration),
    /// Send this many requests in all (after warm-up).
    Requests(u64),
}

mod secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = f64::deserialize(d)?;
        Duration::try_from_secs_f64(v).map_err(serde::de::Error::custom)
    }
}

/// The whole run, as every worker sees it. Workers own disjoint slots of one global schedule,
/// so N workers together send exactly what one process would have sent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LoadSpec {
    pub target: Target,
    pub request: RequestSpec,
    pub http2: bool,
    /// Concurrent streams per HTTP/2 connection (1 for HTTP/1.1).
    pub streams: usize,
    /// Requests per second across all workers; None: closed loop, as fast as possible.
    pub rps: Option<f64>,
    /// Connections across all workers.
    pub connections: usize,
    /// Event-loop threads per worker.
    pub threads: usize,
    pub stop: Stop,
    #[serde(with = "secs")]
    pub warmup: Duration,
    #[serde(with = "secs")]
    pub timeout: Duration,
    /// Wall-clock start (Unix ns) shared by every worker; None: start when connected.
    pub start_at_unix_ns: Option<u64>,
    /// Write every recorded latency (µs, one per line) here: for exactness tests.
    pub samples_file: Option<String>,
}

/// One worker's part: slots `index`, `index + count`, `index + 2·count`, …
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Share {
    pub index: usize,
    pub count: usize,
}

impl Share {
    pub const WHOLE: Share = Share { index: 0, count: 1 };
}

impl LoadSpec {
    /// Schedule slots: connections × streams.
    pub fn slots(&self) -> usize {
        self.connections * self.streams.max(1)
    }

    pub fn validate(&self) -> Result<(), LoadError> {
        if self.connections == 0 {
            return Err(LoadError::BadInput("--connections must be at least 1".into()));
        }
        if let Some(r) = self.rps
            && !(r.is_finite() && r > 0.0)
        {
            return Err(LoadError::BadInput(format!("--rps {r} is not a positive rate")));
        }
        if let Stop::Duration(d) = self.stop
            && d.is_zero()
        {
            return Err(LoadError::BadInput("--duration must be longer than 0".into()));
        }
        if let Stop::Requests(0) = self.stop {
            return Err(LoadError::BadInput("--requests must be at least 1".into()));
        }
        if self.timeout.is_zero() {
            return Err(LoadError::BadInput("--timeout must be longer than 0".into()));
        }
        Ok(())
    }
}

/// `10s`, `250ms`, `1.5s`, `2m`, `100us`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, LoadError> {
    meshwork_units::parse_duration_or(s, "s").map_err(|e| LoadError::BadInput(e.to_string()))
}

/// A latency objective: `p99<=10ms`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Slo {
    pub percentile: f64,
    pub max_us: u64,
}

impl Slo {
    pub fn parse(s: &str) -> Result<Slo, LoadError> {
        let bad = |why: &str| LoadError::BadInput(format!("SLO {s:?}: {why} (write it as e.g. 'p99<=10ms')"));
        let (lhs, rhs) = s.split_once("<=").ok_or_else(|| bad("no '<='"))?;
        let p = lhs.trim().strip_prefix('p').ok_or_else(|| bad("the left side is not pNN"))?;
        // p999 means 99.9 and p9999 99.99, as Nighthawk and Prometheus users write them.
        let percentile: f64 = if !p.contains('.') && p.len() > 2 && p.starts_with("99") {
            format!("99.{}", &p[2..]).parse().map_err(|_| bad("bad percentile"))?
        } else {
            p.parse().map_err(|_| bad("bad percentile"))?
        };
        if !(0.0..=100.0).contains(&percentile) {
            return Err(bad("percentile out of 0..100"));
        }
        let d = parse_duration(rhs).map_err(|_| bad("the right side is not a duration"))?;
        Ok(Slo { percentile, max_us: d.as_micros() as u64 })
    }
}

/// `0.1%` or `0.001`.
pub fn parse_fraction(s: &str) -> Result<f64, LoadError> {
    let bad = || LoadError::BadInput(format!("{s:?} is not a rate (use e.g. 0.1% or 0.001)"));
    let t = s.trim();
    let v = match t.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map_err(|_| bad())? / 100.0,
        None => t.parse::<f64>().map_err(|_| bad())?,
    };
    if !(0.0..=1.0).contains(&v) {
        return Err(bad());
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = Target::parse("http://127.0.0.1:8080/a/b?x=1").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.path.as_str()), ("127.0.0.1", 8080, "/a/b?x=1"));
        assert_eq!(Target::parse("http://localhost").unwrap().path, "/");
        for bad in ["127.0.0.1:80", "ftp://x/", "https://x/", "http://", "not a url", ""] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn request_encoding() {
        let t = Target::parse("http://127.0.0.1:9000/p?q=1").unwrap();
        let r = RequestSpec {
            method: "POST".into(),
            headers: RequestSpec::parse_headers(&["x-a: 1".into()]).unwrap(),
            body: b"hi".to_vec(),
        };
        let text = String::from_utf8(r.encode_h1(&t)).unwrap();
        assert_eq!(
            text,
            "POST /p?q=1 HTTP/1.1\r\nhost: 127.0.0.1:9000\r\nuser-agent: meshwork-load\r\nx-a: 1\r\ncontent-length: 2\r\n\r\nhi"
        );
        assert!(RequestSpec::parse_headers(&["nocolon".into()]).is_err());
    }

    #[test]
    fn durations_slos_fractions() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("ten").is_err());
        assert_eq!(Slo::parse("p99<=10ms").unwrap(), Slo { percentile: 99.0, max_us: 10_000 });
        assert_eq!(Slo::parse("p99.9 <= 1s").unwrap().percentile, 99.9);
        assert_eq!(Slo::parse("p999<=1s").unwrap().percentile, 99.9);
        assert!(Slo::parse("p99=10ms").is_err());
        assert_eq!(parse_fraction("0.1%").unwrap(), 0.001);
        assert!(parse_fraction("120%").is_err());
    }
}
