// test_cli.cpp - the `store` command line, run from $STORE_BIN as a user would run it.
//
// Each run gets its own temporary directory; XDG_RUNTIME_DIR points there too, so a server that
// falls back to its default socket path never touches the real one. stdout and stderr are
// captured separately.
#include <doctest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "harness.h"
#include "storeclient.h"

extern char** environ;

namespace {

namespace fs = std::filesystem;
using Env = std::vector<std::pair<std::string, std::string>>;

// A temporary directory, removed with everything in it.
struct TempDir {
  std::string path = test::MakeTempDir();
  TempDir() { REQUIRE(!path.empty()); }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string operator/(const std::string& name) const { return path + "/" + name; }
};

std::string ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << text;
}

// Starts args[0] with the given arguments; stdout and stderr go to separate files. env entries
// are set in the child's environment (on top of the test's own); umask0 clears the child's umask.
pid_t Start(const std::vector<std::string>& args, const std::string& out_path,
            const std::string& err_path, const Env& env = {}, bool umask0 = false) {
  // Everything the child needs is prepared before fork.
  std::vector<std::string> envs;
  for (char** e = environ; *e; e++) {
    std::string kv = *e;
    std::string key = kv.substr(0, kv.find('='));
    bool replaced = std::any_of(env.begin(), env.end(), [&](auto& p) { return p.first == key; });
    if (!replaced) envs.push_back(kv);
  }
  for (auto& [k, v] : env) envs.push_back(k + "=" + v);
  std::vector<char*> argv, envp;
  for (auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  for (auto& e : envs) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);

  pid_t pid = fork();
  if (pid == 0) {
    int out = open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    int err = open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (out < 0 || err < 0) _exit(126);
    dup2(out, 1);
    dup2(err, 2);
    close(out);
    close(err);
    if (umask0) umask(0);
    execve(argv[0], argv.data(), envp.data());
    _exit(127);
  }
  return pid;
}

struct Result {
  int status = -1;  // wait status; -1 if it had to be killed
  std::string out, err;
  bool Exited(int code) const { return status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == code; }
  bool FailedToStart() const {
    return status != -1 && WIFEXITED(status) && WEXITSTATUS(status) != 0;
  }
};

std::string StatusText(int status) {
  if (status == -1) return "still running after the timeout (killed)";
  if (WIFEXITED(status)) return "exit " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return "killed by signal " + std::to_string(WTERMSIG(status));
  return "wait status " + std::to_string(status);
}

std::string Describe(const Result& r) {
  return "status: " + StatusText(r.status) + "\n--- stdout:\n" + r.out + "--- stderr:\n" + r.err;
}

// Runs the store with args until it exits (killed after the timeout). XDG_RUNTIME_DIR is the
// given directory unless env sets it.
Result Run(const TempDir& dir, const std::vector<std::string>& args, Env env = {},
           std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
  std::vector<std::string> full = {test::StoreBin()};
  full.insert(full.end(), args.begin(), args.end());
  env.insert(env.begin(), {"XDG_RUNTIME_DIR", dir.path});
  std::string out = dir / "run.out", err = dir / "run.err";
  pid_t pid = Start(full, out, err, env);
  REQUIRE(pid > 0);
  Result r;
  r.status = test::WaitExit(pid, timeout);
  r.out = ReadFile(out);
  r.err = ReadFile(err);
  return r;
}

