# Retries come with a budget and a deadline. Without a budget, retries multiply the load on an
# upstream that is already failing (each try adds one more request); without a deadline a
# client can wait for every try's full timeout.
package meshwork.policies.retry_budgeted

import data.meshwork.lib
import rego.v1

violations contains {
	"path": sprintf("%s.budget", [f.config_path]),
	"msg": "retries without a budget multiply the load on an upstream that is already failing; keep the budget (a share of requests over a window)",
} if {
	some f in lib.filters_of("retry")
	object.get(f.config, "budget", "default") == null
}

# Envoy mode: the router retries, so the deadline comes from per_try_timeout or a timeout
# filter in the same chain (callout mode has its own overall timeout).
violations contains {
	"path": f.config_path,
	"msg": "retries in envoy mode need a deadline: set per_try_timeout or put a timeout filter in the same chain",
} if {
	some f in lib.filters_of("retry")
	object.get(f.config, "mode", "callout") == "envoy"
	not f.config.per_try_timeout
	not timeout_in_chain(f)
}

timeout_in_chain(f) if {
	some t in lib.filters_of("timeout")
	t.chain == f.chain
	t.doc == f.doc
}

# Envoy's own route retries: the cluster bounds them (a retry budget or max_retries).
violations contains {
	"path": sprintf("%s.route.retry_policy", [path]),
	"msg": sprintf("route retries to cluster %q are not bounded: give the cluster circuit_breakers.thresholds with retry_budget or max_retries", [route.route.cluster]),
} if {
	some [path, route] in lib.envoy_routes
	route.route.retry_policy
	not cluster_bounds_retries(route.route.cluster)
}

cluster_bounds_retries(name) if {
	some c in input.static_resources.clusters
	c.name == name
	some t in c.circuit_breakers.thresholds
	t.retry_budget
}

cluster_bounds_retries(name) if {
	some c in input.static_resources.clusters
	c.name == name
	some t in c.circuit_breakers.thresholds
	t.max_retries
}
