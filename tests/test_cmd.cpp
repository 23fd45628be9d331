// test_cmd.cpp - the `store` command's client commands (info, ls, get, put, rm, evict) and the
// STORE_SOCKET variable, run from $STORE_BIN as scripts and operators run them, against real
// stores. stdout and stderr are captured separately; stdin comes from a file or a pipe.
#include <doctest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "client_util.h"
#include "harness.h"
#include "storeclient.h"

extern char** environ;

namespace {

using Env = std::vector<std::pair<std::string, std::string>>;

std::string ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

void WriteFile(const std::string& path, const std::string& data) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << data;
}

struct Result {
  int status = -1;
  std::string out, err;
  bool Exited(int code) const {
    return status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == code;
  }
};

std::string Describe(const Result& r) {
  return "status " + std::to_string(r.status) + "\n--- stdout:\n" + r.out.substr(0, 2000) +
         "--- stderr:\n" + r.err;
}

// How stdin is given: nothing (/dev/null), a file, or these bytes through a pipe.
struct Input {
  enum Kind { kNone, kFile, kPipe } kind = kNone;
  std::string value;
  static Input File(const std::string& p) { return {kFile, p}; }
  static Input Pipe(const std::string& bytes) { return {kPipe, bytes}; }
};

// Runs `store args...` in dir, with env on top of the test's environment (STORE_SOCKET
// removed unless env sets it), until it exits (killed after 30 s).
Result Run(const test::TempDir& dir, const std::vector<std::string>& args, const Env& env = {},
           const Input& in = {}) {
  std::vector<std::string> full = {test::StoreBin()};
  full.insert(full.end(), args.begin(), args.end());
  std::vector<std::string> envs;
  for (char** e = environ; *e; e++) {
    std::string kv = *e;
    std::string key = kv.substr(0, kv.find('='));
    if (key == "STORE_SOCKET") continue;
    if (std::any_of(env.begin(), env.end(), [&](auto& p) { return p.first == key; })) continue;
    envs.push_back(kv);
  }
  for (auto& [k, v] : env) envs.push_back(k + "=" + v);
  std::vector<char*> argv, envp;
  for (auto& a : full) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  for (auto& e : envs) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);
  const std::string out = dir / "cmd.out", err = dir / "cmd.err";
  int pipefd[2] = {-1, -1};
  if (in.kind == Input::kPipe) REQUIRE(pipe2(pipefd, O_CLOEXEC) == 0);
  pid_t pid = fork();
  if (pid == 0) {
    int o = open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    int e = open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    int i = in.kind == Input::kFile ? open(in.value.c_str(), O_RDONLY)
            : in.kind == Input::kPipe ? pipefd[0]
                                      : open("/dev/null", O_RDONLY);
    if (o < 0 || e < 0 || i < 0) _exit(126);
    dup2(i, 0);
    dup2(o, 1);
    dup2(e, 2);
    execve(argv[0], argv.data(), envp.data());
    _exit(127);
  }
  REQUIRE(pid > 0);
  if (in.kind == Input::kPipe) {
    close(pipefd[0]);
    signal(SIGPIPE, SIG_IGN);
    size_t done = 0;
    while (done < in.value.size()) {
      ssize_t n = write(pipefd[1], in.value.data() + done, in.value.size() - done);
      if (n <= 0) break;
      done += static_cast<size_t>(n);
    }
    close(pipefd[1]);
  }
  Result r;
  r.status = test::WaitExit(pid, std::chrono::seconds(30));
  r.out = ReadFile(out);
  r.err = ReadFile(err);
  return r;
}

store_object_id Key(const std::string& k) {
  store_object_id id;
  store_object_id_from_string(k.data(), k.size(), &id);
  return id;
}

std::string Hex(const store_object_id& id) {
  char h[41];
  store_object_id_to_hex(&id, h, sizeof h);
  return h;
}

std::string Pattern(size_t n, unsigned seed) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; i++) s[i] = static_cast<char>((i * 131 + seed * 7 + i / 4093) & 0xff);
  return s;
}

