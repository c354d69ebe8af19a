// An independent TLS record protection, written from RFC 8446 §5.2-5.4,
// RFC 5246 §6.2.3.3, RFC 5288 and RFC 7905, to check the keys the engine
// hands to the kernel: what this code seals, OpenSSL must open, and back.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "agent/engines/tls/traffic_keys.h"

namespace tapsec::tls::testing {

struct OpenedRecord {
  std::uint8_t type = 0;
  std::vector<std::uint8_t> content;
};

// Seals one record with `keys` at sequence number `seq` (TLS 1.2 or 1.3 per keys.version).
std::vector<std::uint8_t> seal_record(const TrafficKeys& keys, std::uint64_t seq, std::uint8_t type,
                                      std::span<const std::uint8_t> content);
std::optional<OpenedRecord> open_record(const TrafficKeys& keys, std::uint64_t seq,
                                        std::span<const std::uint8_t> record);

// Splits a byte stream into whole records.
std::vector<std::vector<std::uint8_t>> split_records(std::span<const std::uint8_t> bytes);

}  // namespace tapsec::tls::testing
