// `tapsecctl policy check` on temporary policy directories.
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include <gtest/gtest.h>

#include "dbus/tapsecctl/args.h"
#include "dbus/tapsecctl/commands.h"

namespace {

using namespace tapsec::ctl;

class PolicyDir {
 public:
  PolicyDir() {
    char templ[] = "/tmp/tapsec-policy-check-XXXXXX";
    dir_ = mkdtemp(templ);
  }
  ~PolicyDir() {
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }
  void write(const std::string& name, const std::string& text) { std::ofstream(dir_ + "/" + name) << text; }
  const std::string& path() const { return dir_; }

 private:
  std::string dir_;
};

constexpr const char* kPolicy =
    "[Rule root-https]\n"
    "MatchUser=root\n"
    "MatchRole=client\n"
    "MatchPort=443\n"
    "Protocols=tls\n"
    "PeerValidation=system pinned\n"
    "Fallback=yes\n"
    "Action=allow\n";

struct Outcome {
  int exit_code;
  std::string out;
  std::string err;
};

Outcome check(const std::string& dir, std::vector<std::string> extra) {
  std::vector<std::string> args = {"policy", "check", "--dir", dir, "--role", "client", "--host", "example.com",
                                   "--protocols", "tls"};
  args.insert(args.end(), extra.begin(), extra.end());
  auto parsed = parse_arguments(args);
  EXPECT_TRUE(parsed.invocation) << parsed.error;
  if (!parsed.invocation) return {-1, "", ""};
  std::ostringstream out, err;
  int code = run(*parsed.invocation, out, err);
  return {code, out.str(), err.str()};
}

#ifdef TAPSECCTL_HAVE_POLICY

TEST(PolicyCheck, AllowedRequestExitsZeroAndNamesTheRule) {
  PolicyDir dir;
  dir.write("50-test.policy", kPolicy);
  auto o = check(dir.path(), {"--uid", "0", "--port", "443"});
  EXPECT_EQ(o.exit_code, kExitSuccess) << o.out << o.err;
  EXPECT_NE(o.out.find("Decision: allowed"), std::string::npos) << o.out;
  EXPECT_NE(o.out.find("root-https"), std::string::npos) << o.out;
  EXPECT_NE(o.out.find("Explanation:"), std::string::npos) << o.out;
}

TEST(PolicyCheck, DeniedRequestExitsOne) {
  PolicyDir dir;
  dir.write("50-test.policy", kPolicy);
  auto o = check(dir.path(), {"--uid", "65534", "--port", "443"});
  EXPECT_EQ(o.exit_code, kExitFailure) << o.out << o.err;
  EXPECT_NE(o.out.find("Decision: denied"), std::string::npos) << o.out;
  o = check(dir.path(), {"--uid", "0", "--port", "80"});
  EXPECT_EQ(o.exit_code, kExitFailure) << o.out << o.err;
}

TEST(PolicyCheck, JsonOutput) {
  PolicyDir dir;
  dir.write("50-test.policy", kPolicy);
  auto o = check(dir.path(), {"--uid", "0", "--port", "443", "--json"});
  EXPECT_EQ(o.exit_code, kExitSuccess) << o.out << o.err;
  EXPECT_EQ(o.out.rfind("{\"allowed\":true,\"rule\":\"root-https\",", 0), 0u) << o.out;
  EXPECT_NE(o.out.find("\"explanation\":["), std::string::npos) << o.out;
  EXPECT_EQ(std::count(o.out.begin(), o.out.end(), '\n'), 1) << "one JSON document per line";
}

TEST(PolicyCheck, BrokenPolicyExitsTwoWithTheLocation) {
  PolicyDir dir;
  dir.write("10-broken.policy", "[Rule broken\nAction=allow\n");
  auto o = check(dir.path(), {"--uid", "0", "--port", "443"});
  EXPECT_EQ(o.exit_code, kExitUsage) << o.out << o.err;
  EXPECT_NE(o.err.find("10-broken.policy"), std::string::npos) << o.err;
}

TEST(PolicyCheck, MissingDirectoryIsAnEmptyPolicyThatDenies) {
  auto o = check("/nonexistent/tapsec/policy.d", {"--uid", "0", "--port", "443"});
  EXPECT_EQ(o.exit_code, kExitFailure) << o.out << o.err;
}

#else

TEST(PolicyCheck, UnavailableWithoutThePolicyLibrary) {
  PolicyDir dir;
  auto o = check(dir.path(), {"--uid", "0", "--port", "443"});
  EXPECT_EQ(o.exit_code, kExitUsage);
  std::fprintf(stderr, "tapsec_policy is not built: only the fallback path of policy check is tested\n");
}

#endif

}  // namespace