// The object's bytes as a C client reads them ("" if it cannot be opened).
std::string ReadObject(store_client* c, const store_object_id& id, std::string* meta = nullptr) {
  store_reader* r = nullptr;
  if (store_open_reader(c, &r, &id, 0) != STORE_OK) return "";
  std::string s(static_cast<const char*>(store_reader_data(r)), store_reader_size(r));
  if (meta) {
    uint64_t n = 0;
    const void* m = store_reader_metadata(r, &n);
    *meta = m ? std::string(static_cast<const char*>(m), n) : "";
  }
  store_reader_close(r);
  return s;
}

std::vector<std::string> Lines(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string line;
  while (std::getline(ss, line)) out.push_back(line);
  return out;
}

}  // namespace

TEST_CASE("store --help lists every command and how IDs and the socket are given") {
  test::TempDir dir;
  Result r = Run(dir, {"--help"});
  INFO(Describe(r));
  CHECK(r.Exited(0));
  for (const char* word : {"store info", "store ls", "store get", "store put", "store rm",
                           "store evict", "--hex", "STORE_SOCKET", "hashed", "--json"}) {
    CHECK_MESSAGE(r.out.find(word) != std::string::npos, "no mention of " << word);
  }
  for (const char* cmd : {"info", "ls", "get", "put", "rm", "evict"}) {
    Result h = Run(dir, {cmd, "--help"});
    INFO(cmd << "\n" << Describe(h));
    CHECK(h.Exited(0));
    CHECK(h.out.find(std::string("Usage: store ") + cmd) == 0);
  }
}

TEST_CASE("STORE_SOCKET points the library, store info and the server at one socket") {
  test::TempDir dir;
  const std::string sock = dir / "env.sock";
  // A server started with no --socket listens on $STORE_SOCKET.
  std::vector<std::string> args = {test::StoreBin(), "--memory", "16M", "--log-level", "warn"};
  std::string envs = "STORE_SOCKET=" + sock;
  pid_t server = fork();
  if (server == 0) {
    putenv(const_cast<char*>(envs.c_str()));
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    int devnull = open("/dev/null", O_WRONLY);
    dup2(devnull, 1);
    execv(argv[0], argv.data());
    _exit(127);
  }
  REQUIRE(server > 0);
  REQUIRE(test::WaitFor([&] { return test::SocketAccepts(sock); }));

  // store_client_connect(NULL) finds it through the variable.
  setenv("STORE_SOCKET", sock.c_str(), 1);
  store_client* c = nullptr;
  int rc = store_client_connect(&c, nullptr, nullptr);
  unsetenv("STORE_SOCKET");
  REQUIRE(rc == STORE_OK);
  store_stats st = STORE_STATS_INIT;
  CHECK(store_stats_get(c, &st) == STORE_OK);
  CHECK(st.server_pid == server);
  store_client_free(c);

  // So do the commands; --socket still wins over it.
  Result info = Run(dir, {"info"}, {{"STORE_SOCKET", sock}});
  INFO(Describe(info));
  CHECK(info.Exited(0));
  CHECK(info.out.find("server_pid:" + std::to_string(server)) != std::string::npos);
  Result put = Run(dir, {"put", "via-env"}, {{"STORE_SOCKET", sock}}, Input::Pipe("x"));
  CHECK(put.Exited(0));
  Result other = Run(dir, {"ls", "-q", "--socket", dir / "nothing.sock"}, {{"STORE_SOCKET", sock}});
  CHECK(other.Exited(1));
  CHECK(other.err.find(dir / "nothing.sock") != std::string::npos);
  Result rm = Run(dir, {"rm", "via-env"}, {{"STORE_SOCKET", sock}});
  CHECK(rm.Exited(0));

  kill(server, SIGTERM);
  CHECK(test::ExitedCleanly(test::WaitExit(server)));
}

