# Modules from elsewhere are pinned by digest, so what runs is what was reviewed: a tag or a
# URL can be moved to other bytes at any time. (Istio compares an oci:// module's sha256 with
# the manifest digest, an http(s) module's with the module's own.)
package meshwork.policies.filters_pinned

import data.meshwork.lib
import rego.v1

remote(f) if startswith(f.module, "oci://")

remote(f) if startswith(f.module, "http://")

remote(f) if startswith(f.module, "https://")

# An Istio url without a scheme is an OCI reference.
remote(f) if {
	f.doc == "istio-wasmplugin"
	not contains(f.module, "://")
}

pinned(f) if contains(f.module, "@sha256:")

pinned(f) if {
	is_string(f.sha256)
	regex.match(`^(sha256:)?[a-f0-9]{64}$`, f.sha256)
}

violations contains {
	"path": f.path,
	"msg": sprintf("module %s is not pinned: add sha256 (the manifest digest for oci://, the module's for http) or reference it @sha256:", [f.module]),
} if {
	some f in lib.wasm_filters
	remote(f)
	not pinned(f)
}

violations contains {
	"path": sprintf("%s.sha256", [f.path]),
	"msg": sprintf("sha256 %v is not 64 lower-case hex digits", [f.sha256]),
} if {
	some f in lib.wasm_filters
	is_string(f.sha256)
	not regex.match(`^(sha256:)?[a-f0-9]{64}$`, f.sha256)
}

violations contains {
	"path": sprintf("%s.sha256", [f.path]),
	"msg": "sha256 is not a string: quote it in YAML (a digest of only digits reads as a number)",
} if {
	some f in lib.wasm_filters
	f.sha256 != null
	not is_string(f.sha256)
}
