// A filter written against the proxy-wasm C++ SDK (github.com/proxy-wasm/proxy-wasm-cpp-sdk),
// for trying meshwork with a C++-built module: it tags requests and responses, answers
// /cpp-local itself, and reads a property. Build: make -C tests/filters/cpp-sdk
// PROXY_WASM_CPP_SDK=/path/to/the/sdk (clang and wasi-libc from Debian; see the README).

#include <string>
#include <string_view>

#include "proxy_wasm_intrinsics.h"

class CppRoot : public RootContext {
 public:
  explicit CppRoot(uint32_t id, std::string_view root_id) : RootContext(id, root_id) {}
  bool onConfigure(size_t size) override {
    auto config = getBufferBytes(WasmBufferType::PluginConfiguration, 0, size);
    greeting_ = config->toString();
    if (greeting_.empty()) greeting_ = "hello from C++";
    LOG_INFO("cpp-sdk filter configured: " + greeting_);
    return true;
  }
  std::string greeting_;
};

class CppStream : public Context {
 public:
  explicit CppStream(uint32_t id, RootContext* root) : Context(id, root) {}

  FilterHeadersStatus onRequestHeaders(uint32_t, bool) override {
    auto path = getRequestHeader(":path");
    path_ = path->toString();
    addRequestHeader("x-cpp-sdk", greeting());
    if (path_ == "/cpp-local") {
      sendLocalResponse(200, "", "answered by a C++ filter\n", {{"x-cpp-local", "yes"}});
      return FilterHeadersStatus::StopIteration;
    }
    return FilterHeadersStatus::Continue;
  }

  FilterHeadersStatus onResponseHeaders(uint32_t, bool) override {
    addResponseHeader("x-cpp-path", path_);
    std::string source;
    if (getValue({"source", "address"}, &source)) addResponseHeader("x-cpp-source", source);
    return FilterHeadersStatus::Continue;
  }

  void onLog() override { LOG_INFO("cpp-sdk filter done with " + path_); }

 private:
  std::string greeting() { return static_cast<CppRoot*>(root())->greeting_; }
  std::string path_;
};

static RegisterContextFactory register_cpp(CONTEXT_FACTORY(CppStream), ROOT_FACTORY(CppRoot), "");
