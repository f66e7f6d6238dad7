# A global rate limit says what happens when its service cannot answer, and how long it waits.
# Left implicit, an outage of the rate-limit service either blocks all traffic or silently
# lifts every quota, and nobody chose which.
package meshwork.policies.rate_limit_fail_mode

import data.meshwork.lib
import rego.v1

violations contains {
	"path": f.config_path,
	"msg": "state failure_mode_deny: true refuses traffic when the rate-limit service cannot answer, false lets it through",
} if {
	some f in lib.filters_of("global-rate-limit")
	object.get(f.config, "failure_mode_deny", "unset") == "unset"
}

violations contains {
	"path": f.config_path,
	"msg": "set timeout: how long a request may wait for the rate-limit service",
} if {
	some f in lib.filters_of("global-rate-limit")
	object.get(f.config, "timeout", "unset") == "unset"
}

# Envoy's own rate-limit filter.
violations contains {
	"path": sprintf("%s.typed_config", [path]),
	"msg": "envoy.filters.http.ratelimit: state failure_mode_deny and timeout",
} if {
	some [path, hf] in lib.http_filters
	hf.name == "envoy.filters.http.ratelimit"
	some key in ["failure_mode_deny", "timeout"]
	object.get(hf.typed_config, key, "unset") == "unset"
}
