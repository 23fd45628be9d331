// test_top.cpp - store-top ($STORE_TOP_BIN) and the report library against a real store.
//
// A known workload (10 objects of known sizes: 2 pinned, 1 held open by another client, 1 still
// being written) is checked against what `store-top --once`, `--json` and PrintInfo() print.
// The test case "store-top under tmux" drives the live view as a user would, in a detached
// tmux session on a private tmux socket; it exits 77 (skipped) when tmux is not installed.
// Waiting is on conditions with deadlines, never on fixed sleeps.
#include <doctest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "client_util.h"
#include "harness.h"
#include "report.h"
#include "storeclient.h"

namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

// ---- processes -----------------------------------------------------------------------------

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

struct Result {
  int status = -1;  // exit code, or -1 if it did not exit normally in time
  std::string out, err;
};

// Runs args (args[0] is a path) with stdin from /dev/null; captures stdout and stderr.
Result Run(const std::vector<std::string>& args, std::chrono::milliseconds timeout = 20s) {
  TempDir dir;
  std::string out = dir / "out", err = dir / "err";
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    int in = open("/dev/null", O_RDONLY);
    int o = open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    int e = open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (in < 0 || o < 0 || e < 0) _exit(126);
    dup2(in, 0);
    dup2(o, 1);
    dup2(e, 2);
    execv(argv[0], argv.data());
    _exit(127);
  }
  int st = test::WaitExit(pid, timeout);
  Result r;
  r.status = st >= 0 && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  r.out = ReadFile(out);
  r.err = ReadFile(err);
  return r;
}

std::string TopBin() {
  const char* b = std::getenv("STORE_TOP_BIN");
  return b ? b : "store-top";
}

// The full path of a program found in PATH, or "".
std::string FindInPath(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::stringstream ss(path ? path : "/usr/bin:/bin");
  std::string dir;
  while (std::getline(ss, dir, ':')) {
    std::string p = (dir.empty() ? "." : dir) + "/" + name;
    if (access(p.c_str(), X_OK) == 0) return p;
  }
  return "";
}

// ---- text ----------------------------------------------------------------------------------

std::vector<std::string> Lines(const std::string& s) {
  std::vector<std::string> v;
  std::stringstream ss(s);
  std::string l;
  while (std::getline(ss, l)) v.push_back(l);
  return v;
}

std::vector<std::string> Tokens(const std::string& s) {
  std::vector<std::string> v;
  std::stringstream ss(s);
  std::string t;
  while (ss >> t) v.push_back(t);
  return v;
}

std::string Trim(const std::string& s) {
  size_t b = s.find_first_not_of(' ');
  return b == std::string::npos ? "" : s.substr(b);
}

// The lines after the one starting with `header`, up to the next blank line.
std::vector<std::string> Section(const std::string& text, const std::string& header) {
  auto lines = Lines(text);
  std::vector<std::string> out;
  size_t i = 0;
  while (i < lines.size() && lines[i].rfind(header, 0) != 0) i++;
  REQUIRE_MESSAGE(i < lines.size(), "no section '" << header << "' in:\n" << text);
  for (i++; i < lines.size() && !lines[i].empty(); i++) out.push_back(lines[i]);
  return out;
}

// The first `count` numbers after `label` on the section line that starts with it.
std::vector<uint64_t> Row(const std::vector<std::string>& section, const std::string& label,
                          size_t count = 2) {
  for (const auto& line : section) {
    std::string t = Trim(line);
    if (t.rfind(label, 0) != 0 || t.size() <= label.size() || t[label.size()] != ' ') continue;
    std::vector<uint64_t> nums;
    for (const auto& tok : Tokens(t.substr(label.size()))) {
      if (nums.size() == count || tok.find_first_not_of("0123456789") != std::string::npos) break;
      nums.push_back(std::strtoull(tok.c_str(), nullptr, 10));
    }
    if (nums.size() == count) return nums;
  }
  FAIL("no row '" << label << "'");
  return {};
}

// ---- a minimal JSON reader -----------------------------------------------------------------

// Numbers keep their text: nanosecond timestamps do not fit a double exactly.
struct Json {
  enum Type { kNull, kBool, kNumber, kString, kArray, kObject } type = kNull;
  bool b = false;
  std::string text;  // number text or string value
  std::vector<Json> items;
  std::map<std::string, Json> fields;

  bool Has(const std::string& k) const { return type == kObject && fields.count(k) != 0; }
  const Json& operator[](const std::string& k) const {
    auto it = fields.find(k);
    REQUIRE_MESSAGE(it != fields.end(), "JSON key '" << k << "' is missing");
    return it->second;
  }
  uint64_t U() const {
    REQUIRE(type == kNumber);
    return std::strtoull(text.c_str(), nullptr, 10);
  }
  int64_t I() const {
    REQUIRE(type == kNumber);
    return std::strtoll(text.c_str(), nullptr, 10);
  }
  const std::string& S() const {
    REQUIRE(type == kString);
    return text;
  }
};

class JsonParser {
 public:
  explicit JsonParser(const std::string& s) : s_(s) {}
  // Parses the whole input (one value, optional surrounding whitespace); false on any error.
  bool Parse(Json* out) {
    if (!Value(out, 0)) return false;
    Space();
    return i_ == s_.size();
  }