// A server started by the test and stopped by it (SIGKILL if it is still running at the end).
class Server {
 public:
  Server(const TempDir& dir, const std::vector<std::string>& args, Env env = {},
         bool umask0 = false, const std::string& name = "server")
      : out_(dir / (name + ".out")), err_(dir / (name + ".err")) {
    std::vector<std::string> full = {test::StoreBin()};
    full.insert(full.end(), args.begin(), args.end());
    env.insert(env.begin(), {"XDG_RUNTIME_DIR", dir.path});
    pid_ = Start(full, out_, err_, env, umask0);
    REQUIRE(pid_ > 0);
  }
  ~Server() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  pid_t pid() const { return pid_; }
  // Waits until the socket accepts connections; false if the server exited first.
  bool WaitListening(const std::string& socket) {
    bool ok = test::WaitFor([&] {
      if (exited()) return true;
      return test::SocketAccepts(socket);
    });
    return ok && !exited();
  }
  bool exited() {
    if (pid_ <= 0) return true;
    int st;
    if (waitpid(pid_, &st, WNOHANG) == pid_) {
      status_ = st;
      pid_ = -1;
      return true;
    }
    return false;
  }
  // Sends sig and waits for the exit; returns the wait status (-1 if it had to be killed).
  int Signal(int sig) {
    if (pid_ <= 0) return status_;
    kill(pid_, sig);
    status_ = test::WaitExit(pid_);
    pid_ = -1;
    return status_;
  }
  std::string Output() const { return ReadFile(out_) + ReadFile(err_); }

 private:
  std::string out_, err_;
  pid_t pid_ = -1;
  int status_ = -1;
};

bool IsSocket(const std::string& path) {
  struct stat st;
  return lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode);
}

bool Exists(const std::string& path) {
  struct stat st;
  return lstat(path.c_str(), &st) == 0;
}

// Connects, puts an object, reads it back and deletes it: the server at path serves.
void CheckServes(const char* socket_path) {
  store_client* c = nullptr;
  REQUIRE(store_client_connect(&c, socket_path, nullptr) == STORE_OK);
  store_object_id id;
  const std::string key = "cli-check";
  store_object_id_from_string(key.data(), key.size(), &id);
  const std::string payload(4096, 'p');
  CHECK(store_put(c, &id, payload.data(), payload.size(), nullptr) == STORE_OK);
  store_reader* r = nullptr;
  REQUIRE(store_open_reader(c, &r, &id, 0) == STORE_OK);
  CHECK(store_reader_size(r) == payload.size());
  CHECK(std::memcmp(store_reader_data(r), payload.data(), payload.size()) == 0);
  store_reader_close(r);
  CHECK(store_delete(c, &id) == STORE_OK);
  store_client_free(c);
}

uint64_t Capacity(const std::string& socket_path) {
  store_client* c = nullptr;
  REQUIRE(store_client_connect(&c, socket_path.c_str(), nullptr) == STORE_OK);
  store_stats st = STORE_STATS_INIT;
  CHECK(store_stats_get(c, &st) == STORE_OK);
  store_client_free(c);
  return st.capacity_bytes;
}

using test::ExitedCleanly;

// Stops a server with sig; it must exit 0.
void CheckCleanStop(Server& s, int sig = SIGTERM) {
  int st = s.Signal(sig);
  CHECK_MESSAGE(ExitedCleanly(st), StatusText(st) << "\n" << s.Output());
}

}  // namespace

// ------------------------------------------------------------------------------------------
// --help, --version, bad flags.

TEST_CASE("--help prints the usage and exits 0") {
  TempDir dir;
  for (const char* flag : {"--help", "-h"}) {
    INFO(std::string(flag));
    Result r = Run(dir, {flag});
    INFO(Describe(r));
    CHECK(r.Exited(0));
    CHECK(r.err.empty());
    for (const char* word : {"--socket", "--memory", "--spill-dir", "--log-level", "--prefault",
                             "--hugepages", "--no-hugepages", "--help", "--version", "1024", "1000"}) {
      CHECK_MESSAGE(r.out.find(word) != std::string::npos, "the usage does not mention " << std::string(word));
    }
  }
}

TEST_CASE("--version prints the version and exits 0") {
  TempDir dir;
  Result r = Run(dir, {"--version"});
  INFO(Describe(r));
  CHECK(r.Exited(0));
  CHECK(r.out.find(STORE_VERSION_STRING) != std::string::npos);
  CHECK(r.out.find(store_version_string()) != std::string::npos);
  CHECK(r.err.empty());
}

