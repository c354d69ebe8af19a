// WireGuard identity key files: created 0600 when missing, refused when
// someone other than root or the agent owns them or their directory, when
// others may read or write them, or when they are symbolic links.

#include "agent/state/wg_keys.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>

#include "tests/unit/policy/test_support.h"

namespace tapsec::state {
namespace {

using policy::testing::EffectiveUid;
using policy::testing::TempDir;

constexpr uid_t kOtherUid = 4242;  // a made-up user that owns nothing here
constexpr const char* kKey = "YAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";

class WireguardKeyFile : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "SKIPPED LOUDLY: changing file owners needs root";
  }
  std::string load_error(const std::string& path) {
    policy::Identity identity;
    identity.name = "wg";
    identity.type = "wireguard";
    identity.key_file = path;
    auto loaded = WireguardKey::load_or_create(identity);
    if (auto* error = std::get_if<std::string>(&loaded)) return *error;
    return "";
  }
  static void chown_to(const std::string& path, uid_t uid) { ASSERT_EQ(::chown(path.c_str(), uid, uid), 0) << path; }
  TempDir dir;
};

TEST_F(WireguardKeyFile, GoodFileIsAccepted) {
  EXPECT_EQ(load_error(dir.write("wg.key", std::string(kKey) + "\n", 0600)), "");
  EXPECT_EQ(load_error(dir.write("ro.key", kKey, 0400)), "");
}

TEST_F(WireguardKeyFile, MissingFileIsCreatedPrivate) {
  const std::string path = dir.path() + "/new.key";
  EXPECT_EQ(load_error(path), "");
  struct stat status {};
  ASSERT_EQ(::stat(path.c_str(), &status), 0);
  EXPECT_EQ(status.st_mode & 07777, 0600u);
}

TEST_F(WireguardKeyFile, OwnedByAnotherUserIsRefused) {
  const std::string path = dir.write("wg.key", kKey, 0600);
  chown_to(path, kOtherUid);
  EXPECT_EQ(load_error(path),
            "WireGuard key file " + path + " is owned by uid 4242: run \"chown root:root " + path + "\"");
}

TEST_F(WireguardKeyFile, ReadableByItsGroupIsRefused) {
  const std::string path = dir.write("wg.key", kKey, 0660);
  EXPECT_EQ(load_error(path),
            "WireGuard key file " + path + " has mode 0660 and holds a private key: run \"chmod 0600 " + path + "\"");
  ::chmod(path.c_str(), 0604);
  EXPECT_NE(load_error(path).find("has mode 0604 and holds a private key"), std::string::npos);
}

TEST_F(WireguardKeyFile, WritableDirectoryIsRefused) {
  ASSERT_EQ(::chmod(dir.path().c_str(), 0777), 0);
  const std::string existing = dir.write("wg.key", kKey, 0600);
  EXPECT_EQ(load_error(existing), "WireGuard key file " + existing + ": its directory " + dir.path() +
                                      " has mode 0777 and is writable by its group and every user: run \"chmod 0755 " +
                                      dir.path() + "\"");
  // Nor is a new key made there.
  const std::string fresh = dir.path() + "/fresh.key";
  EXPECT_NE(load_error(fresh).find("its directory " + dir.path() + " has mode 0777"), std::string::npos);
  EXPECT_NE(::access(fresh.c_str(), F_OK), 0);
}

TEST_F(WireguardKeyFile, SymbolicLinkIsRefused) {
  const std::string target = dir.write("real.key", kKey, 0600);
  const std::string link = dir.path() + "/wg.key";
  ASSERT_EQ(::symlink(target.c_str(), link.c_str()), 0);
  EXPECT_EQ(load_error(link), "WireGuard key file " + link + " is a symbolic link; name the file itself");
}

TEST_F(WireguardKeyFile, TheAgentsOwnUidIsAccepted) {
  const std::string path = dir.write("wg.key", kKey, 0600);
  chown_to(path, kOtherUid);
  chown_to(dir.path(), kOtherUid);
  {
    EffectiveUid agent(kOtherUid);
    ASSERT_TRUE(agent.ok());
    EXPECT_EQ(load_error(path), "");
    // It may also create its own key in its own directory.
    EXPECT_EQ(load_error(dir.path() + "/created.key"), "");
  }
  EXPECT_NE(load_error(path).find("is owned by uid 4242"), std::string::npos);
}

}  // namespace
}  // namespace tapsec::state