 private:
  void Space() {
    while (i_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[i_]))) i_++;
  }
  bool Lit(const char* w) {
    size_t n = std::strlen(w);
    if (s_.compare(i_, n, w) != 0) return false;
    i_ += n;
    return true;
  }
  bool String(std::string* out) {
    if (i_ >= s_.size() || s_[i_] != '"') return false;
    i_++;
    while (i_ < s_.size() && s_[i_] != '"') {
      char c = s_[i_++];
      if (static_cast<unsigned char>(c) < 0x20) return false;
      if (c != '\\') {
        *out += c;
        continue;
      }
      if (i_ >= s_.size()) return false;
      char e = s_[i_++];
      switch (e) {
        case '"': case '\\': case '/': *out += e; break;
        case 'n': *out += '\n'; break;
        case 't': *out += '\t'; break;
        case 'r': *out += '\r'; break;
        case 'b': *out += '\b'; break;
        case 'f': *out += '\f'; break;
        case 'u': {
          if (i_ + 4 > s_.size()) return false;
          for (int k = 0; k < 4; k++) {
            if (!std::isxdigit(static_cast<unsigned char>(s_[i_ + k]))) return false;
          }
          unsigned v = static_cast<unsigned>(std::stoul(s_.substr(i_, 4), nullptr, 16));
          i_ += 4;
          *out += v < 0x80 ? static_cast<char>(v) : '?';
          break;
        }
        default: return false;
      }
    }
    if (i_ >= s_.size()) return false;
    i_++;
    return true;
  }
  bool Value(Json* v, int depth) {
    if (depth > 64) return false;
    Space();
    if (i_ >= s_.size()) return false;
    char c = s_[i_];
    if (c == '{') {
      v->type = Json::kObject;
      i_++;
      Space();
      if (i_ < s_.size() && s_[i_] == '}') return ++i_, true;
      for (;;) {
        Space();
        std::string key;
        if (!String(&key)) return false;
        Space();
        if (i_ >= s_.size() || s_[i_++] != ':') return false;
        Json child;
        if (!Value(&child, depth + 1)) return false;
        if (v->fields.count(key)) return false;  // duplicate keys are a writer bug
        v->fields.emplace(key, std::move(child));
        Space();
        if (i_ < s_.size() && s_[i_] == ',') { i_++; continue; }
        if (i_ < s_.size() && s_[i_] == '}') return ++i_, true;
        return false;
      }
    }
    if (c == '[') {
      v->type = Json::kArray;
      i_++;
      Space();
      if (i_ < s_.size() && s_[i_] == ']') return ++i_, true;
      for (;;) {
        Json child;
        if (!Value(&child, depth + 1)) return false;
        v->items.push_back(std::move(child));
        Space();
        if (i_ < s_.size() && s_[i_] == ',') { i_++; continue; }
        if (i_ < s_.size() && s_[i_] == ']') return ++i_, true;
        return false;
      }
    }
    if (c == '"') {
      v->type = Json::kString;
      return String(&v->text);
    }
    if (Lit("true")) { v->type = Json::kBool; v->b = true; return true; }
    if (Lit("false")) { v->type = Json::kBool; return true; }
    if (Lit("null")) { v->type = Json::kNull; return true; }
    size_t start = i_;
    if (i_ < s_.size() && s_[i_] == '-') i_++;
    while (i_ < s_.size() && (std::isdigit(static_cast<unsigned char>(s_[i_])) || s_[i_] == '.' ||
                              s_[i_] == 'e' || s_[i_] == 'E' || s_[i_] == '+' || s_[i_] == '-')) {
      i_++;
    }
    if (i_ == start) return false;
    v->type = Json::kNumber;
    v->text = s_.substr(start, i_ - start);
    return true;
  }
  const std::string& s_;
  size_t i_ = 0;
};

Json ParseJson(const std::string& s) {
  Json j;
  JsonParser p(s);
  REQUIRE_MESSAGE(p.Parse(&j), "not one JSON document:\n" << s);
  return j;
}

// ---- the workload --------------------------------------------------------------------------

using test::ClientPtr;
using test::ReaderPtr;
using test::WriterPtr;

ClientPtr Connect(const std::string& socket, const char* name) {
  return test::Connect(socket, name);
}

std::string Hex(const store_object_id& id) { return store::report::HexId(id); }

// 10 objects; object i takes 16 KiB << i bytes in all (sizes that are allocator size classes,
// so the server's byte counts are known exactly). Object 0 carries 100 bytes of metadata;
// objects 1 and 2 are pinned by the owner, object 3 is held open by a second client, object 9
// (the largest) is still being written. Importance is i % 3.
struct Workload {
  static constexpr int kCount = 10;
  static constexpr uint64_t kBase = 16 << 10;
  static constexpr uint64_t kMeta = 100;
  static constexpr uint64_t kCapacity = 64 << 20;  // the store's --memory 64M
  // Expected figures.
  static constexpr uint64_t kCreatedBytes = kBase << 9;           // object 9
  static constexpr uint64_t kSealedBytes = kBase * ((1 << 9) - 1);  // objects 0..8
  static constexpr uint64_t kPinnedBytes = (kBase << 1) + (kBase << 2);
  static constexpr uint64_t kOpenBytes = kBase << 3;
  static constexpr uint64_t kUsedBytes = kCreatedBytes + kSealedBytes;

  ClientPtr owner, reader;
  store_object_id ids[kCount];
  ReaderPtr open;
  WriterPtr writer;

  explicit Workload(const std::string& socket) {
    owner = Connect(socket, "workload");
    reader = Connect(socket, "reader");
    std::vector<char> data(kBase << 9, 'x');
    for (int i = 0; i < kCount; i++) {
      std::string name = "top-object-" + std::to_string(i);
      REQUIRE(store_object_id_from_string(name.data(), name.size(), &ids[i]) == STORE_OK);
      store_create_options o = STORE_CREATE_OPTIONS_INIT;
      o.importance = i % 3;
      uint64_t size = kBase << i;
      if (i == 0) {
        o.metadata = data.data();
        o.metadata_size = kMeta;
        size -= kMeta;
      }
      if (i == kCount - 1) {
        store_writer* w = nullptr;
        REQUIRE(store_create(owner.get(), &w, &ids[i], size, &o) == STORE_OK);
        writer.reset(w);
      } else {
        INFO(store_last_error_message());
        REQUIRE(store_put(owner.get(), &ids[i], data.data(), size, &o) == STORE_OK);
      }
    }
    REQUIRE(store_pin(owner.get(), &ids[1]) == STORE_OK);
    REQUIRE(store_pin(owner.get(), &ids[2]) == STORE_OK);
    store_reader* r = nullptr;
    REQUIRE(store_open_reader(reader.get(), &r, &ids[3], 0) == STORE_OK);
    open.reset(r);
  }