TEST_CASE("bad flags exit 2 with exactly one line on stderr") {
  TempDir dir;
  const std::string sock = dir / "s.sock";
  const std::string long_path = dir.path + "/" + std::string(108 - dir.path.size() - 1, 'x');
  REQUIRE(long_path.size() == 108);
  const std::vector<std::vector<std::string>> cases = {
      {"--no-such-flag"},
      {"--socket", sock, "--bogus=1"},
      {"--socket", sock, "--hugepages=yes"},
      {"--socket", sock, "--no-hugepages=1"},
      {"--socket", sock, "extra-argument"},
      {"--socket", sock, "--memory"},
      {"--socket", sock, "--memory", "abc"},
      {"--socket", sock, "--memory", "0"},
      {"--socket", sock, "--memory", "-5"},
      {"--socket", sock, "--memory", "10Q"},
      {"--socket", sock, "--memory", ""},
      {"--socket", sock, "--memory", "99999999999T"},
      {"--socket", sock, "--log-level", "loud"},
      {"--socket", sock, "--log-level"},
      {"--socket"},
      {"--socket", ""},
      {"--socket", long_path},
      {"--socket", long_path + "yyyy"},
      // Limits: below the least that still serves the largest request or reply, or not a count.
      {"--socket", sock, "--max-client-backlog", "8M"},
      {"--socket", sock, "--max-backlog", "1M"},
      {"--socket", sock, "--max-partial-bytes", "4M"},
      {"--socket", sock, "--max-waiting-bytes", "64K"},
      {"--socket", sock, "--max-clients", "0"},
      {"--socket", sock, "--max-clients", "32769"},
      {"--socket", sock, "--max-client-waiting", "-1"},
      {"--socket", sock, "--max-client-gpu-fds", "many"},
      {"--socket", sock, "--restore-readahead", "-1"},
      {"--socket", sock, "--restore-readahead", "lots"},
      {"--socket", sock, "--restore-readahead"},
  };
  for (const auto& args : cases) {
    std::string shown;
    for (auto& a : args) shown += " '" + a + "'";
    INFO("store" << shown);
    Result r = Run(dir, args, {}, std::chrono::seconds(5));
    INFO(Describe(r));
    CHECK(r.Exited(2));
    CHECK(r.out.empty());
    CHECK(r.err.size() > 1);
    CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
    CHECK((!r.err.empty() && r.err.back() == '\n'));
    CHECK(!Exists(sock));
    CHECK(!Exists(dir / "store.sock"));
  }
}

// ------------------------------------------------------------------------------------------
// Sizes and socket paths that are accepted.

TEST_CASE("--memory sizes: 1024-based and 1000-based suffixes and plain bytes") {
  const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  struct Case {
    std::vector<std::string> args;
    uint64_t capacity;
  };
  const std::vector<Case> cases = {
      {{"--memory", "1.5M"}, 1572864},
      {{"--memory", "2MB"}, (2000000 + page - 1) / page * page},
      {{"--memory", "3145728"}, 3145728},
      {{"--memory=3M"}, 3145728},
      {{"--memory", "1MiB"}, 1048576},
  };
  for (const auto& k : cases) {
    TempDir dir;
    const std::string sock = dir / "store.sock";
    std::vector<std::string> args = {"--socket", sock, "--log-level", "warn"};
    args.insert(args.end(), k.args.begin(), k.args.end());
    std::string shown;
    for (auto& a : k.args) shown += " " + a;
    INFO(shown);
    Server s(dir, args);
    REQUIRE_MESSAGE(s.WaitListening(sock), s.Output());
    CHECK(Capacity(sock) == k.capacity);
    CheckServes(sock.c_str());
    CheckCleanStop(s);
  }
}