TEST_CASE("store put, get and rm: keys hashed as the C library hashes them, or --hex ids") {
  test::TestStore s("64M");
  REQUIRE(s.started());
  test::TempDir dir;
  auto c = test::Connect(s.socket(), "test_cmd");
  const std::string sock = s.socket();

  // A regular file (read straight into the object) and a pipe, binary, larger than staged.
  const std::string big = Pattern(3 << 20, 1), small = std::string("a\0b\nc", 5);
  WriteFile(dir / "big.bin", big);
  Result r = Run(dir, {"put", "--socket", sock, "--metadata", "application/x-test",
                       "--importance", "4", "big-key"}, {}, Input::File(dir / "big.bin"));
  INFO(Describe(r));
  REQUIRE(r.Exited(0));
  CHECK(r.out.empty());
  r = Run(dir, {"put", "--socket=" + sock, "small key"}, {}, Input::Pipe(small));
  REQUIRE(r.Exited(0));

  std::string meta;
  CHECK(ReadObject(c.get(), Key("big-key"), &meta) == big);
  CHECK(meta == "application/x-test");
  const store_object_id big_id = Key("big-key"), small_id = Key("small key");
  store_object_info info = STORE_OBJECT_INFO_INIT;
  REQUIRE(store_info(c.get(), &big_id, &info) == STORE_OK);
  CHECK(info.importance == 4);
  CHECK(ReadObject(c.get(), Key("small key")) == small);

  // get by key and by --hex id, to stdout as is; --metadata.
  r = Run(dir, {"get", "--socket", sock, "big-key"});
  CHECK(r.Exited(0));
  CHECK(r.out == big);
  r = Run(dir, {"get", "--socket", sock, "--hex", Hex(Key("small key"))});
  CHECK(r.Exited(0));
  CHECK(r.out == small);
  r = Run(dir, {"get", "--socket", sock, "--metadata", "big-key"});
  CHECK(r.out == "application/x-test");
  // A 40-hex-digit key without --hex is a key like any other.
  r = Run(dir, {"get", "--socket", sock, Hex(Key("small key"))});
  CHECK(r.Exited(1));
  CHECK(r.err.find("is not in the store") != std::string::npos);

  // Failures: one line on stderr, exit 1; usage errors exit 2.
  r = Run(dir, {"put", "--socket", sock, "small key"}, {}, Input::Pipe("again"));
  CHECK(r.Exited(1));
  CHECK(r.err.find("already exists") != std::string::npos);
  r = Run(dir, {"put", "--socket", sock, "empty"}, {}, Input::Pipe(""));
  CHECK(r.Exited(1));
  CHECK(r.err.find("empty") != std::string::npos);
  r = Run(dir, {"get", "--socket", sock, "--timeout", "0.05", "missing"});
  CHECK(r.Exited(1));
  CHECK(r.err.find("'missing' (" + Hex(Key("missing")) + ")") != std::string::npos);
  CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
  for (const auto& bad : std::vector<std::vector<std::string>>{
           {"get", "--socket", sock},
           {"get", "--socket", sock, "--hex", "xyz"},
           {"put", "--socket", sock, "--importance", "many", "k"},
           {"ls", "--socket", sock, "--sort", "colour"},
           {"rm", "--socket", sock},
           {"evict", "--socket", sock, "lots"},
           {"get", "--socket", sock, "--bogus", "1", "k"}}) {
    r = Run(dir, bad);
    INFO(Describe(r));
    CHECK(r.Exited(2));
    CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
  }

  // rm: every ID is tried; a missing one is reported and makes the exit code 1.
  r = Run(dir, {"rm", "--socket", sock, "big-key", "missing", "small key"});
  INFO(Describe(r));
  CHECK(r.Exited(1));
  CHECK(r.err.find("missing") != std::string::npos);
  CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
  int present = 1;
  CHECK(store_contains(c.get(), &big_id, &present) == STORE_OK);
  CHECK(present == 0);
  CHECK(store_contains(c.get(), &small_id, &present) == STORE_OK);
  CHECK(present == 0);
}