  // The shortest prefix (at least 4 digits) of object i's id that no other object shares.
  std::string UniquePrefix(int i) const {
    std::string h = Hex(ids[i]);
    for (size_t n = 4; n <= h.size(); n++) {
      bool unique = true;
      for (int k = 0; k < kCount; k++) {
        if (k != i && Hex(ids[k]).compare(0, n, h, 0, n) == 0) unique = false;
      }
      if (unique) return h.substr(0, n);
    }
    return h;
  }
};

void CheckServerAgrees(const Workload& w) {
  store_stats s = STORE_STATS_INIT;
  REQUIRE(store_stats_get(w.owner.get(), &s) == STORE_OK);
  CHECK(s.capacity_bytes == Workload::kCapacity);
  CHECK(s.used_bytes == Workload::kUsedBytes);
  CHECK(s.created_bytes == Workload::kCreatedBytes);
  CHECK(s.sealed_bytes == Workload::kSealedBytes);
  CHECK(s.pinned_bytes == Workload::kPinnedBytes);
  CHECK(s.open_bytes == Workload::kOpenBytes);
}

}  // namespace

TEST_CASE("store-top --once prints the workload's figures exactly") {
  test::TestStore store("64M");
  REQUIRE(store.started());
  Workload w(store.socket());
  CheckServerAgrees(w);

  Result r = Run({TopBin(), "--socket", store.socket(), "--once"});
  INFO(r.out << r.err);
  REQUIRE(r.status == 0);
  CHECK(r.err.empty());
  CHECK(r.out.find("store at " + store.socket() + ": server pid " + std::to_string(store.pid())) ==
        0);

  auto mem = Section(r.out, "memory");
  CHECK(Row(mem, "capacity", 1)[0] == Workload::kCapacity);
  CHECK(Row(mem, "used", 1)[0] == Workload::kUsedBytes);
  CHECK(Row(mem, "free", 1)[0] == Workload::kCapacity - Workload::kUsedBytes);
  CHECK(Row(mem, "pinned", 1)[0] == Workload::kPinnedBytes);
  CHECK(Row(mem, "open by readers", 1)[0] == Workload::kOpenBytes);
  // The server counts evictable bytes itself: the exact figure, not bounds.
  CHECK(Row(mem, "evictable", 1)[0] ==
        Workload::kSealedBytes - Workload::kPinnedBytes - Workload::kOpenBytes);
  CHECK(Row(mem, "largest free block", 1)[0] > 0);

  auto objects = Section(r.out, "objects: 10 ");
  CHECK(Row(objects, "creating") == std::vector<uint64_t>{1, Workload::kCreatedBytes});
  CHECK(Row(objects, "sealed") == std::vector<uint64_t>{9, Workload::kSealedBytes});
  CHECK(Row(objects, "open by readers") == std::vector<uint64_t>{1, Workload::kOpenBytes});
  CHECK(Row(objects, "pinned") == std::vector<uint64_t>{2, Workload::kPinnedBytes});
  CHECK(Row(objects, "deleted, still read") == std::vector<uint64_t>{0, 0});
  for (const char* spill : {"spilling", "spilled", "restoring"}) {
    CHECK(Row(objects, spill) == std::vector<uint64_t>{0, 0});
  }
  CHECK(r.out.find("\nspill: off (the store has no spill directory)\n") != std::string::npos);
  CHECK(r.out.find("\nwaiting: 0 gets, 0 creates\n") != std::string::npos);
  // The limits: the figures each watches, the limits of a store started without limit flags
  // (--max-clients from its descriptor limit), and no hit.
  auto limits = Section(r.out, "limits ");
  REQUIRE(limits.size() == 9);
  auto words = [](const std::string& line) {
    std::string out;
    for (const auto& t : Tokens(line)) out += (out.empty() ? "" : " ") + t;
    return out;
  };
  CHECK(words(limits[0]) == "waiting requests, per client - 1024 0");
  CHECK(words(limits[1]) == "waiting bytes 0B 256M 0");
  CHECK(words(limits[3]) == "reply backlog 0B 1.00G 0");
  CHECK(words(limits[4]) == "partial requests 0B 256M 0");
  auto clients_row = Row(limits, "clients", 3);
  CHECK(clients_row[0] == 3);
  CHECK(clients_row[1] > 0);
  CHECK(clients_row[2] == 0);
  auto objects_row = Row(limits, "objects", 3);
  CHECK(objects_row[0] == 10);
  CHECK(objects_row[1] >= (1u << 20));
  CHECK(objects_row[2] == 0);

  auto ops = Section(r.out, "operations since start");
  CHECK(Row(ops, "create", 1)[0] == 10);
  CHECK(Row(ops, "seal", 1)[0] == 9);
  CHECK(Row(ops, "get", 1)[0] == 1);
  CHECK(Row(ops, "pin", 1)[0] == 2);
  CHECK(Row(ops, "release", 1)[0] == 0);
  CHECK(Row(ops, "delete", 1)[0] == 0);
  CHECK(Row(ops, "abort", 1)[0] == 0);

  // The object table: the 10 objects, largest first; the largest is the one being written.
  auto table = Section(r.out, "objects by size, descending: 10 shown of 10");
  REQUIRE(table.size() == 11);  // header and 10 rows
  auto first = Tokens(table[1]);
  REQUIRE(first.size() >= 4);
  CHECK(first[0] == Hex(w.ids[9]));
  CHECK(first[3] == "creating");
  auto last = Tokens(table[10]);
  REQUIRE(last.size() >= 4);
  CHECK(last[0] == Hex(w.ids[0]));
  CHECK(last[2] == "100B");  // metadata
  CHECK(last[3] == "sealed");

  // Clients: the workload's two and store-top itself.
  auto clients = Section(r.out, "clients: 3");
  REQUIRE(clients.size() == 4);
  bool seen_owner = false, seen_reader = false, seen_self = false;
  for (size_t i = 1; i < clients.size(); i++) {
    auto t = Tokens(clients[i]);
    REQUIRE(t.size() >= 8);
    if (t[1] == "workload") {
      seen_owner = true;
      CHECK(t[2] == std::to_string(getpid()));
      CHECK(t[3] == "10");  // created
      CHECK(t[4] == "1");   // creating
      CHECK(t[5] == "0");   // readers
      CHECK(t[6] == "2");   // pins
    } else if (t[1] == "reader") {
      seen_reader = true;
      CHECK(t[5] == "1");
      CHECK(t[6] == "0");
    } else if (t[1] == "store-top") {
      seen_self = clients[i].find("(this)") != std::string::npos;
    }
  }
  CHECK(seen_owner);
  CHECK(seen_reader);
  CHECK(seen_self);
}

