// Fuzzes Policy::parse with arbitrary text; whatever parses is evaluated
// against a few requests, which must never crash and always explain.

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "tapsec/policy.h"

namespace {

using tapsec::policy::Caller;
using tapsec::policy::Decision;
using tapsec::policy::Error;
using tapsec::policy::Offload;
using tapsec::policy::Policy;
using tapsec::policy::Request;

void check_decision(const Decision& decision) {
  // Every decision says why; a denial always has a reason.
  if (decision.explanation.empty()) std::abort();
  if (!decision.allowed && decision.denial_reason.empty()) std::abort();
  if (decision.allowed && decision.protocols.empty()) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto result = Policy::parse(text, "fuzz.policy");
  if (auto* errors = std::get_if<std::vector<Error>>(&result)) {
    if (errors->empty()) std::abort();  // failure without a reason
    for (const Error& error : *errors) {
      if (error.message.empty()) std::abort();
      (void)error.to_string();
    }
    return 0;
  }
  const Policy& policy = std::get<Policy>(result);

  Caller caller;
  caller.uid = 1000;
  caller.gid = 100;
  caller.supplementary_gids = {27, 0};
  caller.unit = "nginx.service";
  caller.cgroup = "/system.slice/nginx.service";

  Request request;
  request.protocols = {"tls", "tcpcrypt"};
  request.role = "client";
  request.host = "www.example.com";
  request.address = "10.1.2.3";
  request.port = 443;
  check_decision(policy.evaluate(caller, request));

  request.role = "server";
  request.address = "2001:db8::1";
  request.identity = "web";
  request.psk = "backup-link";
  request.wants_export = true;
  request.peer_validation = "none";
  request.offload = Offload::Required;
  check_decision(policy.evaluate(Caller{}, request));

  for (const std::string& name : policy.identity_names())
    if (!policy.identity(name)) std::abort();
  for (const std::string& name : policy.psk_names()) {
    const auto* psk = policy.psk(name);
    if (!psk || psk->key.size() < 16) std::abort();
  }
  return 0;
}
