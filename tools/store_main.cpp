// store - the server's command line, and commands for scripts and operators that are clients
// of a running store (info, ls, get, put, rm, evict). See `store --help`.
//
// Exit codes of the commands: 0 done, 1 the store refused or could not be reached (one line
// on stderr per failure), 2 a bad command line.
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "cli.h"
#include "report.h"
#include "server/log.h"
#include "server/options.h"
#include "server/server.h"
#include "storeclient.h"

namespace {

const char kCommands[] =
    "\n"
    "Commands (clients of a running store; each takes --socket PATH and --help):\n"
    "  store info               the store's figures in sections of key:value lines\n"
    "  store ls                 list objects, paged through the store (--sort KEY, --reverse,\n"
    "                           --limit N, --offset N, --prefix HEX, --json, -q: ids only)\n"
    "  store get ID > FILE      write an object's data (or --metadata) to stdout\n"
    "  store put ID < FILE      store stdin as an object (--metadata TEXT, --importance N,\n"
    "                           --timeout SECONDS to wait for room, default 60)\n"
    "  store rm ID...           delete objects\n"
    "  store evict SIZE         spill at least SIZE bytes of objects to disk now\n"
    "ID is a key, hashed into an object id as every binding does (store_object_id_from_string):\n"
    "`store put greeting` and C's store_object_id_from_string(\"greeting\") name one object.\n"
    "With --hex, each ID is an object id in 40 hex digits instead, as `store ls` prints them.\n"
    "The socket is --socket PATH, else $STORE_SOCKET, else $XDG_RUNTIME_DIR/store.sock, else\n"
    "/tmp/store-$UID.sock. Exit codes: 0 done, 1 the store refused (a line on stderr), 2 usage.\n";

// The options every command shares, and the arguments left over.
struct CommandLine {
  const char* name = "";
  std::string socket;  // empty: the default socket
  bool hex = false;
  bool help = false;
  std::vector<std::string> args;  // positional
  // The command's own options in the order given: --key value (or "" for flags), and options
  // no command knows (each with ""), which the command reports in its own words.
  std::vector<std::pair<std::string, std::string>> opts;
  std::string error;
};

// The options of each command besides --socket, --hex and --help: flags, then options that take
// a value.
struct CommandOptions {
  std::vector<const char*> flags;
  std::vector<const char*> values;
};
CommandOptions OptionsOf(const std::string& cmd) {
  if (cmd == "ls") return {{"--reverse", "--json", "-q"},
                           {"--sort", "--limit", "--offset", "--prefix", "--page-size"}};
  if (cmd == "get") return {{"--metadata"}, {"--timeout"}};
  if (cmd == "put") return {{}, {"--timeout", "--importance", "--metadata"}};
  return {};
}

CommandLine Parse(int argc, char** argv) {
  CommandLine c;
  c.name = argv[1];
  const std::string cmd = c.name;
  CLI::App app("", "store " + cmd);
  store::cli::Configure(app);
  store::cli::Flag(app, "-h,--help", [&] { c.help = true; });
  store::cli::Flag(app, "--hex", [&] { c.hex = true; });
  store::cli::Value(app, "--socket", [&](const std::string& v) {
    if (v.empty()) store::cli::Reject("store " + cmd + ": --socket needs a path");
    c.socket = v;
  });
  const CommandOptions options = OptionsOf(cmd);
  for (const char* f : options.flags) {
    store::cli::Flag(app, f, [&c, f] { c.opts.push_back({f, ""}); });
  }
  for (const char* k : options.values) {
    store::cli::Value(app, k, [&c, k](const std::string& v) { c.opts.push_back({k, v}); });
  }
  // argv[1], the command, stands where CLI11 expects the program's name.
  store::cli::Failure failure;
  if (!store::cli::Parse(app, argc - 1, argv + 1, &failure)) {
    switch (failure.kind) {
      case store::cli::Failure::Kind::kNeedsValue:
        c.error = "store " + cmd + ": " + failure.option + " needs a value";
        break;
      case store::cli::Failure::Kind::kTakesNoValue:
        c.error = "store " + cmd + ": " + failure.option + " takes no value";
        break;
      case store::cli::Failure::Kind::kOther:
        c.error = failure.message;
        break;
    }
    return c;
  }
  // What the command does not know: before a "--", an argument that starts with "--" (or is
  // -q) is an unknown option; anything else (a key may start with '-') is an ID or SIZE.
  bool positional_only = false;
  for (const std::string& a : app.remaining()) {
    if (!positional_only && a == "--") {
      positional_only = true;
    } else if (!positional_only && (a.rfind("--", 0) == 0 || a == "-q")) {
      c.opts.push_back({a.substr(0, a.find('=')), ""});
    } else {
      c.args.push_back(a);
    }
  }
  return c;
}

int Usage(const std::string& message) {
  std::fprintf(stderr, "%s\n", message.c_str());
  return 2;
}

std::string SocketOf(const CommandLine& c) {
  return c.socket.empty() ? store::report::DefaultSocketPath() : c.socket;
}

// Connects (named after the command); prints the failure and returns nullptr if it cannot.
store_client* Connect(const CommandLine& c) {
  std::string name = std::string("store ") + c.name;
  store_connect_options co = STORE_CONNECT_OPTIONS_INIT;
  co.client_name = name.c_str();
  store_client* client = nullptr;
  std::string path = SocketOf(c);
  if (store_client_connect(&client, path.c_str(), &co) != STORE_OK) {
    std::fprintf(stderr, "store %s: %s\n", c.name, store::report::ConnectError(path).c_str());
    return nullptr;
  }
  return client;
}

// The id an ID argument names: a key (hashed), or with --hex 40 hex digits.
bool IdOf(const CommandLine& c, const std::string& arg, store_object_id* id) {
  if (c.hex) {
    if (arg.size() != 2 * STORE_OBJECT_ID_SIZE || store_object_id_from_hex(arg.c_str(), id) != 0) {
      std::fprintf(stderr, "store %s: '%s' is not an object id of 40 hex digits (--hex)\n",
                   c.name, arg.c_str());
      return false;
    }
    return true;
  }
  store_object_id_from_string(arg.data(), arg.size(), id);
  return true;
}

// What the store said about the last failure, naming the object.
int Failed(const CommandLine& c, const std::string& what) {
  std::fprintf(stderr, "store %s: %s: %s\n", c.name, what.c_str(), store_last_error_message());
  return 1;
}

std::string Shown(const CommandLine& c, const std::string& arg, const store_object_id& id) {
  std::string hex = store::report::HexId(id);
  return c.hex ? hex : "'" + arg + "' (" + hex + ")";
}

bool ParseSeconds(const std::string& text, int64_t* ms) {
  if (text == "forever" || text == "none") {
    *ms = -1;
    return true;
  }
  char* end = nullptr;
  errno = 0;
  double v = std::strtod(text.c_str(), &end);
  if (text.empty() || *end || errno || !(v >= 0) || !std::isfinite(v) || v > 1e9) return false;
  *ms = static_cast<int64_t>(std::ceil(v * 1000));
  return true;
}

bool ParseInt(const std::string& text, int64_t lo, int64_t hi, int64_t* out) {
  char* end = nullptr;
  errno = 0;
  long long v = std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || *end || errno || v < lo || v > hi) return false;
  *out = v;
  return true;
}