TEST_CASE("store-top --json prints one document with the workload's figures") {
  test::TestStore store("64M");
  REQUIRE(store.started());
  Workload w(store.socket());
  CheckServerAgrees(w);

  for (auto flags : {std::vector<std::string>{"--json"}, {"--once", "--json"}}) {
    std::vector<std::string> args = {TopBin(), "--socket", store.socket()};
    args.insert(args.end(), flags.begin(), flags.end());
    Result r = Run(args);
    INFO(r.out << r.err);
    REQUIRE(r.status == 0);
    CHECK(r.err.empty());
    REQUIRE(!r.out.empty());
    CHECK(r.out.back() == '\n');
    CHECK(r.out.find('\n') == r.out.size() - 1);  // one line
    Json j = ParseJson(r.out);

    CHECK(j["socket"].S() == store.socket());
    const Json& s = j["stats"];
    CHECK(s["capacity_bytes"].U() == Workload::kCapacity);
    CHECK(s["used_bytes"].U() == Workload::kUsedBytes);
    CHECK(s["object_count"].U() == 10);
    CHECK(s["client_count"].U() == 3);
    CHECK(s["created_count"].U() == 1);
    CHECK(s["created_bytes"].U() == Workload::kCreatedBytes);
    CHECK(s["sealed_count"].U() == 9);
    CHECK(s["sealed_bytes"].U() == Workload::kSealedBytes);
    CHECK(s["pinned_count"].U() == 2);
    CHECK(s["pinned_bytes"].U() == Workload::kPinnedBytes);
    CHECK(s["open_count"].U() == 1);
    CHECK(s["open_bytes"].U() == Workload::kOpenBytes);
    CHECK(s["deleted_pending_count"].U() == 0);
    CHECK(s["waiting_gets"].U() == 0);
    CHECK(s["waiting_creates"].U() == 0);
    CHECK(s["total_creates"].U() == 10);
    CHECK(s["total_seals"].U() == 9);
    CHECK(s["total_pins"].U() == 2);
    CHECK(s["server_pid"].I() == store.pid());
    for (const char* k : {"largest_free_bytes", "resident_bytes", "total_requests", "uptime_ns",
                          "spilling_count", "spilled_count", "restoring_count", "spilled_bytes"}) {
      CHECK_MESSAGE(s.Has(k), k);
    }
    CHECK(s["spilled_count"].U() == 0);
    // The limits (none hit): what they watch and the limits in force.
    CHECK(s["waiting_bytes"].U() == 0);
    CHECK(s["limit_waiting_bytes"].U() == (256u << 20));
    CHECK(s["limit_client_backlog"].U() == (128u << 20));
    CHECK(s["limit_clients"].U() > 0);
    CHECK(s["refused_clients"].U() == 0);
    CHECK(s["closed_partial"].U() == 0);
    CHECK(s["limit_objects"].U() >= (1u << 20));
    CHECK(s["refused_objects"].U() == 0);

    const Json& d = j["derived"];
    CHECK(d["free_bytes"].U() == Workload::kCapacity - Workload::kUsedBytes);
    const uint64_t evictable = Workload::kSealedBytes - Workload::kPinnedBytes - Workload::kOpenBytes;
    CHECK(s["evictable_bytes"].U() == evictable);
    CHECK(d["evictable_exact"].b);
    CHECK(d["evictable_bytes_min"].U() == evictable);
    CHECK(d["evictable_bytes_max"].U() == evictable);
    CHECK(d["held_bytes"].U() == Workload::kPinnedBytes + Workload::kOpenBytes);
    CHECK(s["spill_enabled"].U() == 0);

    const Json& clients = j["clients"];
    REQUIRE(clients.type == Json::kArray);
    REQUIRE(clients.items.size() == 3);
    int selves = 0;
    for (const Json& c : clients.items) {
      if (c["is_self"].b) selves++;
      if (c["name"].S() == "workload") {
        CHECK(c["pid"].I() == getpid());
        CHECK(c["objects_created"].U() == 10);
        CHECK(c["creating_count"].U() == 1);
        CHECK(c["pins_held"].U() == 2);
        CHECK(c["bytes_held"].U() == Workload::kPinnedBytes + Workload::kCreatedBytes);
      } else if (c["name"].S() == "reader") {
        CHECK(c["readers_held"].U() == 1);
        CHECK(c["bytes_held"].U() == Workload::kOpenBytes);
      } else {
        CHECK(c["name"].S() == "store-top");
      }
    }
    CHECK(selves == 1);

    const Json& objs = j["objects"];
    CHECK(objs["sort"].S() == "size");
    CHECK(objs["descending"].b);
    CHECK(objs["matching"].U() == 10);
    const Json& page = objs["page"];
    REQUIRE(page.type == Json::kArray);
    REQUIRE(page.items.size() == 10);
    for (int i = 0; i < Workload::kCount; i++) {
      const Json& o = page.items[static_cast<size_t>(9 - i)];  // largest first
      CHECK(o["id"].S() == Hex(w.ids[i]));
      CHECK(o["data_size"].U() + o["metadata_size"].U() == Workload::kBase << i);
      CHECK(o["metadata_size"].U() == (i == 0 ? Workload::kMeta : 0));
      CHECK(o["state"].S() == (i == 9 ? "creating" : "sealed"));
      CHECK(o["importance"].I() == i % 3);
      CHECK(o["pin_count"].U() == (i == 1 || i == 2 ? 1u : 0u));
      CHECK(o["reader_count"].U() == (i == 3 ? 1u : 0u));
      CHECK(o["creator_pid"].I() == getpid());
      CHECK(o["create_time_ns"].I() > 0);
    }
  }

  // A smaller page in another order.
  Result r = Run({TopBin(), "--socket", store.socket(), "--json", "--sort", "id", "--limit", "3"});
  INFO(r.out << r.err);
  REQUIRE(r.status == 0);
  Json j = ParseJson(r.out);
  CHECK(j["objects"]["sort"].S() == "id");
  CHECK(!j["objects"]["descending"].b);
  CHECK(j["objects"]["matching"].U() == 10);
  const Json& page = j["objects"]["page"];
  REQUIRE(page.items.size() == 3);
  CHECK(page.items[0]["id"].S() < page.items[1]["id"].S());
  CHECK(page.items[1]["id"].S() < page.items[2]["id"].S());
}

