// Shared helpers for the policy tests.
#pragma once

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <variant>
#include <vector>

#include "tapsec/policy.h"

namespace tapsec::policy::testing {

// Parses text that must be valid; fails the test with every error otherwise.
inline Policy parse_ok(std::string_view text, const std::string& file = "test.policy") {
  auto result = Policy::parse(text, file);
  if (auto* errors = std::get_if<std::vector<Error>>(&result)) {
    std::string all;
    for (const Error& e : *errors) all += e.to_string() + "\n";
    ADD_FAILURE() << "unexpected errors:\n" << all;
    return Policy();
  }
  return std::move(std::get<Policy>(result));
}

inline std::vector<Error> parse_errors(std::string_view text, const std::string& file = "test.policy") {
  auto result = Policy::parse(text, file);
  if (auto* errors = std::get_if<std::vector<Error>>(&result)) return *errors;
  ADD_FAILURE() << "expected errors, but the text parsed";
  return {};
}

inline std::string describe(const std::vector<Error>& errors) {
  std::string all;
  for (const Error& e : errors) all += e.to_string() + "\n";
  return all;
}

// Expects exactly one error, in `file` at `line`, whose message contains
// `fragment`.
inline void expect_single_error(std::string_view text, unsigned line, std::string_view fragment,
                                const std::string& file = "t.policy") {
  const auto errors = parse_errors(text, file);
  ASSERT_EQ(errors.size(), 1u) << describe(errors);
  EXPECT_EQ(errors[0].file, file);
  EXPECT_EQ(errors[0].line, line) << describe(errors);
  EXPECT_NE(errors[0].message.find(fragment), std::string::npos) << describe(errors);
}

// A directory under $TMPDIR removed with everything in it at the end.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "tapsec-policy-XXXXXX").string();
    if (!::mkdtemp(pattern.data())) throw std::runtime_error("mkdtemp failed");
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  const std::string& path() const { return path_; }
  std::string write(const std::string& name, const std::string& contents, mode_t mode = 0600) const {
    const std::string file = path_ + "/" + name;
    std::ofstream(file, std::ios::binary | std::ios::trunc) << contents;
    ::chmod(file.c_str(), mode);
    return file;
  }

 private:
  std::string path_;
};

// Acts as an agent running as `uid` for the scope: the effective uid only,
// so a test running as root can go back.
class EffectiveUid {
 public:
  explicit EffectiveUid(uid_t uid) : ok_(::seteuid(uid) == 0) {}
  EffectiveUid(const EffectiveUid&) = delete;
  EffectiveUid& operator=(const EffectiveUid&) = delete;
  ~EffectiveUid() {
    if (ok_) (void)::seteuid(0);
  }
  bool ok() const { return ok_; }

 private:
  bool ok_;
};

// 32 bytes of key as hex.
inline constexpr const char* kKeyHex = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

}  // namespace tapsec::policy::testing
