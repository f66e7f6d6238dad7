//! How a stream's upstream exchange ended, read from Envoy's `response.code` and
//! `response.code_details` attributes in `on_log`. Filters that judge upstream health (circuit
//! breaker, outlier detection, retry budgets) count only what the upstream did, never local
//! replies from filters (their own 503s included).

use crate::{property, property_i64};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream answered with this status.
    Upstream(u16),
    /// No connection could be made.
    ConnectFailure,
    /// The connection was reset or closed before (or while) the response came.
    Reset,
    /// The router gave up waiting (route or per-try timeout).
    Timeout,
    /// A filter answered, or the stream never reached the upstream.
    Local,
}

impl Outcome {
    /// Classifies Envoy's response code details (see Envoy's `StreamInfo::ResponseCodeDetails`).
    pub fn from_details(code: Option<u16>, details: &[u8]) -> Outcome {
        let details = std::str::from_utf8(details).unwrap_or("");
        match details {
            "via_upstream" => code.map_or(Outcome::Local, Outcome::Upstream),
            "upstream_response_timeout" | "upstream_per_try_timeout" | "upstream_per_try_idle_timeout" => {
                Outcome::Timeout
            }
            d if d.starts_with("upstream_reset_before_response_started") && d.contains("connection_failure") => {
                Outcome::ConnectFailure
            }
            d if d.starts_with("upstream_reset") => Outcome::Reset,
            _ => Outcome::Local,
        }
    }

    /// The current stream's outcome (call from `on_log`).
    pub fn of_stream() -> Outcome {
        let code = property_i64(b"response\0code").and_then(|c| u16::try_from(c).ok());
        let details = property(b"response\0code_details").unwrap_or_default();
        Outcome::from_details(code, &details)
    }

    pub fn reached_upstream(self) -> bool {
        self != Outcome::Local
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoys_details_classify() {
        assert_eq!(Outcome::from_details(Some(503), b"via_upstream"), Outcome::Upstream(503));
        assert_eq!(
            Outcome::from_details(Some(503), b"upstream_reset_before_response_started{connection_failure}"),
            Outcome::ConnectFailure
        );
        assert_eq!(
            Outcome::from_details(
                Some(503),
                b"upstream_reset_before_response_started{connection_failure,delayed_connect_error:_111}"
            ),
            Outcome::ConnectFailure
        );
        assert_eq!(
            Outcome::from_details(Some(503), b"upstream_reset_before_response_started{remote_reset}"),
            Outcome::Reset
        );
        assert_eq!(Outcome::from_details(Some(504), b"upstream_response_timeout"), Outcome::Timeout);
        assert_eq!(Outcome::from_details(Some(429), b"rate limited"), Outcome::Local);
        assert_eq!(Outcome::from_details(None, b""), Outcome::Local);
    }
}