TEST_CASE("a socket path of exactly 107 bytes is accepted") {
  TempDir dir;
  const std::string path = dir.path + "/" + std::string(107 - dir.path.size() - 1, 's');
  REQUIRE(path.size() == 107);
  Server s(dir, {"--socket", path, "--memory", "8M"});
  REQUIRE_MESSAGE(s.WaitListening(path), s.Output());
  CHECK(IsSocket(path));
  CheckServes(path.c_str());
  CheckCleanStop(s);
  CHECK(!Exists(path));
}

// ------------------------------------------------------------------------------------------
// The socket file.

TEST_CASE("a second server on the socket of a live one refuses to start") {
  test::TestStore first("16M");
  REQUIRE(first.started());
  TempDir dir;
  Result r = Run(dir, {"--socket", first.socket(), "--memory", "16M"});
  INFO(Describe(r));
  CHECK(r.FailedToStart());
  CHECK(r.err.find("another store") != std::string::npos);
  CHECK(r.err.find(first.socket()) != std::string::npos);
  // The first one is untouched and keeps working.
  CHECK(first.Alive());
  CHECK(IsSocket(first.socket()));
  CheckServes(first.socket().c_str());
  CHECK(ExitedCleanly(first.Stop()));
}

TEST_CASE("a stale socket left by a killed server is replaced") {
  TempDir dir;
  const std::string sock = dir / "store.sock";
  {
    Server old(dir, {"--socket", sock, "--memory", "8M"}, {}, false, "old");
    REQUIRE_MESSAGE(old.WaitListening(sock), old.Output());
    int st = old.Signal(SIGKILL);
    REQUIRE(st != -1);
    REQUIRE(WIFSIGNALED(st));
  }
  REQUIRE(IsSocket(sock));  // left behind
  REQUIRE(!test::SocketAccepts(sock));

  Server fresh(dir, {"--socket", sock, "--memory", "8M"}, {}, false, "new");
  REQUIRE_MESSAGE(fresh.WaitListening(sock), fresh.Output());
  CheckServes(sock.c_str());
  CheckCleanStop(fresh);
  CHECK(!Exists(sock));
}

TEST_CASE("a path that exists and is not a socket is left alone") {
  TempDir dir;
  SUBCASE("a regular file") {
    const std::string path = dir / "precious.txt";
    const std::string content = "do not delete me\n";
    WriteFile(path, content);
    REQUIRE(chmod(path.c_str(), 0640) == 0);
    struct stat before;
    REQUIRE(stat(path.c_str(), &before) == 0);
    Result r = Run(dir, {"--socket", path, "--memory", "8M"});
    INFO(Describe(r));
    CHECK(r.FailedToStart());
    CHECK(r.err.find(path) != std::string::npos);
    struct stat after;
    REQUIRE(stat(path.c_str(), &after) == 0);
    CHECK(S_ISREG(after.st_mode));
    CHECK((after.st_mode & 07777) == 0640);
    CHECK(after.st_ino == before.st_ino);
    CHECK(ReadFile(path) == content);
  }
  SUBCASE("a directory") {
    const std::string path = dir / "a-directory";
    REQUIRE(mkdir(path.c_str(), 0700) == 0);
    WriteFile(path + "/inside", "x");
    Result r = Run(dir, {"--socket", path, "--memory", "8M"});
    INFO(Describe(r));
    CHECK(r.FailedToStart());
    CHECK(fs::is_directory(path));
    CHECK(ReadFile(path + "/inside") == "x");
  }
}

TEST_CASE("the socket file is created with mode 0600 whatever the umask") {
  TempDir dir;
  const std::string sock = dir / "store.sock";
  Server s(dir, {"--socket", sock, "--memory", "8M"}, {}, /*umask0=*/true);
  REQUIRE_MESSAGE(s.WaitListening(sock), s.Output());
  struct stat st;
  REQUIRE(lstat(sock.c_str(), &st) == 0);
  CHECK(S_ISSOCK(st.st_mode));
  CHECK((st.st_mode & 07777) == 0600);
  CHECK(st.st_uid == geteuid());
  CheckCleanStop(s);
}

