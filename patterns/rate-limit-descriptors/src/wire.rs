//! The answer of Envoy's rate-limit service API (`envoy.service.ratelimit.v3.RateLimitResponse`)
//! in its proto3 JSON form, as envoyproxy/ratelimit's `POST /json` and `meshwork
//! ratelimit-service` write it, and what a client makes of it: allowed or not, and the draft
//! `x-ratelimit-*` headers.
//!
//! Reading follows proto3 JSON: camelCase or the proto field names, enums by name or number,
//! and fields at their default value may be absent (a real envoyproxy/ratelimit omits
//! `limitRemaining: 0`). Fields this client has no use for are ignored.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use crate::check::{self, Code};
use crate::window::Unit;

/// `RateLimitResponse.Code`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WireCode {
    #[default]
    Unknown,
    Ok,
    OverLimit,
}

/// `RateLimitResponse.RateLimit.Unit`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WireUnit {
    #[default]
    Unknown,
    Second,
    Minute,
    Hour,
    Day,
    Month,
    Year,
    Week,
}

const CODES: [(WireCode, &str); 3] =
    [(WireCode::Unknown, "UNKNOWN"), (WireCode::Ok, "OK"), (WireCode::OverLimit, "OVER_LIMIT")];
const UNITS: [(WireUnit, &str); 8] = [
    (WireUnit::Unknown, "UNKNOWN"),
    (WireUnit::Second, "SECOND"),
    (WireUnit::Minute, "MINUTE"),
    (WireUnit::Hour, "HOUR"),
    (WireUnit::Day, "DAY"),
    (WireUnit::Month, "MONTH"),
    (WireUnit::Year, "YEAR"),
    (WireUnit::Week, "WEEK"),
];

impl WireCode {
    /// The proto enum name.
    pub fn name(self) -> &'static str {
        CODES.iter().find(|(c, _)| *c == self).map_or("UNKNOWN", |(_, n)| n)
    }
}

impl WireUnit {
    /// The proto enum name.
    pub fn name(self) -> &'static str {
        UNITS.iter().find(|(u, _)| *u == self).map_or("UNKNOWN", |(_, n)| n)
    }

    /// The window length the draft headers announce (`w=`), as Envoy converts units; 0 when
    /// unknown.
    pub fn window_s(self) -> u64 {
        match self {
            WireUnit::Unknown => 0,
            WireUnit::Second => 1,
            WireUnit::Minute => 60,
            WireUnit::Hour => 3600,
            WireUnit::Day => 86_400,
            WireUnit::Week => 7 * 86_400,
            WireUnit::Month => 30 * 86_400,
            WireUnit::Year => 365 * 86_400,
        }
    }
}

impl From<Unit> for WireUnit {
    fn from(u: Unit) -> WireUnit {
        match u {
            Unit::Second => WireUnit::Second,
            Unit::Minute => WireUnit::Minute,
            Unit::Hour => WireUnit::Hour,
            Unit::Day => WireUnit::Day,
        }
    }
}

/// `RateLimitResponse`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct WireResponse {
    #[cfg_attr(feature = "serde", serde(rename = "overallCode", alias = "overall_code", default))]
    pub overall_code: WireCode,
    #[cfg_attr(feature = "serde", serde(default))]
    pub statuses: Vec<WireStatus>,
}

/// `RateLimitResponse.DescriptorStatus`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct WireStatus {
    #[cfg_attr(feature = "serde", serde(default))]
    pub code: WireCode,
    #[cfg_attr(
        feature = "serde",
        serde(rename = "currentLimit", alias = "current_limit", default, skip_serializing_if = "Option::is_none")
    )]
    pub current_limit: Option<WireLimit>,
    #[cfg_attr(feature = "serde", serde(rename = "limitRemaining", alias = "limit_remaining", default))]
    pub limit_remaining: u32,
    /// Nanoseconds; a `google.protobuf.Duration` ("0.500s") on the wire.
    #[cfg_attr(
        feature = "serde",
        serde(
            rename = "durationUntilReset",
            alias = "duration_until_reset",
            default,
            skip_serializing_if = "Option::is_none",
            with = "proto_duration"
        )
    )]
    pub duration_until_reset_ns: Option<u64>,
}

/// `RateLimitResponse.RateLimit`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct WireLimit {
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "String::is_empty"))]
    pub name: String,
    #[cfg_attr(feature = "serde", serde(rename = "requestsPerUnit", alias = "requests_per_unit", default))]
    pub requests_per_unit: u32,
    #[cfg_attr(feature = "serde", serde(default))]
    pub unit: WireUnit,
}