TEST_CASE("store-top --json escapes client names and omits the page for --limit 0") {
  test::TestStore store("64M");
  REQUIRE(store.started());
  // Quotes, a backslash, UTF-8, a control byte and a byte that is not UTF-8.
  const std::string name = "a \"b\" \\ \xc3\xa9 \x01 \xff";
  ClientPtr c = Connect(store.socket(), name.c_str());
  Result r = Run({TopBin(), "--socket", store.socket(), "--json", "--limit", "0"});
  INFO(r.out << r.err);
  REQUIRE(r.status == 0);
  Json j = ParseJson(r.out);
  CHECK(!j.Has("objects"));
  bool found = false;
  for (const Json& k : j["clients"].items) {
    if (k["is_self"].b) continue;
    found = true;
    // The store keeps names printable: the backslash, the control byte and the byte that is
    // not UTF-8 come escaped; the UTF-8 stays.
    CHECK(k["name"].S() == "a \"b\" \\\\ \xc3\xa9 \\x01 \\xff");
  }
  CHECK(found);
}

TEST_CASE("store-top shows spilled objects") {
  TempDir spill;
  test::TestStore store("64M", {"--spill-dir", spill.path});
  REQUIRE(store.started());
  ClientPtr c = Connect(store.socket(), "spiller");
  constexpr int kObjects = 8;
  constexpr uint64_t kSize = 1 << 20;
  std::vector<char> data(kSize, 's');
  store_object_id ids[kObjects];
  for (int i = 0; i < kObjects; i++) {
    std::string name = "spill-" + std::to_string(i);
    REQUIRE(store_object_id_from_string(name.data(), name.size(), &ids[i]) == STORE_OK);
    REQUIRE(store_put(c.get(), &ids[i], data.data(), kSize, nullptr) == STORE_OK);
  }
  uint64_t spilled = 0;
  int rc = store_evict(c.get(), 3 * kSize, &spilled);
  INFO(store_last_error_message());
  REQUIRE(rc == STORE_OK);
  REQUIRE(spilled >= 3 * kSize);
  store_stats st = STORE_STATS_INIT;
  REQUIRE(store_stats_get(c.get(), &st) == STORE_OK);
  REQUIRE(st.spilled_count >= 3);
  REQUIRE(st.spill_files >= 1);

  Result r = Run({TopBin(), "--socket", store.socket(), "--once", "--sort", "state"});
  INFO(r.out << r.err);
  REQUIRE(r.status == 0);
  auto objects = Section(r.out, "objects: " + std::to_string(kObjects) + " ");
  CHECK(Row(objects, "spilled") == std::vector<uint64_t>{st.spilled_count, st.spilled_bytes});
  CHECK(Row(objects, "sealed") == std::vector<uint64_t>{kObjects - st.spilled_count,
                                                        st.sealed_bytes});
  auto spill_rows = Section(r.out, "spill: on");
  CHECK(Row(spill_rows, "files", 1)[0] == st.spill_files);
  CHECK(Row(spill_rows, "on disk", 1)[0] == st.spill_disk_bytes);
  CHECK(Row(spill_rows, "written since start") ==
        std::vector<uint64_t>{st.total_spilled_objects, st.total_spilled_bytes});
  CHECK(Row(spill_rows, "compacted, bytes freed") ==
        std::vector<uint64_t>{st.total_compactions, st.total_compact_bytes_freed});
  CHECK(Row(spill_rows, "failed compactions", 1)[0] == st.total_compact_failures);
  // Sorted by state, descending is off: sealed (2) before spilled (4).
  auto table = Section(r.out, "objects by state, ascending");
  REQUIRE(table.size() == kObjects + 1);
  CHECK(Tokens(table[1])[3] == "sealed");
  CHECK(Tokens(table.back())[3] == "spilled");

  r = Run({TopBin(), "--socket", store.socket(), "--json"});
  REQUIRE(r.status == 0);
  Json j = ParseJson(r.out);
  CHECK(j["stats"]["spill_enabled"].U() == 1);
  CHECK(j["stats"]["spilled_count"].U() == st.spilled_count);
  CHECK(j["stats"]["total_spilled_bytes"].U() == st.total_spilled_bytes);
  for (const char* k : {"total_compactions", "total_compact_bytes_copied",
                        "total_compact_bytes_freed", "total_compact_failures",
                        "spill_undurable_deletes"}) {
    CHECK_MESSAGE(j["stats"][k].U() == 0, k);  // nothing deleted: no compaction
  }
  CHECK(j["derived"]["spill_write_bytes_per_second"].type == Json::kNumber);
  int spilled_rows = 0;
  for (const Json& o : j["objects"]["page"].items) spilled_rows += o["state"].S() == "spilled";
  CHECK(spilled_rows == static_cast<int>(st.spilled_count));
}

