//! Program configs: YAML or JSON, from a file or inline (`--config '{rate: 100, burst: 20}'`),
//! checked here and turned into the values the kernel side reads from its maps. Durations are
//! strings (`"250ms"`, `"5s"`, `"1m"`) or milliseconds, as in the filters' configs.

use std::net::IpAddr;
use std::time::Duration;

use meshwork_ebpf_common::addr::{Addr16, V4_MAPPED_PREFIX, mapped_v4};
use meshwork_ebpf_common::breaker::BreakerConfig;
use meshwork_ebpf_common::ratelimit::RateLimit;
use serde::Deserialize;
use serde::de::Error as _;

use crate::{EbpfError, Program};

/// A program's checked config.
#[derive(Clone, Debug, PartialEq)]
pub enum ProgramConfig {
    RateLimit(RateLimitConfig),
    Rtt(RttConfig),
    Breaker(BreakerSettings),
    None,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RateLimitConfig {
    pub default: RateLimit,
    pub overrides: Vec<PrefixLimit>,
    pub max_sources: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PrefixLimit {
    pub prefix: String,
    /// IPv4-mapped address and prefix length in the mapped space.
    pub addr: Addr16,
    pub prefix_len: u32,
    pub limit: RateLimit,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RttConfig {
    pub max_destinations: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct BreakerSettings {
    pub config: BreakerConfig,
    pub max_destinations: u32,
}

/// Reads `--config`: inline YAML/JSON when it starts with `{`, else a file path. No config at all
/// is the empty mapping (every field's default).
pub fn parse(program: Program, text: Option<&str>) -> Result<ProgramConfig, EbpfError> {
    let bad = |message: String| EbpfError::BadConfig { program: program.name(), message };
    let source = match text {
        None => "{}".to_owned(),
        Some(t) if t.trim_start().starts_with('{') => t.to_owned(),
        Some(path) => std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read {path}: {e}")))?,
    };
    let parsed = match program {
        Program::XdpRatelimit => meshwork_yaml::from_str::<RateLimitText>(&source).map(|t| t.check()),
        Program::SockopsRtt => meshwork_yaml::from_str::<RttText>(&source).map(|t| t.check()),
        Program::ConnectBreaker => meshwork_yaml::from_str::<BreakerText>(&source).map(|t| t.check()),
        Program::XdpPass => meshwork_yaml::from_str::<EmptyText>(&source).map(|_| Ok(ProgramConfig::None)),
    };
    parsed.map_err(|e| bad(e.to_string()))?.map_err(bad)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmptyText {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitText {
    /// Packets per `period`, per source.
    rate: u64,
    #[serde(default = "one_second", deserialize_with = "duration")]
    period: Duration,
    /// Largest burst; defaults to `rate`.
    burst: Option<u64>,
    #[serde(default)]
    overrides: Vec<OverrideText>,
    #[serde(default = "default_max_sources")]
    max_sources: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OverrideText {
    prefix: String,
    rate: u64,
    #[serde(default, deserialize_with = "optional_duration")]
    period: Option<Duration>,
    burst: Option<u64>,
}

fn one_second() -> Duration {
    Duration::from_secs(1)
}
fn default_max_sources() -> u32 {
    65536
}

fn limit(field: &str, rate: u64, period: Duration, burst: Option<u64>) -> Result<RateLimit, String> {
    let period_ns = u64::try_from(period.as_nanos()).map_err(|_| format!("{field}period is too long"))?;
    let limit = RateLimit { rate, period_ns, burst: burst.unwrap_or(rate) };
    limit.validate().map_err(|e| format!("{field}{e}"))?;
    Ok(limit)
}

impl RateLimitText {
    fn check(self) -> Result<ProgramConfig, String> {
        let default = limit("", self.rate, self.period, self.burst)?;
        let overrides = self
            .overrides
            .into_iter()
            .enumerate()
            .map(|(i, o)| {
                let (addr, prefix_len) = parse_prefix(&o.prefix).map_err(|e| format!("overrides[{i}].prefix: {e}"))?;
                let limit = limit(&format!("overrides[{i}]: "), o.rate, o.period.unwrap_or(self.period), o.burst)?;
                Ok(PrefixLimit { prefix: o.prefix, addr, prefix_len, limit })
            })
            .collect::<Result<Vec<_>, String>>()?;
        if overrides.len() > 1024 {
            return Err("at most 1024 overrides".into());
        }
        if self.max_sources == 0 {
            return Err("max_sources must be at least 1".into());
        }
        Ok(ProgramConfig::RateLimit(RateLimitConfig { default, overrides, max_sources: self.max_sources }))
    }
}

/// `198.18.0.0/24`, `2001:db8::/32`, or a bare address (a /32 or /128), in the mapped space.
pub fn parse_prefix(text: &str) -> Result<(Addr16, u32), String> {
    let (addr, len) = match text.split_once('/') {
        Some((a, l)) => (a, Some(l.parse::<u32>().map_err(|_| format!("{text:?}: bad prefix length"))?)),
        None => (text, None),
    };
    let ip: IpAddr = addr.parse().map_err(|_| format!("{text:?} is not an IP address or prefix"))?;
    let (bytes, len, max) = match ip {
        IpAddr::V4(v4) => (mapped_v4(v4.octets()), len.unwrap_or(32), 32),
        IpAddr::V6(v6) => (v6.octets(), len.unwrap_or(128), 128),
    };
    if len > max {
        return Err(format!("{text:?}: prefix length above {max}"));
    }
    Ok((bytes, if max == 32 { V4_MAPPED_PREFIX + len } else { len }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RttText {
    #[serde(default = "default_destinations")]
    max_destinations: u32,
}

fn default_destinations() -> u32 {
    1024
}

impl RttText {
    fn check(self) -> Result<ProgramConfig, String> {
        if self.max_destinations == 0 {
            return Err("max_destinations must be at least 1".into());
        }
        Ok(ProgramConfig::Rtt(RttConfig { max_destinations: self.max_destinations }))
    }
}

/// The circuit-breaker filter's field names and defaults.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BreakerText {
    #[serde(default = "five")]
    consecutive_failures: u32,
    failure_ratio: Option<RatioText>,
    #[serde(default = "five_seconds", deserialize_with = "duration")]
    cool_down: Duration,
    #[serde(default = "one")]
    half_open_probes: u32,
    #[serde(default = "default_breaker_destinations")]
    max_destinations: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RatioText {
    threshold: f64,
    min_requests: u32,
    #[serde(deserialize_with = "duration")]
    window: Duration,
}

fn five() -> u32 {
    5
}
fn one() -> u32 {
    1
}
fn five_seconds() -> Duration {
    Duration::from_secs(5)
}
fn default_breaker_destinations() -> u32 {
    4096
}

impl BreakerText {
    fn check(self) -> Result<ProgramConfig, String> {
        let ns = |d: Duration, field: &str| u64::try_from(d.as_nanos()).map_err(|_| format!("{field} is too long"));
        let mut config = BreakerConfig {
            consecutive_failures: self.consecutive_failures,
            probes: self.half_open_probes,
            cool_down_ns: ns(self.cool_down, "cool_down")?,
            ..Default::default()
        };
        if let Some(r) = self.failure_ratio {
            if !(r.threshold > 0.0 && r.threshold <= 1.0) {
                return Err("failure_ratio.threshold must be above 0 and at most 1".into());
            }
            config.ratio_per_mille = ((r.threshold * 1000.0).round() as u32).max(1);
            config.ratio_min_requests = r.min_requests;
            config.ratio_window_ns = ns(r.window, "failure_ratio.window")?;
        }
        if self.half_open_probes > u16::MAX as u32 {
            return Err(format!("half_open_probes must be at most {}", u16::MAX));
        }
        config.validate().map_err(|e| e.to_string())?;
        if self.max_destinations == 0 {
            return Err("max_destinations must be at least 1".into());
        }
        Ok(ProgramConfig::Breaker(BreakerSettings { config, max_destinations: self.max_destinations }))
    }
}

/// A duration: `"250ms"`, or a number of milliseconds.
fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Millis(u64),
        Text(String),
    }
    match Raw::deserialize(d)
        .map_err(|_| D::Error::custom("expected a duration like \"250ms\" or a number of milliseconds"))?
    {
        Raw::Millis(ms) => Ok(Duration::from_millis(ms)),
        Raw::Text(s) => parse_duration(&s).map_err(D::Error::custom),
    }
}

fn optional_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

/// `"250ms"`, `"5s"`, `"1m"`, `"1h"`, `"100us"`, `"10ns"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    meshwork_units::parse_duration(text).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(program: Program, text: &str) -> String {
        parse(program, Some(text)).unwrap_err().to_string()
    }

    #[test]
    fn rate_limit_with_overrides() {
        let ProgramConfig::RateLimit(c) = parse(
            Program::XdpRatelimit,
            Some("{rate: 100, period: 1s, burst: 20, overrides: [{prefix: 198.18.0.3/32, rate: 1000}, {prefix: '2001:db8::/32', rate: 5, burst: 1}]}"),
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(c.default, RateLimit { rate: 100, period_ns: 1_000_000_000, burst: 20 });
        assert_eq!(c.overrides[0].prefix_len, 128);
        assert_eq!(c.overrides[0].limit.burst, 1000, "burst defaults to the rate");
        assert_eq!(c.overrides[1].prefix_len, 32);
    }

    #[test]
    fn bad_values_name_the_field() {
        assert!(err(Program::XdpRatelimit, "{rate: 0}").contains("rate must be at least 1"));
        assert!(
            err(Program::XdpRatelimit, "{rate: 5, overrides: [{prefix: nope, rate: 1}]}")
                .contains("overrides[0].prefix")
        );
        assert!(err(Program::XdpRatelimit, "{rate: 5, sped: 1}").contains("unknown field `sped`"));
        assert!(err(Program::XdpRatelimit, "{rate: 5, period: 3 fortnights}").contains("unknown unit"));
        assert!(err(Program::ConnectBreaker, "{half_open_probes: 0}").contains("half_open_probes"));
        assert!(
            err(Program::ConnectBreaker, "{failure_ratio: {threshold: 2, min_requests: 1, window: 1s}}")
                .contains("threshold")
        );
        assert!(err(Program::SockopsRtt, "{max_destinations: 0}").contains("max_destinations"));
        assert!(err(Program::XdpRatelimit, "/no/such/file.yaml").contains("cannot read"));
    }

    #[test]
    fn breaker_defaults_match_the_filter() {
        let ProgramConfig::Breaker(b) = parse(Program::ConnectBreaker, None).unwrap() else { panic!() };
        assert_eq!(b.config.consecutive_failures, 5);
        assert_eq!(b.config.cool_down_ns, 5_000_000_000);
        assert_eq!(b.config.probes, 1);
        assert_eq!(b.config.ratio_per_mille, 0);
    }

    #[test]
    fn prefixes_and_durations() {
        assert_eq!(parse_prefix("198.18.0.0/24").unwrap().1, 120);
        assert!(parse_prefix("198.18.0.0/33").is_err());
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
    }
}
