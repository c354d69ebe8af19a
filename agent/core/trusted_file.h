// Reading the files the agent trusts: policy files and directories, private
// keys, pre-shared keys, certificates and trust anchors.
//
// Whoever can write one of them decides who gets what, so each must be owned
// by root or by the agent's own (effective) uid and must not be writable by
// group or others; a file that holds a secret may not be readable by them
// either. The directory that holds it, and every directory above it, must be
// owned by root or the agent and not writable by group or others (a sticky
// directory such as /tmp is accepted above the holding directory: there only
// an entry's owner can rename or remove it, and that owner is checked).
//
// Each file is opened once and its checks are made on the opened descriptor
// (fstat, and the directories of the path the descriptor really names), so
// the file checked is the file read. Rejections say what to run to fix them.
#pragma once

#include <sys/stat.h>

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

namespace tapsec::core {

struct TrustedFileRules {
  std::string_view what;     // "policy file", "PSK key file", ... (starts the messages)
  std::string_view secret;   // what it holds if it is secret ("a private key"); empty: public
  bool follow_symlinks = true;
};

struct FileContents {
  FileContents() = default;
  FileContents(FileContents&&) = default;
  FileContents& operator=(FileContents&&) = default;
  ~FileContents();  // wipes the bytes: many of these files hold keys
  std::string bytes;
  struct stat status {};
};

// Opens `path`, checks it as `rules` say (a regular file of at most
// `max_bytes`, its owner, its mode, its directories), and reads it. On
// failure returns nullopt and sets `why` to a message that starts with
// rules.what and the path.
std::optional<FileContents> read_trusted_file(const std::string& path, std::size_t max_bytes,
                                              const TrustedFileRules& rules, std::string& why);

// The same for the entry `name` of the directory open as `dir_fd`, named
// `path` in messages.
std::optional<FileContents> read_trusted_file_at(int dir_fd, const std::string& name, const std::string& path,
                                                 std::size_t max_bytes, const TrustedFileRules& rules,
                                                 std::string& why);

// Opens the directory `path` for reading its entries, after the same checks
// as the directories above a trusted file (owner, not writable by group or
// others, and the same for its parents). Returns the descriptor or -1 with
// `why` set; errno is left as open(2) set it when the directory is missing.
int open_trusted_directory(const std::string& path, std::string_view what, std::string& why);

// The owner and mode checks alone, for a file already opened and fstat'ed.
// Returns an empty string when the file may be trusted.
std::string trusted_file_problem(const struct stat& status, const std::string& path, const TrustedFileRules& rules);

// The message for a file that holds a secret but may be read by group or
// others, or an empty string when it may not.
std::string secret_mode_problem(const struct stat& status, const std::string& path, std::string_view what,
                                std::string_view secret);

// Checks the directory holding the file `path` and each directory above it
// (see the top of this header), for a file about to be created. Returns an
// empty string when they may be trusted.
std::string directory_chain_problem(const std::string& path, std::string_view what);

// "0644"-style rendering of a mode's permission bits, for messages.
std::string permission_string(mode_t mode);

}  // namespace tapsec::core