TEST_CASE("PrintInfo prints INFO sections") {
  test::TestStore store("64M");
  REQUIRE(store.started());
  Workload w(store.socket());
  TempDir dir;
  std::string path = dir / "info";
  FILE* f = fopen(path.c_str(), "w");
  REQUIRE(f != nullptr);
  int rc = store::report::PrintInfo(store.socket().c_str(), f);
  fclose(f);
  REQUIRE(rc == 0);
  std::string text = ReadFile(path);
  INFO(text);
  std::map<std::string, std::string> kv;
  std::vector<std::string> sections;
  for (const auto& line : Lines(text)) {
    if (line.empty()) continue;
    if (line[0] == '#') {
      sections.push_back(line);
      continue;
    }
    size_t colon = line.find(':');
    REQUIRE_MESSAGE(colon != std::string::npos, line);
    kv[line.substr(0, colon)] = line.substr(colon + 1);
  }
  CHECK(sections == std::vector<std::string>{"# memory", "# objects", "# clients",
                                             "# operations", "# spill", "# limits", "# gpu"});
  CHECK(kv["limit_client_waiting"] == "1024");
  CHECK(kv["refused_client_waiting"] == "0");
  CHECK(kv["closed_backlog"] == "0");
  CHECK(kv["partial_bytes"] == "0");
  CHECK(std::stoull(kv["limit_clients"]) > 0);
  CHECK(std::stoull(kv["limit_objects"]) >= (1u << 20));
  CHECK(kv["refused_objects"] == "0");
  CHECK(kv["gpu_backend"] == "none");  // a store without --gpu-memory
  CHECK(kv["capacity_bytes"] == std::to_string(Workload::kCapacity));
  CHECK(kv["used_bytes"] == std::to_string(Workload::kUsedBytes));
  CHECK(kv["objects"] == "10");
  CHECK(kv["creating_count"] == "1");
  CHECK(kv["sealed_count"] == "9");
  CHECK(kv["pinned_count"] == "2");
  CHECK(kv["pinned_bytes"] == std::to_string(Workload::kPinnedBytes));
  CHECK(kv["open_count"] == "1");
  CHECK(kv["connected_clients"] == "3");
  CHECK(kv["total_creates"] == "10");
  CHECK(kv["server_pid"] == std::to_string(store.pid()));
  CHECK(kv["spilled_count"] == "0");
  for (const char* k : {"total_compactions", "total_compact_bytes_copied",
                        "total_compact_bytes_freed", "total_compact_failures",
                        "spill_undurable_deletes"}) {
    CHECK_MESSAGE(kv[k] == "0", k);
  }
  CHECK(kv.count("client0") == 1);

  // Nothing listening: 1 and a message.
  TempDir empty;
  f = fopen(path.c_str(), "w");
  REQUIRE(f != nullptr);
  rc = store::report::PrintInfo((empty / "none.sock").c_str(), f);
  fclose(f);
  CHECK(rc == 1);
  CHECK(ReadFile(path).empty());
}

TEST_CASE("store-top without a store, and with bad flags") {
  TempDir dir;
  std::string socket = dir / "none.sock";
  for (auto flags : {std::vector<std::string>{"--once"}, {"--json"}}) {
    std::vector<std::string> args = {TopBin(), "--socket", socket};
    args.insert(args.end(), flags.begin(), flags.end());
    Result r = Run(args);
    INFO(r.err);
    CHECK(r.status == 1);
    CHECK(r.out.empty());
    CHECK(r.err.find("cannot connect to the store at " + socket) != std::string::npos);
  }

  const std::vector<std::vector<std::string>> bad = {
      {"--bogus"},          {"-x"},
      {"--interval"},       {"--interval", "0"},
      {"--interval", "-1"}, {"--interval", "abc"},
      {"--interval", "1x"}, {"--interval=nan"},
      {"--socket"},         {"--socket="},
      {"--sort", "color"},  {"--limit", "-3"},
      {"--once=yes"},       {"stray"},
  };
  for (const auto& flags : bad) {
    std::vector<std::string> args = {TopBin(), "--socket", socket};
    args.insert(args.end(), flags.begin(), flags.end());
    Result r = Run(args);
    INFO(flags[0] << " -> " << r.err);
    CHECK(r.status == 2);
    CHECK(r.out.empty());
    CHECK(r.err.rfind("store-top: ", 0) == 0);
    CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
  }

  // Fractions are fine; the live view then wants a terminal, which Run() does not give it.
  Result r = Run({TopBin(), "--socket", socket, "--interval", "0.2"});
  CHECK(r.status == 2);
  CHECK(r.err.find("needs a terminal") != std::string::npos);

  r = Run({TopBin(), "--help"});
  CHECK(r.status == 0);
  CHECK(r.out.find("Usage: store-top") == 0);
  CHECK(r.out.find("--interval") != std::string::npos);
}

