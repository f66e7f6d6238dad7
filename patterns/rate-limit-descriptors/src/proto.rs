//! Envoy's rate-limit service messages in protobuf (`envoy.service.ratelimit.v3`), for clients
//! that speak the API's gRPC form: the request a filter sends and the answer it reads, as
//! [`crate::wire::WireResponse`] so the verdict and the draft headers come out the same as from
//! the JSON form. Field numbers are Envoy's (see host-runner/grpc-api/proto for the service).

use alloc::string::String;
use alloc::vec::Vec;

use prost::Message;

use crate::check;
use crate::wire::{WireCode, WireLimit, WireResponse, WireStatus, WireUnit};

/// The gRPC service and method.
pub const SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
pub const METHOD: &str = "ShouldRateLimit";

#[derive(Clone, PartialEq, Message)]
pub struct RateLimitRequest {
    #[prost(string, tag = "1")]
    pub domain: String,
    #[prost(message, repeated, tag = "2")]
    pub descriptors: Vec<RateLimitDescriptor>,
    #[prost(uint32, tag = "3")]
    pub hits_addend: u32,
}

#[derive(Clone, PartialEq, Message)]
pub struct RateLimitDescriptor {
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<DescriptorEntry>,
}

#[derive(Clone, PartialEq, Message)]
pub struct DescriptorEntry {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct RateLimitResponse {
    #[prost(int32, tag = "1")]
    pub overall_code: i32,
    #[prost(message, repeated, tag = "2")]
    pub statuses: Vec<DescriptorStatus>,
}

#[derive(Clone, PartialEq, Message)]
pub struct DescriptorStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(message, optional, tag = "2")]
    pub current_limit: Option<RateLimit>,
    #[prost(uint32, tag = "3")]
    pub limit_remaining: u32,
    #[prost(message, optional, tag = "4")]
    pub duration_until_reset: Option<Duration>,
}

#[derive(Clone, PartialEq, Message)]
pub struct RateLimit {
    #[prost(string, tag = "3")]
    pub name: String,
    #[prost(uint32, tag = "1")]
    pub requests_per_unit: u32,
    #[prost(int32, tag = "2")]
    pub unit: i32,
}

/// `google.protobuf.Duration`.
#[derive(Clone, PartialEq, Message)]
pub struct Duration {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

/// The request in protobuf.
pub fn encode_request(r: &check::Request) -> Vec<u8> {
    RateLimitRequest {
        domain: r.domain.clone(),
        descriptors: r
            .descriptors
            .iter()
            .map(|d| RateLimitDescriptor {
                entries: d
                    .entries
                    .iter()
                    .map(|e| DescriptorEntry { key: e.key.clone(), value: e.value.clone() })
                    .collect(),
            })
            .collect(),
        hits_addend: r.hits_addend,
    }
    .encode_to_vec()
}

fn code(c: i32) -> WireCode {
    match c {
        1 => WireCode::Ok,
        2 => WireCode::OverLimit,
        _ => WireCode::Unknown,
    }
}

fn unit(u: i32) -> WireUnit {
    match u {
        1 => WireUnit::Second,
        2 => WireUnit::Minute,
        3 => WireUnit::Hour,
        4 => WireUnit::Day,
        5 => WireUnit::Month,
        6 => WireUnit::Year,
        7 => WireUnit::Week,
        _ => WireUnit::Unknown,
    }
}

/// The answer, read from protobuf.
pub fn decode_response(bytes: &[u8]) -> Result<WireResponse, prost::DecodeError> {
    let r = RateLimitResponse::decode(bytes)?;
    Ok(WireResponse {
        overall_code: code(r.overall_code),
        statuses: r
            .statuses
            .into_iter()
            .map(|s| WireStatus {
                code: code(s.code),
                current_limit: s.current_limit.map(|l| WireLimit {
                    name: l.name,
                    requests_per_unit: l.requests_per_unit,
                    unit: unit(l.unit),
                }),
                limit_remaining: s.limit_remaining,
                duration_until_reset_ns: s
                    .duration_until_reset
                    .map(|d| (d.seconds.max(0) as u64) * 1_000_000_000 + d.nanos.max(0) as u64),
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Descriptor;

    #[test]
    fn requests_encode_and_answers_decode() {
        let r = check::Request {
            domain: "edge".into(),
            descriptors: alloc::vec![Descriptor::new([("tenant", "acme")])],
            hits_addend: 1,
        };
        let back = RateLimitRequest::decode(&encode_request(&r)[..]).unwrap();
        assert_eq!(back.domain, "edge");
        assert_eq!(back.descriptors[0].entries[0].value, "acme");
        let answer = RateLimitResponse {
            overall_code: 2,
            statuses: alloc::vec![DescriptorStatus {
                code: 2,
                current_limit: Some(RateLimit { name: String::new(), requests_per_unit: 10, unit: 2 }),
                limit_remaining: 0,
                duration_until_reset: Some(Duration { seconds: 42, nanos: 0 }),
            }],
        };
        let wire = decode_response(&answer.encode_to_vec()).unwrap();
        assert_eq!(wire.verdict(), Some(crate::wire::Verdict::Limit));
        assert_eq!(wire.statuses[0].current_limit.as_ref().unwrap().unit, WireUnit::Minute);
        assert_eq!(wire.statuses[0].duration_until_reset_ns, Some(42_000_000_000));
        assert!(decode_response(b"\xff\xff").is_err());
    }
}