// ------------------------------------------------------------------------------------------
// Signals.

TEST_CASE("SIGTERM and SIGINT stop the server cleanly") {
  for (int sig : {SIGTERM, SIGINT}) {
    INFO(std::string(strsignal(sig)));
    TempDir dir;
    const std::string sock = dir / "store.sock";
    Server s(dir, {"--socket", sock, "--memory", "8M"});
    REQUIRE_MESSAGE(s.WaitListening(sock), s.Output());

    store_client* c = nullptr;
    REQUIRE(store_client_connect(&c, sock.c_str(), nullptr) == STORE_OK);
    store_object_id id;
    store_object_id_from_string("held", 4, &id);
    REQUIRE(store_put(c, &id, "data", 4, nullptr) == STORE_OK);
    store_reader* r = nullptr;
    REQUIRE(store_open_reader(c, &r, &id, 0) == STORE_OK);

    int st = s.Signal(sig);
    INFO(s.Output());
    CHECK(ExitedCleanly(st));
    CHECK(!Exists(sock));

    // The connected client learns that the server is gone; nothing hangs.
    store_stats stats = STORE_STATS_INIT;
    CHECK(store_stats_get(c, &stats) == STORE_ECONN);
    CHECK(store_put(c, &id, "more", 4, nullptr) == STORE_ECONN);
    store_reader_close(r);
    store_client_free(c);
    store_client* again = nullptr;
    CHECK(store_client_connect(&again, sock.c_str(), nullptr) == STORE_ECONN);
    store_client_free(again);
  }
}

TEST_CASE("SIGTERM as soon as the socket accepts connections still stops the server cleanly") {
  // A supervisor may stop the server the moment it sees the socket. Once the socket accepts,
  // SIGTERM must lead to a clean exit that removes the socket, never to death by the signal.
  // A server under AddressSanitizer takes about 0.2 s to start and stop (the runtime's set-up
  // and the leak check at exit): there 100 starts, which check its memory on this path.
#ifdef __SANITIZE_ADDRESS__
  constexpr int kStarts = 100;
#else
  constexpr int kStarts = 1000;
#endif
  int killed = 0, runs = 0;
  for (int i = 0; i < kStarts && killed == 0; i++, runs++) {
    TempDir dir;
    const std::string sock = dir / "store.sock";
    Server s(dir, {"--socket", sock, "--memory", "2M"});
    // Poll without sleeping, so the signal follows the first accepted connection closely.
    auto end = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    bool up = false;
    while (!up && std::chrono::steady_clock::now() < end && !s.exited()) {
      up = test::SocketAccepts(sock);
    }
    REQUIRE_MESSAGE(up, s.Output());
    int st = s.Signal(SIGTERM);
    const bool left = Exists(sock);
    if (!ExitedCleanly(st) || left) {
      killed++;
      std::string what = "run " + std::to_string(i) + ": " + StatusText(st) +
                         "; socket file left behind: " + (left ? "yes" : "no") + "\n" +
                         s.Output();
      CHECK_MESSAGE(ExitedCleanly(st), what);
      CHECK_MESSAGE(!left, what);
    }
  }
  CHECK_MESSAGE(killed == 0, "after " << runs << " starts");
}

// ------------------------------------------------------------------------------------------
// The default socket path.

TEST_CASE("without --socket the server listens on $XDG_RUNTIME_DIR/store.sock") {
  TempDir dir;
  const std::string sock = dir / "store.sock";
  Server s(dir, {"--memory", "8M"}, {{"XDG_RUNTIME_DIR", dir.path}});
  REQUIRE_MESSAGE(s.WaitListening(sock), s.Output());

  // A client that passes no path finds it through the same variable.
  const char* old = std::getenv("XDG_RUNTIME_DIR");
  std::optional<std::string> saved;
  if (old) saved = old;
  setenv("XDG_RUNTIME_DIR", dir.path.c_str(), 1);
  store_client* c = nullptr;
  int rc = store_client_connect(&c, nullptr, nullptr);
  if (saved) {
    setenv("XDG_RUNTIME_DIR", saved->c_str(), 1);
  } else {
    unsetenv("XDG_RUNTIME_DIR");
  }
  REQUIRE(rc == STORE_OK);
  store_stats st = STORE_STATS_INIT;
  CHECK(store_stats_get(c, &st) == STORE_OK);
  CHECK(st.server_pid == s.pid());
  store_client_free(c);
  CheckServes(sock.c_str());
  CheckCleanStop(s);
  CHECK(!Exists(sock));
}