// ---- the live view under tmux --------------------------------------------------------------

namespace {

// Where a test killed by a signal (a meson timeout) finds what to clean up.
struct Emergency {
  char* tmux_argv[8] = {};
  pid_t stores[4] = {-1, -1, -1, -1};
} g_emergency;

void EmergencyCleanup(int sig) {
  for (pid_t p : g_emergency.stores) {
    if (p > 0) kill(p, SIGKILL);
  }
  if (g_emergency.tmux_argv[0] != nullptr) {
    pid_t pid = fork();
    if (pid == 0) {
      execv(g_emergency.tmux_argv[0], g_emergency.tmux_argv);
      _exit(127);
    }
    if (pid > 0) waitpid(pid, nullptr, 0);
  }
  signal(sig, SIG_DFL);
  raise(sig);
}

// A tmux server of its own (-S socket in a temporary directory), killed on destruction.
class Tmux {
 public:
  Tmux(const std::string& bin, const std::string& dir) : bin_(bin), socket_(dir + "/tmux.sock") {
    kill_args_ = {bin_, "-S", socket_, "kill-server"};
    for (size_t i = 0; i < kill_args_.size(); i++) {
      g_emergency.tmux_argv[i] = const_cast<char*>(kill_args_[i].c_str());
    }
  }
  ~Tmux() {
    Run(kill_args_);
    g_emergency.tmux_argv[0] = nullptr;
  }
  Result Cmd(std::vector<std::string> args) {
    args.insert(args.begin(), {bin_, "-S", socket_, "-f", "/dev/null"});
    return Run(args);
  }
  std::string Screen() { return Cmd({"capture-pane", "-p", "-t", "top"}).out; }
  std::string Format(const std::string& f) {
    std::string s = Cmd({"display-message", "-p", "-t", "top", f}).out;
    while (!s.empty() && s.back() == '\n') s.pop_back();
    return s;
  }
  // Polls the screen until pred holds; returns the last screen seen in *last.
  template <class F>
  bool WaitScreen(F pred, std::string* last, std::chrono::milliseconds timeout = 15s) {
    return test::WaitFor(
        [&] {
          *last = Screen();
          return pred(*last);
        },
        timeout);
  }

 private:
  std::string bin_, socket_;
  std::vector<std::string> kill_args_;
};

bool Contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

// The first row of the object table: the line after the column header.
std::string FirstRow(const std::string& screen) {
  auto lines = Lines(screen);
  for (size_t i = 0; i + 1 < lines.size(); i++) {
    if (lines[i].rfind(" ID ", 0) == 0) return lines[i + 1];
  }
  return "";
}

// True when the lines after "store-top exited with status N" show a terminal back in its
// usual modes: stty -a lists icanon and echo, not -icanon or -echo.
bool Restored(const std::string& screen, const std::string& status) {
  size_t at = screen.find("store-top exited with status " + status + "\n");
  if (at == std::string::npos) return false;
  std::string rest = screen.substr(at);
  for (char& c : rest) {
    if (c == ';') c = ' ';
  }
  auto t = Tokens(rest);
  auto has = [&](const char* w) { return std::find(t.begin(), t.end(), w) != t.end(); };
  return has("icanon") && has("echo") && !has("-icanon") && !has("-echo");
}

// A server started by hand on a given socket, stopped on destruction.
struct ManualStore {
  pid_t pid = -1;
  ManualStore(const std::string& socket, const std::string& log) {
    pid = test::Spawn({test::StoreBin(), "--socket", socket, "--memory", "32M", "--log-level",
                       "warn"},
                      log);
    g_emergency.stores[1] = pid;
  }
  ~ManualStore() { Stop(); }
  int Stop() {
    if (pid <= 0) return 0;
    kill(pid, SIGTERM);
    int st = test::WaitExit(pid);
    pid = -1;
    g_emergency.stores[1] = -1;
    return st;
  }
};

}  // namespace