TEST_CASE("store ls pages through the store, sorted, as a table, JSON or ids") {
  test::TestStore s("64M");
  REQUIRE(s.started());
  test::TempDir dir;
  auto c = test::Connect(s.socket(), "test_cmd");
  const std::string sock = s.socket();
  std::set<std::string> ids;
  for (int i = 0; i < 25; i++) {
    store_object_id id = Key("ls-" + std::to_string(i));
    std::string data(100 + i, 'x');
    REQUIRE(store_put(c.get(), &id, data.data(), data.size(), nullptr) == STORE_OK);
    ids.insert(Hex(id));
  }
  // Ids only, in pages of 7: every object once, in id order.
  Result r = Run(dir, {"ls", "--socket", sock, "-q", "--page-size", "7"});
  INFO(Describe(r));
  REQUIRE(r.Exited(0));
  auto lines = Lines(r.out);
  CHECK(lines == std::vector<std::string>(ids.begin(), ids.end()));

  // A table sorted by size, largest first, the first 5.
  r = Run(dir, {"ls", "--socket", sock, "--sort", "size", "--reverse", "--limit", "5",
                "--page-size", "2"});
  REQUIRE(r.Exited(0));
  lines = Lines(r.out);
  REQUIRE(lines.size() == 6);
  CHECK(lines[0].find("ID") == 0);
  for (int i = 0; i < 5; i++) {
    INFO(lines[i + 1]);
    CHECK(lines[i + 1].find(Hex(Key("ls-" + std::to_string(24 - i)))) == 0);
    CHECK(lines[i + 1].find(" " + std::to_string(124 - i) + " ") != std::string::npos);
    CHECK(lines[i + 1].find("sealed") != std::string::npos);
  }

  // JSON: one document with the total and the objects.
  r = Run(dir, {"ls", "--socket", sock, "--json", "--offset", "20"});
  REQUIRE(r.Exited(0));
  CHECK(r.out.rfind("{\"total\":25,\"objects\":[", 0) == 0);
  size_t n = 0;
  for (size_t at = r.out.find("\"id\":"); at != std::string::npos; at = r.out.find("\"id\":", at + 1)) n++;
  CHECK(n == 5);
  CHECK(r.out.back() == '\n');

  // --prefix, and the -q output feeds `store rm --hex`.
  const std::string first = *ids.begin();
  r = Run(dir, {"ls", "--socket", sock, "-q", "--prefix", first.substr(0, 8)});
  CHECK(Lines(r.out) == std::vector<std::string>{first});
  std::vector<std::string> rm = {"rm", "--socket", sock, "--hex"};
  rm.insert(rm.end(), ids.begin(), ids.end());
  r = Run(dir, rm);
  CHECK(r.Exited(0));
  r = Run(dir, {"ls", "--socket", sock, "-q"});
  CHECK(r.out.empty());
}

TEST_CASE("store evict spills and prints the bytes freed; without a spill dir it says why") {
  test::TempDir spill;
  test::TestStore s("32M", {"--spill-dir", spill.path});
  REQUIRE(s.started());
  test::TempDir dir;
  auto c = test::Connect(s.socket(), "test_cmd");
  store_object_id id = Key("to-evict");
  std::string data(2 << 20, 'e');
  REQUIRE(store_put(c.get(), &id, data.data(), data.size(), nullptr) == STORE_OK);
  Result r = Run(dir, {"evict", "--socket", s.socket(), "1M"});
  INFO(Describe(r));
  REQUIRE(r.Exited(0));
  CHECK(std::stoull(r.out) >= (2u << 20));
  store_object_info info = STORE_OBJECT_INFO_INIT;
  REQUIRE(store_info(c.get(), &id, &info) == STORE_OK);
  CHECK(info.state == STORE_STATE_SPILLED);
  // Read back through the command, from disk.
  r = Run(dir, {"get", "--socket", s.socket(), "to-evict"});
  CHECK(r.out == data);
  CHECK(store_delete(c.get(), &id) == STORE_OK);

  test::TestStore plain("16M");
  REQUIRE(plain.started());
  r = Run(dir, {"evict", "--socket", plain.socket(), "1M"});
  CHECK(r.Exited(1));
  CHECK(r.err.find("spill") != std::string::npos);
}