// ------------------------------------------------------------------------------------------
// Memory options.

TEST_CASE("--prefault, --hugepages and --no-hugepages start and serve") {
  const std::vector<std::vector<std::string>> cases = {
      {"--prefault"}, {"--hugepages"}, {"--prefault", "--hugepages"}, {"--no-hugepages"}};
  for (const auto& extra : cases) {
    std::string shown;
    for (auto& a : extra) shown += " " + a;
    INFO(shown);
    test::TestStore s("16M", extra);
    REQUIRE_MESSAGE(s.started(), s.Log());
    CHECK(Capacity(s.socket()) >= 16u << 20);
    CheckServes(s.socket().c_str());
    CHECK(ExitedCleanly(s.Stop()));
    // Without huge pages the warning says how many 16M needs and how to reserve them.
    const std::string log = s.Log();
    if (log.find("--hugepages: the system gave no huge pages") != std::string::npos) {
      CHECK_MESSAGE(log.find("8 needed: e.g. sysctl vm.nr_hugepages=") != std::string::npos, log);
    }
  }
}

TEST_CASE("--spill-dir must name an existing directory") {
  TempDir dir;
  const std::string sock = dir / "store.sock";
  SUBCASE("a directory that does not exist") {
    const std::string missing = dir / "no-such-dir";
    Result r = Run(dir, {"--socket", sock, "--memory", "8M", "--spill-dir", missing});
    INFO(Describe(r));
    CHECK(r.FailedToStart());
    CHECK(r.err.find(missing) != std::string::npos);
    CHECK(!Exists(missing));
    CHECK(!Exists(sock));
  }
  SUBCASE("a regular file") {
    const std::string file = dir / "a-file";
    WriteFile(file, "x");
    Result r = Run(dir, {"--socket", sock, "--memory", "8M", "--spill-dir", file});
    INFO(Describe(r));
    CHECK(r.FailedToStart());
    CHECK(r.err.find(file) != std::string::npos);
    CHECK(ReadFile(file) == "x");
    CHECK(!Exists(sock));
  }
  SUBCASE("an existing directory is accepted") {
    const std::string spill = dir / "spill";
    REQUIRE(mkdir(spill.c_str(), 0700) == 0);
    Server s(dir, {"--socket", sock, "--memory", "8M", "--spill-dir", spill});
    REQUIRE_MESSAGE(s.WaitListening(sock), s.Output());
    CheckServes(sock.c_str());
    CheckCleanStop(s);
  }
}

TEST_CASE("a socket path whose directory is missing or closed says which directory") {
  TempDir dir;
  SUBCASE("the directory does not exist") {
    const std::string missing = dir / "no-such-dir";
    const std::string sock = missing + "/store.sock";
    Result r = Run(dir, {"--socket", sock, "--memory", "8M"});
    INFO(Describe(r));
    CHECK(r.FailedToStart());
    CHECK(r.err.find("the directory " + missing + " does not exist") != std::string::npos);
    CHECK(r.err.find("ermission denied") == std::string::npos);
  }
  SUBCASE("the directory is a file") {
    const std::string file = dir / "a-file";
    WriteFile(file, "x");
    Result r = Run(dir, {"--socket", file + "/store.sock", "--memory", "8M"});
    INFO(Describe(r));
    CHECK(r.FailedToStart());
    CHECK(r.err.find(file + " is not a directory") != std::string::npos);
  }
}