TEST_CASE("store-top under tmux") {
  std::string tmux_bin = FindInPath("tmux");
  if (tmux_bin.empty()) {
    fprintf(stderr, "tmux is not installed: skipping\n");
    std::exit(77);  // meson's "skipped"; nothing has been started yet
  }
  struct sigaction sa {}, old_term{}, old_int{};
  sa.sa_handler = EmergencyCleanup;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, &old_term);
  sigaction(SIGINT, &sa, &old_int);

  TempDir dir;
  {
    test::TestStore store("64M");
    REQUIRE(store.started());
    g_emergency.stores[0] = store.pid();
    const std::string socket = store.socket();
    Tmux tmux(tmux_bin, dir.path);
    std::string screen;
    auto top_command = [&]() {
      // The shell ignores Ctrl-C (a trap, reset for store-top by exec), reports how store-top
      // ended and the terminal modes it left behind, then waits to be killed with the server.
      return "trap : INT; env LANG=C.UTF-8 '" + TopBin() + "' --socket '" + socket +
             "' --interval 0.2; echo \"store-top exited with status $?\"; stty -a; exec sleep 600";
    };
    Result r = tmux.Cmd({"new-session", "-d", "-s", "top", "-x", "160", "-y", "50", top_command()});
    INFO(r.err);
    REQUIRE(r.status == 0);

    {
      Workload w(socket);

      // The header counts the workload.
      bool ok = tmux.WaitScreen(
          [](const std::string& s) {
            return Contains(s, "Objects: 10  creating 1 (8.00M)  sealed 9 (7.98M)  open 1 (128K)"
                               "  pinned 2 (96.0K)") &&
                   Contains(s, "of 10");
          },
          &screen);
      INFO(screen);
      REQUIRE(ok);
      CHECK(Contains(screen, "Spill: off"));
      CHECK(Contains(screen, "evictable 7.77M"));
      CHECK(Contains(screen, "Clients: 3"));
      CHECK(Contains(screen, "Limits: waiting 0B/256M  backlog 0B/1.00G  partial 0B/256M  clients 3/"));
      CHECK(Contains(screen, "  objects 10/"));

      // s: largest first; the largest object is the one being written.
      tmux.Cmd({"send-keys", "-t", "top", "s"});
      ok = tmux.WaitScreen(
          [&](const std::string& s) {
            return Contains(s, "Objects by size descending") &&
                   FirstRow(s).rfind(" " + Hex(w.ids[9]), 0) == 0;
          },
          &screen);
      INFO(screen);
      REQUIRE(ok);
      CHECK(Contains(FirstRow(screen), "creating"));

      // r reverses: the smallest (object 0) first.
      tmux.Cmd({"send-keys", "-t", "top", "r"});
      ok = tmux.WaitScreen(
          [&](const std::string& s) { return FirstRow(s).rfind(" " + Hex(w.ids[0]), 0) == 0; },
          &screen);
      INFO(screen);
      REQUIRE(ok);

      // / prefix Enter: only object 4 is left.
      std::string prefix = w.UniquePrefix(4);
      tmux.Cmd({"send-keys", "-t", "top", "/"});
      tmux.Cmd({"send-keys", "-t", "top", "-l", prefix});
      tmux.Cmd({"send-keys", "-t", "top", "Enter"});
      ok = tmux.WaitScreen(
          [&](const std::string& s) {
            return Contains(s, "1-1 of 1  filter: id starts with " + prefix) &&
                   FirstRow(s).rfind(" " + Hex(w.ids[4]), 0) == 0;
          },
          &screen);
      INFO(screen);
      REQUIRE(ok);
      for (int i = 0; i < Workload::kCount; i++) {
        if (i != 4) CHECK(!Contains(screen, Hex(w.ids[i]).substr(0, 12)));
      }

      // c: the client table.
      tmux.Cmd({"send-keys", "-t", "top", "c"});
      ok = tmux.WaitScreen(
          [&](const std::string& s) {
            return Contains(s, "Clients: 3 connected") && Contains(s, " workload ") &&
                   Contains(s, " reader ") && Contains(s, "* store-top");
          },
          &screen);
      INFO(screen);
      REQUIRE(ok);
      tmux.Cmd({"send-keys", "-t", "top", "c", "Escape"});
    }

    // The store goes away: the view says so and keeps running.
    REQUIRE(store.Stop() == 0);
    g_emergency.stores[0] = -1;
    bool ok = tmux.WaitScreen(
        [&](const std::string& s) { return Contains(s, "store at " + socket + " is gone"); },
        &screen);
    INFO(screen);
    REQUIRE(ok);

    // A new store on the same socket: store-top reconnects by itself.
    ManualStore again(socket, dir / "store2.log");
    REQUIRE(test::WaitFor([&] { return test::SocketAccepts(socket); }));
    ClientPtr c = Connect(socket, "second");
    store_object_id id;
    REQUIRE(store_object_id_from_string("after", 5, &id) == STORE_OK);
    REQUIRE(store_put(c.get(), &id, "0123456789", 10, nullptr) == STORE_OK);
    ok = tmux.WaitScreen(
        [&](const std::string& s) {
          return Contains(s, "server pid " + std::to_string(again.pid)) &&
                 Contains(s, "Objects: 1  ") && FirstRow(s).rfind(" " + Hex(id), 0) == 0;
        },
        &screen);
    INFO(screen);
    REQUIRE(ok);

    // q: store-top exits 0 and leaves the terminal as it found it.
    tmux.Cmd({"send-keys", "-t", "top", "q"});
    ok = tmux.WaitScreen([](const std::string& s) { return Restored(s, "0"); }, &screen);
    INFO(screen);
    REQUIRE(ok);
    CHECK(tmux.Format("#{alternate_on}") == "0");
    CHECK(tmux.Format("#{cursor_flag}") == "1");

    // Ctrl-C, then SIGTERM: the same.
    for (int round = 0; round < 2; round++) {
      r = tmux.Cmd({"respawn-pane", "-k", "-t", "top", top_command()});
      REQUIRE(r.status == 0);
      ok = tmux.WaitScreen([](const std::string& s) { return Contains(s, "Objects: 1  "); },
                           &screen);
      INFO(screen);
      REQUIRE(ok);
      if (round == 0) {
        tmux.Cmd({"send-keys", "-t", "top", "C-c"});
      } else {
        std::string shell = tmux.Format("#{pane_pid}");
        std::string children = ReadFile("/proc/" + shell + "/task/" + shell + "/children");
        auto pids = Tokens(children);
        REQUIRE(pids.size() == 1);
        REQUIRE(kill(std::stoi(pids[0]), SIGTERM) == 0);
      }
      ok = tmux.WaitScreen([](const std::string& s) { return Restored(s, "0"); }, &screen);
      INFO("round " << round << "\n" << screen);
      REQUIRE(ok);
      CHECK(tmux.Format("#{alternate_on}") == "0");
    }
    c.reset();
    CHECK(again.Stop() == 0);
  }
  sigaction(SIGTERM, &old_term, nullptr);
  sigaction(SIGINT, &old_int, nullptr);
}