impl From<&check::Response> for WireResponse {
    fn from(r: &check::Response) -> WireResponse {
        let code = |c: Code| match c {
            Code::Ok => WireCode::Ok,
            Code::OverLimit => WireCode::OverLimit,
        };
        WireResponse {
            overall_code: code(r.overall_code),
            statuses: r
                .statuses
                .iter()
                .map(|s| WireStatus {
                    code: code(s.code),
                    current_limit: s.current_limit.as_ref().map(|l| WireLimit {
                        name: l.name.clone().unwrap_or_default(),
                        requests_per_unit: l.requests_per_unit,
                        unit: l.unit.into(),
                    }),
                    limit_remaining: s.limit_remaining,
                    duration_until_reset_ns: s.current_limit.as_ref().map(|_| s.duration_until_reset_ns),
                })
                .collect(),
        }
    }
}

/// What a client does with an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Limit,
}

impl WireResponse {
    /// `None` for an answer that decides nothing (`UNKNOWN`): the client's failure mode applies.
    pub fn verdict(&self) -> Option<Verdict> {
        match self.overall_code {
            WireCode::Ok => Some(Verdict::Allow),
            WireCode::OverLimit => Some(Verdict::Limit),
            WireCode::Unknown => None,
        }
    }

    /// The draft-03 RateLimit headers Envoy's `enable_x_ratelimit_headers: DRAFT_VERSION_03`
    /// writes, from the statuses that carry a limit: the status with the least remaining
    /// sets `x-ratelimit-limit` (followed by every limit's quota policy `N;w=SECONDS`),
    /// `x-ratelimit-remaining` and `x-ratelimit-reset` (whole seconds, rounded up so a client
    /// never retries early). Empty when no status carries a limit.
    pub fn ratelimit_headers(&self) -> Vec<(&'static str, String)> {
        let limited = || self.statuses.iter().filter_map(|s| s.current_limit.as_ref().map(|l| (s, l)));
        let Some((tightest, tightest_limit)) = limited().min_by_key(|(s, _)| s.limit_remaining) else {
            return Vec::new();
        };
        let mut limit = alloc::format!("{}", tightest_limit.requests_per_unit);
        for (_, l) in limited() {
            let window = l.unit.window_s();
            if window == 0 {
                continue;
            }
            let _ = write!(limit, ", {};w={window}", l.requests_per_unit);
            if !l.name.is_empty() {
                let _ = write!(limit, ";name=\"{}\"", l.name);
            }
        }
        let reset_s = tightest.duration_until_reset_ns.unwrap_or(0).div_ceil(1_000_000_000);
        alloc::vec![
            ("x-ratelimit-limit", limit),
            ("x-ratelimit-remaining", alloc::format!("{}", tightest.limit_remaining)),
            ("x-ratelimit-reset", alloc::format!("{reset_s}")),
        ]
    }
}

/// Formats nanoseconds as proto3 JSON writes a `Duration`: seconds with 0, 3, 6 or 9
/// fractional digits and an `s` (`"1s"`, `"0.500s"`).
pub fn format_duration(ns: u64) -> String {
    let (s, frac) = (ns / 1_000_000_000, ns % 1_000_000_000);
    match frac {
        0 => alloc::format!("{s}s"),
        f if f % 1_000_000 == 0 => alloc::format!("{s}.{:03}s", f / 1_000_000),
        f if f % 1_000 == 0 => alloc::format!("{s}.{:06}s", f / 1_000),
        f => alloc::format!("{s}.{f:09}s"),
    }
}

/// Reads a proto3 JSON `Duration` (`"1.5s"`, `"0s"`, `"2.000000001s"`) as nanoseconds;
/// `None` for anything else, negative durations included. The number is read by the one
/// duration parser (`meshwork_units`); proto3 only allows seconds and up to nine decimals.
pub fn parse_duration(text: &str) -> Option<u64> {
    let number = text.strip_suffix('s')?;
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty()
        || !digits(whole)
        || !digits(frac)
        || frac.len() > 9
        || (number.contains('.') && frac.is_empty())
    {
        return None;
    }
    u64::try_from(meshwork_units::parse_duration(text).ok()?.as_nanos()).ok()
}

#[cfg(feature = "serde")]
mod serde_impls {
    use super::*;
    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// A proto3 JSON enum: its name, or its number.
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Name(String),
        Number(i64),
    }

    fn by_name_or_number<'de, D: Deserializer<'de>, T: Copy>(
        d: D,
        table: &[(T, &str)],
        what: &str,
    ) -> Result<T, D::Error> {
        let found = match Raw::deserialize(d)? {
            Raw::Name(n) => table.iter().find(|(_, name)| *name == n),
            Raw::Number(i) => usize::try_from(i).ok().and_then(|i| table.get(i)),
        };
        found.map(|(v, _)| *v).ok_or_else(|| D::Error::custom(alloc::format!("not a {what}")))
    }

    impl Serialize for WireCode {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_str(self.name())
        }
    }

    impl<'de> Deserialize<'de> for WireCode {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            by_name_or_number(d, &CODES, "RateLimitResponse.Code")
        }
    }

    impl Serialize for WireUnit {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_str(self.name())
        }
    }

    impl<'de> Deserialize<'de> for WireUnit {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            by_name_or_number(d, &UNITS, "RateLimit.Unit")
        }
    }
}

