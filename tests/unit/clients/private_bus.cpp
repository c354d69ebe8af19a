#include "tests/unit/clients/private_bus.h"

#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

namespace tapsec::testing {

bool PrivateBus::start() {
  if (access("/usr/bin/dbus-daemon", X_OK) != 0) {
    why_ = "dbus-daemon is not installed";
    return false;
  }
  char templ[] = "/tmp/tapsec-clients-bus-XXXXXX";
  if (!mkdtemp(templ)) {
    why_ = "mkdtemp failed";
    return false;
  }
  dir_ = templ;
  const std::string config = dir_ + "/bus.conf";
  {
    std::ofstream out(config);
    out << "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN\"\n"
           " \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n"
           "<busconfig>\n"
           "  <type>session</type>\n"
           "  <listen>unix:path=" << dir_ << "/bus</listen>\n"
           "  <auth>EXTERNAL</auth>\n"
           "  <policy context=\"default\">\n"
           "    <allow send_destination=\"*\" eavesdrop=\"true\"/>\n"
           "    <allow eavesdrop=\"true\"/>\n"
           "    <allow own=\"*\"/>\n"
           "  </policy>\n"
           "</busconfig>\n";
  }
  int pipe_fds[2];
  if (pipe(pipe_fds) < 0) {
    why_ = "pipe failed";
    return false;
  }
  pid_ = fork();
  if (pid_ == 0) {
    dup2(pipe_fds[1], 1);
    close(pipe_fds[0]);
    execl("/usr/bin/dbus-daemon", "dbus-daemon", ("--config-file=" + config).c_str(), "--nofork",
          "--print-address=1", "--nosyslog", static_cast<char*>(nullptr));
    _exit(127);
  }
  close(pipe_fds[1]);
  std::string line;
  char c;
  while (read(pipe_fds[0], &c, 1) == 1 && c != '\n') line.push_back(c);
  close(pipe_fds[0]);
  if (line.empty()) {
    why_ = "dbus-daemon did not start";
    return false;
  }
  address_ = line;
  return true;
}

PrivateBus::~PrivateBus() {
  if (pid_ > 0) {
    kill(pid_, SIGTERM);
    waitpid(pid_, nullptr, 0);
  }
  if (!dir_.empty()) {
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }
}

}  // namespace tapsec::testing