bool WriteAll(int fd, const void* data, size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

// ---- info -------------------------------------------------------------------------------------

int InfoCommand(const CommandLine& c) {
  if (c.help) {
    std::printf("Usage: store info [--socket PATH]\n"
                "Prints a running store's figures in sections of key:value lines.\n");
    return 0;
  }
  if (!c.opts.empty() || !c.args.empty() || c.hex) {
    return Usage("store info: unknown option or argument (see store info --help)");
  }
  std::string path = SocketOf(c);
  return store::report::PrintInfo(path.c_str(), stdout);
}

// ---- ls ---------------------------------------------------------------------------------------

int LsCommand(const CommandLine& c) {
  if (c.help) {
    std::printf(
        "Usage: store ls [--socket PATH] [--sort KEY] [--reverse] [--limit N] [--offset N]\n"
        "                [--prefix HEX] [--json | -q]\n"
        "Lists the store's objects, sorted by the store: KEY is id (default), size, created,\n"
        "last_access, importance or state; --reverse puts the largest first. The store is\n"
        "asked a page at a time (store_list_page), so a large table costs a bounded reply\n"
        "each; objects that come or go meanwhile may be missed or shown twice. --limit N\n"
        "stops after N objects (default: all), --offset N skips N, --prefix keeps ids that\n"
        "start with HEX; --page-size N asks for N objects a request (default 10000, at most\n"
        "100000). Prints a table (id, size, metadata size, state, importance, readers,\n"
        "pins, age), or with --json one document {\"total\": N, \"objects\": [...]}, or with -q\n"
        "the ids alone, one a line (for `store rm --hex`).\n");
    return 0;
  }
  store_list_options lo = STORE_LIST_OPTIONS_INIT;
  uint64_t limit = UINT64_MAX;
  bool json = false, quiet = false;
  std::string prefix;
  uint64_t page_size = 10000;
  for (const auto& [k, v] : c.opts) {
    int64_t n = 0;
    if (k == "--page-size") {
      if (!ParseInt(v, 1, STORE_MAX_PAGE_OBJECTS, &n)) {
        return Usage("store ls: --page-size needs a count from 1 to 100000");
      }
      page_size = static_cast<uint64_t>(n);
    } else if (k == "--sort") {
      if (!store::report::ParseSort(v, &lo.sort)) {
        return Usage("store ls: --sort is id, size, created, last_access, importance or state, "
                     "not '" + v + "'");
      }
    } else if (k == "--reverse") {
      lo.descending = 1;
    } else if (k == "--limit" || k == "--offset") {
      if (!ParseInt(v, 0, INT64_MAX, &n)) return Usage("store ls: " + k + " needs a count");
      (k == "--limit" ? limit : lo.offset) = static_cast<uint64_t>(n);
    } else if (k == "--prefix") {
      prefix = v;
    } else if (k == "--json") {
      json = true;
    } else if (k == "-q") {
      quiet = true;
    } else {
      return Usage("store ls: unknown option '" + k + "' (see store ls --help)");
    }
  }
  if (!c.args.empty()) return Usage("store ls: unexpected argument '" + c.args[0] + "'");
  if (json && quiet) return Usage("store ls: --json and -q do not go together");
  lo.id_prefix = prefix.empty() ? nullptr : prefix.c_str();
  store_client* client = Connect(c);
  if (!client) return 1;
  std::vector<store_object_info> all;
  uint64_t total = 0;
  int rc = STORE_OK;
  while (all.size() < limit) {
    lo.limit = static_cast<uint32_t>(std::min<uint64_t>(limit - all.size(), page_size));
    store_object_info* page = nullptr;
    size_t count = 0;
    rc = store_list_page(client, &lo, &page, sizeof *page, &count, &total);
    if (rc != STORE_OK) break;
    all.insert(all.end(), page, page + count);
    store_free(page);
    lo.offset += count;
    if (count < lo.limit || lo.offset >= total) break;
  }
  if (rc != STORE_OK) {
    Failed(c, "listing the objects");
    store_client_free(client);
    return 1;
  }
  store_client_free(client);
  if (json) {
    store::report::PrintObjectsJson(all, total, stdout);
  } else if (quiet) {
    for (const auto& o : all) std::printf("%s\n", store::report::HexId(o.id).c_str());
  } else {
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    const int64_t now_ns = now.tv_sec * 1000000000LL + now.tv_nsec;
    std::printf("%-40s %14s %10s %-10s %10s %7s %5s %8s\n", "ID", "SIZE", "METADATA", "STATE",
                "IMPORTANCE", "READERS", "PINS", "AGE");
    for (const auto& o : all) {
      std::printf("%-40s %14" PRIu64 " %10" PRIu64 " %-10s %10d %7u %5u %8s\n",
                  store::report::HexId(o.id).c_str(), o.data_size, o.metadata_size,
                  store::report::StateName(o.state), o.importance, o.reader_count, o.pin_count,
                  store::report::Duration(now_ns - o.create_time_ns).c_str());
    }
  }
  return std::fflush(stdout) == 0 ? 0 : 1;
}

// ---- get --------------------------------------------------------------------------------------

int GetCommand(const CommandLine& c) {
  if (c.help) {
    std::printf("Usage: store get [--socket PATH] [--hex] [--timeout SECONDS] [--metadata] ID\n"
                "Writes the object's data (with --metadata, its metadata) to stdout, as is.\n"
                "--timeout waits that long for the object to be sealed (default 0: not found\n"
                "at once; 'forever' waits without end).\n");
    return 0;
  }
  int64_t timeout_ms = 0;
  bool metadata = false;
  for (const auto& [k, v] : c.opts) {
    if (k == "--timeout") {
      if (!ParseSeconds(v, &timeout_ms)) return Usage("store get: --timeout needs seconds");
    } else if (k == "--metadata") {
      metadata = true;
    } else {
      return Usage("store get: unknown option '" + k + "' (see store get --help)");
    }
  }
  if (c.args.size() != 1) return Usage("store get: give one ID (see store get --help)");
  store_object_id id;
  if (!IdOf(c, c.args[0], &id)) return 2;
  store_client* client = Connect(c);
  if (!client) return 1;
  store_reader* r = nullptr;
  int status = 0;
  if (store_open_reader(client, &r, &id, timeout_ms) != STORE_OK) {
    status = Failed(c, Shown(c, c.args[0], id));
  } else {
    uint64_t size = 0;
    const void* p = metadata ? store_reader_metadata(r, &size) : store_reader_data(r);
    if (!metadata) size = store_reader_size(r);
    if (!metadata && !p) {
      // A GPU object: copied from the device in pieces.
      std::vector<char> buf(1 << 20);
      size_t got = 0;
      while (store_reader_read(r, buf.data(), buf.size(), &got) == STORE_OK && got > 0) {
        if (!WriteAll(1, buf.data(), got)) {
          status = 1;
          break;
        }
      }
    } else if (size && !WriteAll(1, p, size)) {
      status = 1;
    }
    if (status) std::fprintf(stderr, "store get: writing to stdout: %s\n", std::strerror(errno));
    store_reader_close(r);
  }
  store_client_free(client);
  return status;
}

// ---- put --------------------------------------------------------------------------------------

int PutCommand(const CommandLine& c) {
  if (c.help) {
    std::printf(
        "Usage: store put [--socket PATH] [--hex] [--metadata TEXT] [--importance N]\n"
        "                 [--timeout SECONDS] ID < FILE\n"
        "Stores stdin, to its end, as a new object (objects are immutable: an ID in use is\n"
        "refused). A regular file is read straight into the store's memory. --timeout is how\n"
        "long to wait for room when the store is full (default 60; 0: fail at once;\n"
        "'forever'). The store holds objects of at least one byte: empty input is refused.\n");
    return 0;
  }
  store_create_options o = STORE_CREATE_OPTIONS_INIT;
  o.timeout_ms = 60000;
  std::string metadata;
  for (const auto& [k, v] : c.opts) {
    int64_t n = 0;
    if (k == "--timeout") {
      if (!ParseSeconds(v, &o.timeout_ms)) return Usage("store put: --timeout needs seconds");
    } else if (k == "--importance") {
      if (!ParseInt(v, INT32_MIN, INT32_MAX, &n)) return Usage("store put: --importance needs an integer");
      o.importance = static_cast<int32_t>(n);
    } else if (k == "--metadata") {
      metadata = v;
    } else {
      return Usage("store put: unknown option '" + k + "' (see store put --help)");
    }
  }
  if (c.args.size() != 1) return Usage("store put: give one ID (see store put --help)");
  store_object_id id;
  if (!IdOf(c, c.args[0], &id)) return 2;
  o.metadata = metadata.empty() ? nullptr : metadata.data();
  o.metadata_size = metadata.size();
  const std::string what = Shown(c, c.args[0], id);

  // A regular file of known size goes straight into the object; anything else is read first.
  struct stat st{};
  const bool regular = fstat(0, &st) == 0 && S_ISREG(st.st_mode);
  off_t start = regular ? lseek(0, 0, SEEK_CUR) : -1;
  std::vector<char> data;
  uint64_t size = 0;
  if (regular && start >= 0) {
    size = st.st_size > start ? static_cast<uint64_t>(st.st_size - start) : 0;
  } else {
    char buf[1 << 16];
    for (;;) {
      ssize_t n = read(0, buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        std::fprintf(stderr, "store put: reading stdin: %s\n", std::strerror(errno));
        return 1;
      }
      if (n == 0) break;
      data.insert(data.end(), buf, buf + n);
    }
    size = data.size();
  }
  if (size == 0) {
    std::fprintf(stderr, "store put: %s: stdin is empty; the store holds objects of at least "
                 "one byte\n", what.c_str());
    return 1;
  }
  store_client* client = Connect(c);
  if (!client) return 1;
  int status = 0;
  if (!data.empty()) {
    if (store_put(client, &id, data.data(), size, &o) != STORE_OK) status = Failed(c, what);
  } else {
    store_writer* w = nullptr;
    if (store_create(client, &w, &id, size, &o) != STORE_OK) {
      status = Failed(c, what);
    } else {
      char* p = static_cast<char*>(store_writer_data(w));
      std::vector<char> buf;
      uint64_t done = 0;
      while (done < size) {
        size_t want = static_cast<size_t>(std::min<uint64_t>(size - done, 8u << 20));
        char* dst = p ? p + done : nullptr;
        if (!dst) {
          buf.resize(want);
          dst = buf.data();
        }
        ssize_t n = read(0, dst, want);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        if (!p && store_writer_write(w, dst, static_cast<size_t>(n)) != STORE_OK) break;
        done += static_cast<uint64_t>(n);
      }
      if (done != size) {
        std::fprintf(stderr, "store put: %s: stdin ended or failed after %" PRIu64 " of %" PRIu64
                     " bytes; nothing stored\n", what.c_str(), done, size);
        store_writer_abort(w);
        status = 1;
      } else if (store_writer_seal(w) != STORE_OK) {
        status = Failed(c, what);
      }
    }
  }
  store_client_free(client);
  return status;
}

// ---- rm ---------------------------------------------------------------------------------------

int RmCommand(const CommandLine& c) {
  if (c.help) {
    std::printf("Usage: store rm [--socket PATH] [--hex] ID...\n"
                "Deletes each object (readers still open keep its bytes until they close).\n"
                "Every ID is tried; one that is missing or still being written is reported,\n"
                "and the exit code is then 1.\n");
    return 0;
  }
  if (!c.opts.empty()) return Usage("store rm: unknown option '" + c.opts[0].first + "'");
  if (c.args.empty()) return Usage("store rm: give at least one ID (see store rm --help)");
  std::vector<store_object_id> ids(c.args.size());
  for (size_t i = 0; i < c.args.size(); i++) {
    if (!IdOf(c, c.args[i], &ids[i])) return 2;
  }
  store_client* client = Connect(c);
  if (!client) return 1;
  int status = 0;
  for (size_t i = 0; i < ids.size(); i++) {
    if (store_delete(client, &ids[i]) != STORE_OK) status = Failed(c, Shown(c, c.args[i], ids[i]));
  }
  store_client_free(client);
  return status;
}

// ---- evict ------------------------------------------------------------------------------------

int EvictCommand(const CommandLine& c) {
  if (c.help) {
    std::printf("Usage: store evict [--socket PATH] SIZE\n"
                "Spills at least SIZE (e.g. 512M, 1G) of evictable objects to disk now, or all\n"
                "there are, waits until they are written, and prints the bytes of memory freed.\n"
                "Fails on a store without a spill directory.\n");
    return 0;
  }
  if (!c.opts.empty() || c.hex) return Usage("store evict: unknown option (see store evict --help)");
  uint64_t bytes = 0;
  if (c.args.size() != 1 || !store::ParseSize(c.args[0], &bytes)) {
    return Usage("store evict: give one SIZE, e.g. 512M (see store evict --help)");
  }
  store_client* client = Connect(c);
  if (!client) return 1;
  uint64_t freed = 0;
  int status = 0;
  if (store_evict(client, bytes, &freed) != STORE_OK) {
    status = Failed(c, "evicting " + c.args[0]);
  } else {
    std::printf("%" PRIu64 "\n", freed);
  }
  store_client_free(client);
  return status;
}

int Command(int argc, char** argv) {
  CommandLine c = Parse(argc, argv);
  if (!c.error.empty()) return Usage(c.error);
  const std::string cmd = c.name;
  if (cmd == "info") return InfoCommand(c);
  if (cmd == "ls") return LsCommand(c);
  if (cmd == "get") return GetCommand(c);
  if (cmd == "put") return PutCommand(c);
  if (cmd == "rm") return RmCommand(c);
  return EvictCommand(c);
}

bool IsCommand(const char* a) {
  for (const char* name : {"info", "ls", "get", "put", "rm", "evict"}) {
    if (std::strcmp(a, name) == 0) return true;
  }
  return false;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 2 && IsCommand(argv[1])) {
    signal(SIGPIPE, SIG_IGN);  // `store get ID | head` ends with a write error, not a signal
    return Command(argc, argv);
  }
  store::ServerOptions options;
  std::string error;
  if (!store::ParseOptions(argc, argv, &options, &error)) {
    std::fprintf(stderr, "%s\n", error.c_str());
    return 2;
  }
  if (options.help) {
    std::fputs(store::HelpText(), stdout);
    std::fputs(kCommands, stdout);
    return 0;
  }
  if (options.version) {
    std::printf("store %s\n", STORE_VERSION_STRING);
    return 0;
  }
  store::SetLogLevel(options.log_level);
  store::Server server(options);
  return server.Run();
}
