// Who may own and write policy files, PSK key files and the directories
// holding them: root or the agent's own uid, never writable by group or
// others, secrets readable by nobody else. Changing owners needs root.

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tests/unit/policy/test_support.h"

namespace tapsec::policy {
namespace {

using testing::describe;
using testing::EffectiveUid;
using testing::kKeyHex;
using testing::TempDir;

constexpr uid_t kOtherUid = 4242;  // a made-up user that owns nothing here

bool contains(const std::string& text, const std::string& fragment) { return text.find(fragment) != std::string::npos; }

std::vector<Error> errors_of(const std::string& dir) {
  auto result = Policy::load_directory(dir);
  if (auto* errors = std::get_if<std::vector<Error>>(&result)) return *errors;
  return {};
}

void expect_loads(const std::string& dir) {
  const auto errors = errors_of(dir);
  EXPECT_TRUE(errors.empty()) << describe(errors);
}

// Expects one error about `file` whose message contains `fragment`.
void expect_refused(const std::string& dir, const std::string& file, const std::string& fragment) {
  const auto errors = errors_of(dir);
  ASSERT_EQ(errors.size(), 1u) << describe(errors);
  EXPECT_EQ(errors[0].file, file) << describe(errors);
  EXPECT_TRUE(contains(errors[0].message, fragment)) << errors[0].message;
}

class PolicyOwnership : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "SKIPPED LOUDLY: changing file owners needs root";
  }
  static void chown_to(const std::string& path, uid_t uid) { ASSERT_EQ(::chown(path.c_str(), uid, uid), 0) << path; }
  static void make_dir(const std::string& path, mode_t mode) {
    ASSERT_EQ(::mkdir(path.c_str(), 0700), 0) << path;
    ASSERT_EQ(::chmod(path.c_str(), mode), 0) << path;
  }
  TempDir dir;
  const std::string rule = "[Rule r]\nAction=allow\n";
};

TEST_F(PolicyOwnership, GoodFilesAreAccepted) {
  dir.write("50.policy", rule, 0644);
  const std::string key = dir.write("k.key", kKeyHex, 0600);
  dir.write("60.policy", "[PSK p]\nKeyFile=" + key + "\n", 0644);
  dir.write("70.policy", std::string("[PSK q]\nKey=hex:") + kKeyHex + "\n", 0600);
  expect_loads(dir.path());
}

TEST_F(PolicyOwnership, PolicyFileOwnedByAnotherUserIsRefused) {
  const std::string file = dir.write("50.policy", rule, 0644);
  chown_to(file, kOtherUid);
  expect_refused(dir.path(), file,
                 "policy file " + file + " is owned by uid 4242: run \"chown root:root " + file + "\"");
}

TEST_F(PolicyOwnership, GroupWritablePolicyFileIsRefused) {
  const std::string file = dir.write("50.policy", rule, 0664);
  expect_refused(dir.path(), file,
                 "policy file " + file + " has mode 0664 and is writable by its group: run \"chmod 0644 " + file +
                     "\"");
}

TEST_F(PolicyOwnership, PskFileReadableByItsGroupIsRefused) {
  const std::string key = dir.write("k.key", kKeyHex, 0660);
  const std::string file = dir.write("50.policy", "[PSK p]\nKeyFile=" + key + "\n", 0644);
  expect_refused(dir.path(), file,
                 "PSK key file " + key + " has mode 0660 and holds a PSK: run \"chmod 0600 " + key + "\"");
}

TEST_F(PolicyOwnership, PskFileOwnedByAnotherUserIsRefused) {
  const std::string key = dir.write("k.key", kKeyHex, 0600);
  chown_to(key, kOtherUid);
  const std::string file = dir.write("50.policy", "[PSK p]\nKeyFile=" + key + "\n", 0644);
  expect_refused(dir.path(), file, "PSK key file " + key + " is owned by uid 4242: run \"chown root:root " + key + "\"");
}

TEST_F(PolicyOwnership, WorldWritablePolicyDirectoryIsRefused) {
  const std::string policy_dir = dir.path() + "/policy.d";
  make_dir(policy_dir, 0777);
  dir.write("policy.d/50.policy", rule, 0644);
  expect_refused(policy_dir, policy_dir,
                 "policy directory " + policy_dir +
                     " has mode 0777 and is writable by its group and every user: run \"chmod 0755 " + policy_dir +
                     "\"");
}

