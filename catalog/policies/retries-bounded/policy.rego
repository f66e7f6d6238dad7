# No request is tried more than six times. Each retry can add one request to an upstream in
# trouble; at five retries a failing dependency already sees six times its load.
package meshwork.policies.retries_bounded

import data.meshwork.lib
import rego.v1

max_allowed := 5

violations contains {
	"path": sprintf("%s.max_retries", [f.config_path]),
	"msg": sprintf("max_retries %v is above %v", [f.config.max_retries, max_allowed]),
} if {
	some f in lib.filters_of("retry")
	f.config.max_retries > max_allowed
}

violations contains {
	"path": sprintf("%s.retry_on", [f.config_path]),
	"msg": "retry_on is empty: the filter would retry nothing; remove it or name the conditions",
} if {
	some f in lib.filters_of("retry")
	f.config.retry_on == []
}

violations contains {
	"path": sprintf("%s.route.retry_policy.num_retries", [path]),
	"msg": sprintf("num_retries %v is above %v", [route.route.retry_policy.num_retries, max_allowed]),
} if {
	some [path, route] in lib.envoy_routes
	route.route.retry_policy.num_retries > max_allowed
}