#[cfg(feature = "serde")]
mod proto_duration {
    use super::*;
    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(ns: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(ns.unwrap_or(0)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text).map(Some).ok_or_else(|| D::Error::custom(alloc::format!("{text:?} is not a duration")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> WireResponse {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn reads_envoyproxy_ratelimit_answers() {
        // As protojson writes them: limitRemaining 0 omitted, unknown fields present.
        let r = parse(
            r#"{"overallCode":"OVER_LIMIT","statuses":[{"code":"OVER_LIMIT","currentLimit":{"requestsPerUnit":10,
            "unit":"MINUTE"},"durationUntilReset":"42s"},{"code":"OK"}],"responseHeadersToAdd":[]}"#,
        );
        assert_eq!(r.verdict(), Some(Verdict::Limit));
        assert_eq!(r.statuses[0].limit_remaining, 0);
        assert_eq!(r.statuses[0].duration_until_reset_ns, Some(42_000_000_000));
        assert_eq!(r.statuses[1].current_limit, None);
        let numeric = parse(r#"{"overall_code": 1, "statuses": [{"code": 1, "current_limit": {"unit": 3}}]}"#);
        assert_eq!(numeric.verdict(), Some(Verdict::Allow));
        assert_eq!(numeric.statuses[0].current_limit.as_ref().unwrap().unit, WireUnit::Hour);
        assert_eq!(parse("{}").verdict(), None);
        assert!(serde_json::from_str::<WireResponse>(r#"{"overallCode": "MAYBE"}"#).is_err());
        assert!(serde_json::from_str::<WireResponse>(r#"{"statuses": [{"durationUntilReset": "soon"}]}"#).is_err());
    }

    #[test]
    fn writes_proto3_json() {
        let r = WireResponse {
            overall_code: WireCode::Ok,
            statuses: alloc::vec![WireStatus {
                code: WireCode::Ok,
                current_limit: Some(WireLimit { name: String::new(), requests_per_unit: 10, unit: WireUnit::Second }),
                limit_remaining: 3,
                duration_until_reset_ns: Some(500_000_000),
            }],
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"overallCode":"OK","statuses":[{"code":"OK","currentLimit":{"requestsPerUnit":10,"unit":"SECOND"},"limitRemaining":3,"durationUntilReset":"0.500s"}]}"#
        );
        assert_eq!(parse(&serde_json::to_string(&r).unwrap()), r);
    }

    #[test]
    fn durations() {
        assert_eq!(format_duration(0), "0s");
        assert_eq!(format_duration(1_500_000_000), "1.500s");
        assert_eq!(format_duration(1_000_001_000), "1.000001s");
        assert_eq!(format_duration(7), "0.000000007s");
        for ns in [0, 1, 999_999_999, 1_000_000_000, 3_600_250_000_000] {
            assert_eq!(parse_duration(&format_duration(ns)), Some(ns));
        }
        assert_eq!(parse_duration("0.5s"), Some(500_000_000));
        for bad in ["", "s", "1", "-1s", "1.s", ".5s", "1.0000000001s", "1.5ms", "x1s"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn draft_headers_follow_the_tightest_limit() {
        let status = |rpu, unit, remaining, reset_ns, name: &str| WireStatus {
            code: WireCode::Ok,
            current_limit: Some(WireLimit { name: name.into(), requests_per_unit: rpu, unit }),
            limit_remaining: remaining,
            duration_until_reset_ns: Some(reset_ns),
        };
        let r = WireResponse {
            overall_code: WireCode::Ok,
            statuses: alloc::vec![
                status(100, WireUnit::Hour, 40, 1_000_000_000_000, ""),
                WireStatus { code: WireCode::Ok, ..WireStatus::default() },
                status(10, WireUnit::Second, 2, 300_000_000, "per-ip"),
            ],
        };
        assert_eq!(
            r.ratelimit_headers(),
            alloc::vec![
                ("x-ratelimit-limit", String::from("10, 100;w=3600, 10;w=1;name=\"per-ip\"")),
                ("x-ratelimit-remaining", String::from("2")),
                ("x-ratelimit-reset", String::from("1")),
            ]
        );
        assert!(WireResponse::default().ratelimit_headers().is_empty());
    }
}
