// A self-signed P-256 identity (CN fuzz.test) for the TLS fuzz targets'
// servers, made once per process through the agent's own loader.
#pragma once

#include <memory>

#include "agent/engines/tls/tls_engine.h"

namespace tapsec::tls::fuzz {

std::shared_ptr<Credentials> throwaway_identity();

}  // namespace tapsec::tls::fuzz
