// A proxy-wasm HTTP filter on the AssemblyScript SDK (@solo-io/proxy-runtime 0.1.8, ABI 0.2.0).
// - request header "x-as-deny": local reply 403 with header x-as-denied and a body
// - every response gets "x-as-config: <plugin configuration>"
// It exists to test that meshwork runs filters from a non-Rust SDK as Envoy does.
export * from "@solo-io/proxy-runtime/proxy"; // the proxy_on_* exports, malloc, free, proxy_abi_version_0_2_0
import {
  RootContext, Context, registerRootContext, FilterHeadersStatusValues,
  stream_context, send_local_response, GrpcStatusValues, HeaderPair, Headers,
  log, LogLevelValues,
} from "@solo-io/proxy-runtime";
// Not re-exported from the package index in 0.1.8, but public in runtime.ts:
import { get_buffer_bytes, BufferTypeValues } from "@solo-io/proxy-runtime/runtime";

class AsFilterRoot extends RootContext {
  config: string = "";

  // 0.1.8's RootContext.onConfigure passes configuration_size as the *address*
  // where the host writes the returned size (fixed upstream after 0.1.15), so the
  // host scribbles 4 bytes at guest address == config length. Read it ourselves.
  onConfigure(configuration_size: u32): bool {
    if (configuration_size == 0) {
      this.config = "";
      return true;
    }
    const buf = get_buffer_bytes(BufferTypeValues.PluginConfiguration, 0, configuration_size);
    this.config = String.UTF8.decode(buf);
    return true;
  }

  createContext(context_id: u32): Context {
    return new AsFilterHttp(context_id, this);
  }
}

class AsFilterHttp extends Context {
  asfilterRoot: AsFilterRoot;

  constructor(context_id: u32, root_context: AsFilterRoot) {
    super(context_id, root_context);
    this.asfilterRoot = root_context;
  }

  onRequestHeaders(headers: u32, end_of_stream: bool): FilterHeadersStatusValues {
    // get() returns "" when the host answers NotFound (ABI 0.2.x) for a missing header.
    const deny = stream_context.headers.request.get("x-as-deny");
    if (deny != "") {
      log(LogLevelValues.info, "as-headers: denying request, x-as-deny=" + deny);
      const extra: Headers = [];
      extra.push(new HeaderPair(String.UTF8.encode("x-as-denied"), String.UTF8.encode("1")));
      send_local_response(403, "as_denied", String.UTF8.encode("denied by the AssemblyScript filter\n"), extra, GrpcStatusValues.InvalidCode);
      return FilterHeadersStatusValues.StopIteration;
    }
    return FilterHeadersStatusValues.Continue;
  }

  onResponseHeaders(headers: u32, end_of_stream: bool): FilterHeadersStatusValues {
    // Not `cfg == "" ? "(none)" : cfg`: AssemblyScript 0.14 releases the field's string once too
    // often through that ternary, and the second response traps in the runtime (rt/pure.ts).
    let value: string = "(none)";
    if (this.asfilterRoot.config != "") {
      value = this.asfilterRoot.config;
    }
    stream_context.headers.response.add("x-as-config", value);
    return FilterHeadersStatusValues.Continue;
  }
}

registerRootContext((context_id: u32): RootContext => { return new AsFilterRoot(context_id); }, "as_headers");
