# Fault injection only hits the traffic it is meant for: requests that carry a header, or a
# small share (at most 5 %) of everything; and the faults in flight are bounded, so a drill
# cannot take a service down.
package meshwork.policies.faults_are_gated

import data.meshwork.lib
import rego.v1

# A percentage as a number, or Envoy's FractionalPercent; the filter's default is 100.
percent(p) := p if is_number(p)

percent(p) := (p.numerator * 100) / denominator(p) if is_object(p)

denominator(p) := 100 if object.get(p, "denominator", "HUNDRED") == "HUNDRED"

denominator(p) := 10000 if p.denominator == "TEN_THOUSAND"

denominator(p) := 1000000 if p.denominator == "MILLION"

share(fault) := percent(object.get(fault, "percentage", 100))

small(config) if {
	every kind in ["abort", "delay"] {
		share(object.get(config, kind, {"percentage": 0})) <= 5
	}
}

violations contains {
	"path": sprintf("%s.headers", [f.config_path]),
	"msg": "faults hit every request: gate them with headers (x-chaos: on), or keep each percentage at 5 or less",
} if {
	some f in lib.filters_of("fault-injection")
	count(object.get(f.config, "headers", [])) == 0
	not small(f.config)
}

violations contains {
	"path": sprintf("%s.max_active_faults", [f.config_path]),
	"msg": "bound the faults in flight with max_active_faults",
} if {
	some f in lib.filters_of("fault-injection")
	object.get(f.config, "max_active_faults", "unset") == "unset"
}