TEST_F(PolicyOwnership, PolicyDirectoryOwnedByAnotherUserIsRefused) {
  const std::string policy_dir = dir.path() + "/policy.d";
  make_dir(policy_dir, 0755);
  chown_to(policy_dir, kOtherUid);
  expect_refused(policy_dir, policy_dir, "policy directory " + policy_dir + " is owned by uid 4242");
}

TEST_F(PolicyOwnership, WritableDirectoryAbovePolicyDirectoryIsRefused) {
  const std::string policy_dir = dir.path() + "/policy.d";
  make_dir(policy_dir, 0755);
  ASSERT_EQ(::chmod(dir.path().c_str(), 0777), 0);
  expect_refused(policy_dir, policy_dir,
                 "policy directory " + policy_dir + ": the directory " + dir.path() +
                     " above it has mode 0777 and is writable by its group and every user");
  // A sticky one (like /tmp) is fine above: only an entry's owner may move it.
  ASSERT_EQ(::chmod(dir.path().c_str(), 01777), 0);
  expect_loads(policy_dir);
}

TEST_F(PolicyOwnership, KeyFileInAWritableDirectoryIsRefused) {
  make_dir(dir.path() + "/keys", 01777);  // sticky does not help the holding directory
  const std::string key = dir.write("keys/k.key", kKeyHex, 0600);
  dir.write("50.policy", "[PSK p]\nKeyFile=" + key + "\n", 0644);
  expect_refused(dir.path(), dir.path() + "/50.policy",
                 "PSK key file " + key + ": its directory " + dir.path() + "/keys has mode 1777");
}

// A symbolic link is followed, and what it leads to is what is checked.
TEST_F(PolicyOwnership, LinkedPolicyIsCheckedWhereItLeads) {
  const std::string policy_dir = dir.path() + "/policy.d";
  make_dir(policy_dir, 0755);
  make_dir(dir.path() + "/shared", 0755);
  const std::string target = dir.write("shared/50.policy", rule, 0644);
  const std::string link = policy_dir + "/50.policy";
  ASSERT_EQ(::symlink(target.c_str(), link.c_str()), 0);
  expect_loads(policy_dir);
  ASSERT_EQ(::chmod((dir.path() + "/shared").c_str(), 0777), 0);
  expect_refused(policy_dir, link, "policy file " + link + ": its directory " + dir.path() + "/shared has mode 0777");
}

TEST_F(PolicyOwnership, TheAgentsOwnUidIsAccepted) {
  const std::string policy_dir = dir.path() + "/policy.d";
  make_dir(policy_dir, 0755);
  const std::string key = dir.write("policy.d/k.key", kKeyHex, 0600);
  const std::string file = dir.write("policy.d/50.policy", "[PSK p]\nKeyFile=" + key + "\n", 0644);
  dir.write("policy.d/60.policy", rule, 0644);  // root's
  for (const std::string& path : {dir.path(), policy_dir, key, file}) chown_to(path, kOtherUid);
  {
    EffectiveUid agent(kOtherUid);
    ASSERT_TRUE(agent.ok());
    expect_loads(policy_dir);  // its own files and root's
  }
  // The same files are someone else's to an agent running as root.
  expect_refused(policy_dir, policy_dir, "policy directory " + policy_dir + " is owned by uid 4242");
}

// A non-root agent is told to give a secret to itself: a root-only 0600
// file is one it could not read.
TEST_F(PolicyOwnership, ANonRootAgentIsToldToOwnItsSecrets) {
  const std::string policy_dir = dir.path() + "/policy.d";
  make_dir(policy_dir, 0755);
  const std::string key = dir.write("policy.d/k.key", kKeyHex, 0644);
  chown_to(key, 4343);
  const std::string file = dir.write("policy.d/50.policy", "[PSK p]\nKeyFile=" + key + "\n", 0644);
  chown_to(dir.path(), kOtherUid);
  EffectiveUid agent(kOtherUid);
  ASSERT_TRUE(agent.ok());
  expect_refused(policy_dir, file, "PSK key file " + key + " is owned by uid 4343: run \"chown 4242:");
}

}  // namespace
}  // namespace tapsec::policy
