// harness.h - starts a real `store` server for a test and stops it again.
//
// The server binary comes from the STORE_BIN environment variable (set by meson test).
// Each TestStore gets its own temporary directory holding the socket; the destructor stops the
// server with SIGTERM, waits for it and removes the directory. Tests that care how it ended
// call Stop() themselves and check the wait status it returns (0 after a clean exit).
// Waiting is done on conditions (the socket accepting a connection, the child exiting), never on
// fixed sleeps.
#pragma once

#include <signal.h>
#include <dirent.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>
#include <poll.h>
#include <fcntl.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace test {

inline std::string StoreBin() {
  const char* b = std::getenv("STORE_BIN");
  return b ? b : "store";
}

inline std::string MakeTempDir() {
  char tmpl[] = "/tmp/store-test-XXXXXX";
  char* d = mkdtemp(tmpl);
  return d ? d : "";
}

// A fresh directory under /tmp, removed with everything in it when the test is done.
class TempDir {
 public:
  TempDir() : path(MakeTempDir()) {
    if (path.empty()) throw std::runtime_error("cannot make a temporary directory");
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string operator/(const std::string& name) const { return path + "/" + name; }
  // Creates (if needed) and returns the subdirectory `name`.
  std::string Sub(const std::string& name) const {
    std::string p = path + "/" + name;
    std::filesystem::create_directories(p);
    return p;
  }
  const std::string path;
};

// Tries to connect to a Unix socket; true if something accepted.
inline bool SocketAccepts(const std::string& path) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
  bool ok = connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  close(fd);
  return ok;
}

// Polls cond every millisecond until it holds or timeout passes. Returns cond's last value.
template <class F>
bool WaitFor(F cond, std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
  auto end = std::chrono::steady_clock::now() + timeout;
  while (!cond()) {
    if (std::chrono::steady_clock::now() > end) return cond();
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

// Runs a child process with args; returns its pid. stdout/stderr go to the given file if set.
// The child gets SIGTERM if the test dies first (killed at its timeout, say), so no server
// outlives the test that started it (a server stops cleanly on SIGTERM, removing what it made).
inline pid_t Spawn(const std::vector<std::string>& args, const std::string& log_path = "") {
  const pid_t parent = getpid();
  pid_t pid = fork();
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) _exit(126);  // the test died before the line above
    if (!log_path.empty()) {
      int fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
      if (fd >= 0) {
        dup2(fd, 1);
        dup2(fd, 2);
        close(fd);
      }
    }
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  return pid;
}

// Waits for pid to exit; returns its wait status, or -1 on timeout (the child is then killed).
inline int WaitExit(pid_t pid, std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
  int status = 0;
  bool done = WaitFor([&] { return waitpid(pid, &status, WNOHANG) == pid; }, timeout);
  if (!done) {
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    return -1;
  }
  return status;
}

// The threads of this process (entries of /proc/self/task).
inline int ThreadCount() {
  int n = 0;
  if (DIR* d = opendir("/proc/self/task")) {
    while (dirent* e = readdir(d)) n += e->d_name[0] != '.';
    closedir(d);
  }
  return n;
}

// Minor page faults this thread has taken so far.
inline long ThreadMinorFaults() {
  rusage u{};
  getrusage(RUSAGE_THREAD, &u);
  return u.ru_minflt;
}

// Whether a wait status (TestStore::Stop) is a clean exit with code 0.
inline bool ExitedCleanly(int status) {
  return status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

class TestStore {
 public:
  explicit TestStore(const std::string& memory = "64M", std::vector<std::string> extra = {}) {
    dir_ = MakeTempDir();
    socket_ = dir_ + "/store.sock";
    log_ = dir_ + "/store.log";
    std::vector<std::string> args = {StoreBin(), "--socket", socket_, "--memory", memory,
                                     "--log-level", "warn"};
    for (auto& e : extra) args.push_back(e);
    pid_ = Spawn(args, log_);
    started_ = WaitFor([&] {
      int st;
      if (waitpid(pid_, &st, WNOHANG) == pid_) {
        pid_ = -1;
        return true;
      }
      return SocketAccepts(socket_);
    });
    started_ = started_ && pid_ > 0;
  }
  ~TestStore() { Stop(); std::filesystem::remove_all(dir_); }

  bool started() const { return started_; }
  const std::string& socket() const { return socket_; }
  const std::string& dir() const { return dir_; }
  pid_t pid() const { return pid_; }
  std::string Log() const {
    std::string s;
    FILE* f = fopen(log_.c_str(), "r");
    if (!f) return s;
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) s.append(buf, n);
    fclose(f);
    return s;
  }
  // Sends SIGTERM and waits; returns the wait status (-1 if it had to be killed).
  int Stop() {
    if (pid_ <= 0) return exit_status_;
    kill(pid_, SIGTERM);
    exit_status_ = WaitExit(pid_);
    pid_ = -1;
    return exit_status_;
  }
  // True if the server is still running (it never dies on client input).
  bool Alive() const {
    if (pid_ <= 0) return false;
    return waitpid(pid_, nullptr, WNOHANG) == 0;
  }

 private:
  std::string dir_, socket_, log_;
  pid_t pid_ = -1;
  bool started_ = false;
  int exit_status_ = 0;
};

// A child process that runs fn() and _exits with its result; used to kill clients mid-work.
template <class F>
pid_t ForkChild(F fn) {
  pid_t pid = fork();
  if (pid == 0) {
    int rc = fn();
    _exit(rc);
  }
  return pid;
}

// Events of a kind a server logs one a second at most: the lines that name one (containing
// `one`; their number goes to *lines) plus the N of the lines "N<more>" that count the others.
inline size_t LoggedOrCounted(const std::string& log, const std::string& one,
                              const std::string& more, size_t* lines) {
  size_t named = 0, counted = 0;
  for (size_t at = log.find(one); at != std::string::npos; at = log.find(one, at + 1)) named++;
  for (size_t at = log.find(more); at != std::string::npos; at = log.find(more, at + 1)) {
    const size_t b = log.rfind(' ', at - 1);
    counted += std::stoull(log.substr(b + 1, at - b - 1));
  }
  *lines = named;
  return named + counted;
}

}  // namespace test
