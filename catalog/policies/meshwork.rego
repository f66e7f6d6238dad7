# Shared by the catalog's policies: every Wasm filter of a document, whatever its form, as
#   {"path", "kind", "config", "config_path", "module", "sha256", "chain", "doc"}
# so each policy states its rule once for meshwork configs, Envoy bootstraps and Istio
# WasmPlugins. `kind` is the module's name (retry, timeout, global-rate-limit, ...).
package meshwork.lib

import rego.v1

# The module's name: its last path segment without .wasm, a tag or a digest.
module_kind(module) := kind if {
	parts := split(module, "/")
	last := parts[count(parts) - 1]
	kind := trim_suffix(split(split(last, "@")[0], ":")[0], ".wasm")
}

native_filter(path, chain, f) := {
	"path": path,
	"kind": module_kind(f.module),
	"config": object.get(f, "configuration", {}),
	"config_path": sprintf("%s.configuration", [path]),
	"module": f.module,
	"sha256": object.get(f, "sha256", null),
	"chain": chain,
	"doc": "meshwork-config",
}

# meshwork's own configuration: the top-level chain and each listener's.
wasm_filters contains native_filter(sprintf("filters[%d]", [i]), "main", f) if {
	some i, f in input.filters
}

wasm_filters contains native_filter(sprintf("listeners[%d].filters[%d]", [l, i]), sprintf("listeners[%d]", [l]), f) if {
	some l, listener in input.listeners
	some i, f in listener.filters
}

# An Envoy bootstrap: envoy.filters.http.wasm in every HTTP connection manager.
hcm_filters contains [sprintf("static_resources.listeners[%d].filter_chains[%d].filters[%d].typed_config.http_filters[%d]", [l, c, n, h]), sprintf("%d.%d.%d", [l, c, n]), hf] if {
	some l, listener in input.static_resources.listeners
	some c, chain in listener.filter_chains
	some n, nf in chain.filters
	some h, hf in nf.typed_config.http_filters
}

envoy_config(config) := json.unmarshal(config.configuration.value) if {
	is_string(config.configuration.value)
} else := object.get(config, "configuration", {})

envoy_module(code) := code.local.filename if {
	code.local.filename
} else := code.remote.http_uri.uri

wasm_filters contains {
	"path": path,
	"kind": module_kind(envoy_module(hf.typed_config.config.vm_config.code)),
	"config": envoy_config(hf.typed_config.config),
	"config_path": sprintf("%s.typed_config.config.configuration", [path]),
	"module": envoy_module(hf.typed_config.config.vm_config.code),
	"sha256": object.get(object.get(hf.typed_config.config.vm_config.code, "remote", {}), "sha256", null),
	"chain": chain,
	"doc": "envoy-bootstrap",
} if {
	some [path, chain, hf] in hcm_filters
	hf.name == "envoy.filters.http.wasm"
}

# An Istio WasmPlugin.
wasm_filters contains {
	"path": "spec",
	"kind": module_kind(input.spec.url),
	"config": object.get(input.spec, "pluginConfig", {}),
	"config_path": "spec.pluginConfig",
	"module": input.spec.url,
	"sha256": object.get(input.spec, "sha256", null),
	"chain": "plugin",
	"doc": "istio-wasmplugin",
} if {
	input.kind == "WasmPlugin"
}

filters_of(kind) := {f | some f in wasm_filters; f.kind == kind}

# Envoy's routes, with their paths.
envoy_routes contains [path, route] if {
	some l, listener in input.static_resources.listeners
	some c, chain in listener.filter_chains
	some n, nf in chain.filters
	some v, vh in nf.typed_config.route_config.virtual_hosts
	some i, route in vh.routes
	path := sprintf("static_resources.listeners[%d].filter_chains[%d].filters[%d].typed_config.route_config.virtual_hosts[%d].routes[%d]", [l, c, n, v, i])
}

# Every HTTP filter of an Envoy bootstrap (any type), with its path.
http_filters contains [path, hf] if {
	some [path, _, hf] in hcm_filters
}
