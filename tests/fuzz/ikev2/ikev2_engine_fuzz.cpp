// libFuzzer target for the IKE engine past the codec: SK decryption and
// integrity, SKF reassembly (RFC 7383), cookies, and the exchange state
// machine of IKE_SA_INIT, IKE_AUTH, CREATE_CHILD_SA (rekeys of both kinds,
// collisions) and INFORMATIONAL (delete, liveness, MOBIKE). The input is a
// script (engine_script.h): datagrams, clock steps, timer runs and agent
// commands for one engine. Randomness is fixed (deterministic_random.h), so
// the seeds, recorded from a real peer engine by ikev2_engine_seeds, decrypt
// and carry the target deep into established SAs before mutations bite.
// Crashes, hangs, leaks and exceptions are findings; refusals are not.
#include <cstdint>
#include <span>

#include "tests/fuzz/ikev2/deterministic_random.h"
#include "tests/fuzz/ikev2/engine_script.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace tapsec::ikev2::fuzz;
  DeterministicRandom::restart(1);
  (void)run_script(std::span(data, size));
  return 0;
}
