# eBPF programs state the capabilities their loader needs, and need no more than Linux 5.8+
# requires: CAP_BPF with CAP_NET_ADMIN (networking programs) or CAP_PERFMON (tracing), never
# CAP_SYS_ADMIN, which grants most of root.
package meshwork.policies.ebpf_least_privilege

import rego.v1

ebpf := object.get(input, "ebpf", {})

violations contains {"path": "ebpf.capabilities", "msg": "an eBPF item must list the capabilities loading it needs"} if {
	input.kind == "ebpf"
	count(object.get(ebpf, "capabilities", [])) == 0
}

violations contains {
	"path": sprintf("ebpf.capabilities[%d]", [i]),
	"msg": "CAP_SYS_ADMIN is not needed to load eBPF programs since Linux 5.8: use CAP_BPF with CAP_NET_ADMIN or CAP_PERFMON",
} if {
	input.kind == "ebpf"
	some i, cap in ebpf.capabilities
	cap == "CAP_SYS_ADMIN"
}

violations contains {"path": sprintf("ebpf.capabilities[%d]", [i]), "msg": sprintf("%q is not a capability name", [cap])} if {
	input.kind == "ebpf"
	some i, cap in ebpf.capabilities
	not regex.match(`^CAP_[A-Z_]+$`, cap)
}

violations contains {"path": "ebpf.load", "msg": "state the command that loads the program"} if {
	input.kind == "ebpf"
	object.get(ebpf, "load", "") == ""
}
