//! The gRPC face of the service: Envoy's `envoy.service.ratelimit.v3.RateLimitService/
//! ShouldRateLimit`, as Envoy's `envoy.filters.http.ratelimit` (and any RLS client) calls it.
//! The same decision as `POST /json` ([`super::http::decide`]).

use std::sync::Arc;

use meshwork_grpc_api::ratelimit::rate_limit_response::{self as pb, rate_limit::Unit as PbUnit};
use meshwork_grpc_api::ratelimit::rate_limit_service_server::RateLimitService;
use meshwork_grpc_api::ratelimit::{Duration as PbDuration, RateLimitRequest, RateLimitResponse};
use meshwork_rate_limit_descriptors::check::{self, Code};
use meshwork_rate_limit_descriptors::descriptor::Descriptor;
use meshwork_rate_limit_descriptors::window::Unit;

use super::http::{Refusal, Service, decide};

pub struct Grpc(pub Arc<Service>);

fn code(c: Code) -> i32 {
    match c {
        Code::Ok => pb::Code::Ok as i32,
        Code::OverLimit => pb::Code::OverLimit as i32,
    }
}

fn unit(u: Unit) -> i32 {
    (match u {
        Unit::Second => PbUnit::Second,
        Unit::Minute => PbUnit::Minute,
        Unit::Hour => PbUnit::Hour,
        Unit::Day => PbUnit::Day,
    }) as i32
}

fn response(r: &check::Response) -> RateLimitResponse {
    RateLimitResponse {
        overall_code: code(r.overall_code),
        statuses: r
            .statuses
            .iter()
            .map(|s| pb::DescriptorStatus {
                code: code(s.code),
                current_limit: s.current_limit.as_ref().map(|l| pb::RateLimit {
                    name: l.name.clone().unwrap_or_default(),
                    requests_per_unit: l.requests_per_unit,
                    unit: unit(l.unit),
                }),
                limit_remaining: s.limit_remaining,
                duration_until_reset: s.current_limit.as_ref().map(|_| PbDuration {
                    seconds: (s.duration_until_reset_ns / 1_000_000_000) as i64,
                    nanos: (s.duration_until_reset_ns % 1_000_000_000) as i32,
                }),
            })
            .collect(),
        response_headers_to_add: Vec::new(),
        request_headers_to_add: Vec::new(),
    }
}

#[tonic::async_trait]
impl RateLimitService for Grpc {
    async fn should_rate_limit(
        &self,
        request: tonic::Request<RateLimitRequest>,
    ) -> Result<tonic::Response<RateLimitResponse>, tonic::Status> {
        let r = request.into_inner();
        let ask = check::Request {
            domain: r.domain,
            descriptors: r
                .descriptors
                .into_iter()
                .map(|d| Descriptor::new(d.entries.into_iter().map(|e| (e.key, e.value))))
                .collect(),
            hits_addend: r.hits_addend,
        };
        match decide(&self.0, &ask).await {
            Ok(answer) => Ok(tonic::Response::new(response(&answer))),
            Err(Refusal::BadRequest(e)) => Err(tonic::Status::invalid_argument(e)),
            Err(Refusal::Store(e)) => Err(tonic::Status::unavailable(e)),
        }
    }
}
