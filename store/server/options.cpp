#include "server/options.h"

#include "cli.h"
#include "framing.h"

#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>

namespace store {

std::string DefaultSocketPath() { return proto::DefaultSocketPath(); }

bool ParseSize(const std::string& text, uint64_t* out) {
  if (text.empty() || text[0] == '-' || text[0] == '+') return false;
  const char* s = text.c_str();
  char* end = nullptr;
  errno = 0;
  bool fractional = text.find('.') != std::string::npos;
  long double value;
  if (fractional) {
    value = std::strtold(s, &end);
  } else {
    unsigned long long v = std::strtoull(s, &end, 10);
    if (errno == ERANGE) return false;
    value = static_cast<long double>(v);
  }
  if (end == s || errno == ERANGE) return false;
  std::string suffix(end);
  for (auto& ch : suffix) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
  long double mult;
  if (suffix.empty() || suffix == "B") {
    mult = 1;
    if (fractional) return false;
  } else if (suffix == "K" || suffix == "KIB") {
    mult = 1024.0L;
  } else if (suffix == "M" || suffix == "MIB") {
    mult = 1024.0L * 1024;
  } else if (suffix == "G" || suffix == "GIB") {
    mult = 1024.0L * 1024 * 1024;
  } else if (suffix == "T" || suffix == "TIB") {
    mult = 1024.0L * 1024 * 1024 * 1024;
  } else if (suffix == "KB") {
    mult = 1e3L;
  } else if (suffix == "MB") {
    mult = 1e6L;
  } else if (suffix == "GB") {
    mult = 1e9L;
  } else if (suffix == "TB") {
    mult = 1e12L;
  } else {
    return false;
  }
  long double bytes = value * mult;
  if (!(bytes >= 1) || bytes > 18446744073709551615.0L) return false;
  *out = static_cast<uint64_t>(std::floor(bytes));
  if (!fractional && mult == 1) *out = static_cast<uint64_t>(value);
  return *out > 0;
}

const char* HelpText() {
  return "Usage: store [OPTIONS]\n"
         "A node-local shared-memory object store server.\n"
         "\n"
         "  --socket PATH        Unix socket to listen on (default: $STORE_SOCKET, else\n"
         "                       $XDG_RUNTIME_DIR/store.sock, else /tmp/store-$UID.sock)\n"
         "  --memory SIZE        shared memory for objects (default: 1G)\n"
         "  --spill-dir DIR      spill objects to files in DIR when memory runs short\n"
         "                       (repeatable: directories are used in turn)\n"
         "  --when-full MODE     what a create that does not fit does: refuse (default: it\n"
         "                       waits for room as its timeout says, then fails), or drop:\n"
         "                       delete the least valuable sealed objects that nobody reads,\n"
         "                       pins or leases (lowest importance, then least recently used)\n"
         "                       until it fits, as a cache does; not with --spill-dir\n"
         "  --spill-high F       start spilling when use passes F of the memory (default 0.8)\n"
         "  --spill-low F        spill down to F of the memory (default 0.6)\n"
         "  --spill-file-max-size SIZE     largest spill file (default 256M)\n"
         "  --spill-file-max-objects N     most objects per spill file (default 2000)\n"
         "  --disk-threshold F   skip a spill directory whose disk is fuller than F (default 0.95)\n"
         "  --spill-compact F    rewrite a spill file without its dead records once more than F\n"
         "                       of its bytes are dead (default 0.5; 1 = never)\n"
         "  --restore-readahead SIZE  when objects are read back from a spill file in the\n"
         "                       order they were written, keep up to SIZE of the ones that\n"
         "                       follow restored ahead of the reader, into free memory\n"
         "                       below --spill-high only (default 128M; 0 = never)\n"
         "  --recover            serve the objects that a previous store left in the spill\n"
         "                       directories (without it they are removed at start)\n"
         "  --log-level LEVEL    error, warn, info or debug (default: info)\n"
         "  --metrics-file PATH  write the store's figures to PATH in the Prometheus text\n"
         "                       format every interval (replaced atomically)\n"
         "  --metrics-interval SECONDS  how often to write it (default: 1)\n"
         "  --no-prefault        do not touch the memory at start (by default all of it is\n"
         "                       touched once, so first writes run at full speed)\n"
         "  --prefault           touch all of the memory at start (the default)\n"
         "  --hugepages          back the memory with huge pages, and warn if the system has\n"
         "                       none to give (by default they are used when available)\n"
         "  --no-hugepages       back the memory with normal pages only\n"
         "  --gpu-memory SIZE    device memory per GPU for GPU objects (default 0: none)\n"
         "  --gpu-devices LIST   the GPUs to use, e.g. 0,2 (default: every one that can share\n"
         "                       memory with other processes)\n"
         "  --gpu-chunk-size SIZE  device memory is taken in chunks of SIZE (default: 256M, or\n"
         "                       --gpu-memory if smaller); the largest GPU object is one chunk\n"
         "  --gpu-backend NAME   cuda (default), or memfd-standin: host memory standing in for\n"
         "                       device memory, to test GPU object handling without a GPU\n"
         "\n"
         "Limits on what one client can make the server hold (a request over a limit gets\n"
         "STORE_ELIMIT, whose message names the flag; `store info` shows each limit, the total\n"
         "it watches and how often it was hit; each hit is logged, at most once a second):\n"
         "  --max-client-waiting N    gets, creates and evicts one client may have waiting\n"
         "                       (default 1024)\n"
         "  --max-waiting-bytes SIZE  bytes waiting requests may hold in all: a waiting create's\n"
         "                       copy of its metadata and inline data, a waiting get's id list\n"
         "                       (about 100 bytes per id); one client may hold a quarter of it\n"
         "                       (default 256M, at least 8M)\n"
         "  --max-client-backlog SIZE  replies queued to a client that does not read them; past\n"
         "                       it the client is disconnected (default 128M, at least 16M)\n"
         "  --max-backlog SIZE   the same over all clients; past it the client with the largest\n"
         "                       backlog is disconnected (default 1G)\n"
         "  --max-partial-bytes SIZE  input buffers holding requests not yet complete (up to\n"
         "                       4 MiB each), over all clients; past it the client holding the\n"
         "                       most is disconnected (default 256M, at least 8M)\n"
         "  --max-clients N      connections served at once; more are refused with\n"
         "                       STORE_ELIMIT (default: what the descriptor limit allows, two\n"
         "                       per client after a reserve for spill files and GPU chunks, at\n"
         "                       most 16384; never more than 32768)\n"
         "  --max-client-gpu-fds N  GPU chunk replies (each carrying a descriptor) one client may\n"
         "                       have unsent, not reading them; more get STORE_ELIMIT (default 64)\n"
         "  --max-objects N      objects the store may hold, in memory and spilled, whatever\n"
         "                       their size (the server keeps about 200 bytes of its own memory\n"
         "                       for each); a create past it gets STORE_ELIMIT, or with\n"
         "                       --when-full drop drops one (default: one per 2 KiB of the\n"
         "                       machine's memory, at least 1048576)\n"
         "  --help               show this help and exit\n"
         "  --version            show the version and exit\n"
         "\n"
         "SIZE is a number of bytes, optionally with a suffix: K, M, G, T (and KiB, MiB, GiB, TiB)\n"
         "are 1024-based; KB, MB, GB, TB are 1000-based. Example: --memory 4G, --memory 1.5GiB.\n"
         "\n"
         "The server stops cleanly on SIGINT or SIGTERM and removes its socket.\n";
}

namespace {

// The value of a count flag: 1 to most, or the flag's one-line failure.
uint32_t Count(const std::string& flag, const std::string& v, unsigned long most) {
  char* end = nullptr;
  errno = 0;
  unsigned long n = std::strtoul(v.c_str(), &end, 10);
  if (v.empty() || v[0] == '-' || *end != '\0' || errno == ERANGE || n == 0 || n > most) {
    cli::Reject("store: invalid " + flag + " '" + v + "' (1 to " + std::to_string(most) + ")");
  }
  return static_cast<uint32_t>(n);
}

// The value of a fraction flag (0 < f <= 1).
double Fraction(const std::string& flag, const std::string& v) {
  char* end = nullptr;
  double f = std::strtod(v.c_str(), &end);
  if (v.empty() || *end != '\0' || !(f > 0) || f > 1) {
    cli::Reject("store: invalid " + flag + " '" + v + "' (a fraction, 0 < f <= 1)");
  }
  return f;
}

// A path that must not be empty.
std::string Path(const std::string& flag, const std::string& v) {
  if (v.empty()) cli::Reject("store: " + flag + " needs a non-empty path");
  return v;
}

}  // namespace

bool ParseOptions(int argc, char** argv, ServerOptions* out, std::string* error) {
  ServerOptions o;
  CLI::App app("A node-local shared-memory object store server.", "store");
  cli::Configure(app);
  auto flag = [&](const char* names, std::function<void()> fn) { cli::Flag(app, names, fn); };
  auto value = [&](const char* names, std::function<void(const std::string&)> fn) {
    cli::Value(app, names, fn);
  };
  // A size flag whose value must be at least least bytes; say why, if it is not, in why.
  auto size = [&](const char* name, uint64_t* dst, uint64_t least = 1, const char* why = "",
                  const char* examples = "") {
    value(name, [=](const std::string& v) {
      if (!ParseSize(v, dst)) {
        cli::Reject(std::string("store: invalid size for ") + name + ": '" + v + "'" + examples);
      }
      if (*dst < least) {
        cli::Reject(std::string("store: ") + name + " must be at least " + why + ", got '" + v +
                    "'");
      }
    });
  };

  flag("-h,--help", [&] { o.help = true; });
  flag("-V,--version", [&] { o.version = true; });
  flag("--prefault", [&] { o.prefault = true; });
  flag("--no-prefault", [&] { o.prefault = false; });
  flag("--hugepages", [&] { o.hugepages = HugePages::kAsked; });
  flag("--no-hugepages", [&] { o.hugepages = HugePages::kNever; });
  flag("--recover", [&] { o.recover = true; });
  value("--socket", [&](const std::string& v) {
    o.socket_path = Path("--socket", v);
    if (v.size() >= 108) {
      cli::Reject("store: socket path is too long (" + std::to_string(v.size()) +
                  " bytes; Unix sockets allow 107): " + v);
    }
  });
  size("--memory", &o.memory, 1ull << 20, "1M", " (examples: 1073741824, 512M, 4G)");
  value("--spill-dir", [&](const std::string& v) { o.spill_dirs.push_back(Path("--spill-dir", v)); });
  value("--when-full", [&](const std::string& v) {
    if (v == "refuse") {
      o.when_full = WhenFull::kRefuse;
    } else if (v == "drop") {
      o.when_full = WhenFull::kDrop;
    } else {
      cli::Reject("store: invalid --when-full '" + v + "' (refuse or drop)");
    }
  });
  value("--spill-high", [&](const std::string& v) { o.spill_high = Fraction("--spill-high", v); });
  value("--spill-low", [&](const std::string& v) { o.spill_low = Fraction("--spill-low", v); });
  value("--disk-threshold",
        [&](const std::string& v) { o.disk_threshold = Fraction("--disk-threshold", v); });
  value("--spill-compact",
        [&](const std::string& v) { o.spill_compact = Fraction("--spill-compact", v); });
  size("--spill-file-max-size", &o.spill_file_max_size);
  value("--restore-readahead", [&](const std::string& v) {
    if (v == "0") {
      o.restore_readahead = 0;
    } else if (!ParseSize(v, &o.restore_readahead)) {
      cli::Reject("store: invalid size for --restore-readahead: '" + v + "'");
    }
  });
  value("--spill-file-max-objects", [&](const std::string& v) {
    char* end = nullptr;
    unsigned long n = std::strtoul(v.c_str(), &end, 10);
    if (v.empty() || *end != '\0' || n == 0 || n > 1000000) {
      cli::Reject("store: invalid --spill-file-max-objects '" + v + "' (1 to 1000000)");
    }
    o.spill_file_max_objects = static_cast<uint32_t>(n);
  });
  value("--metrics-file", [&](const std::string& v) { o.metrics_file = Path("--metrics-file", v); });
  value("--metrics-interval", [&](const std::string& v) {
    char* end = nullptr;
    double secs = std::strtod(v.c_str(), &end);
    if (v.empty() || *end != '\0' || !(secs >= 0.05) || secs > 86400) {
      cli::Reject("store: invalid --metrics-interval '" + v + "' (seconds, 0.05 to 86400)");
    }
    o.metrics_interval_ms = static_cast<uint64_t>(secs * 1000);
  });
  value("--log-level", [&](const std::string& v) {
    if (!ParseLogLevel(v.c_str(), &o.log_level)) {
      cli::Reject("store: invalid --log-level '" + v + "' (use error, warn, info or debug)");
    }
  });
  size("--gpu-memory", &o.gpu_memory);
  size("--gpu-chunk-size", &o.gpu_chunk_size);
  value("--gpu-devices", [&](const std::string& v) {
    o.gpu_devices.clear();
    size_t start = 0;
    while (start <= v.size()) {
      size_t comma = v.find(',', start);
      std::string item =
          v.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
      char* end = nullptr;
      long d = std::strtol(item.c_str(), &end, 10);
      if (item.empty() || *end != '\0' || d < 0 || d > 1023) {
        cli::Reject("store: invalid --gpu-devices '" + v + "' (device numbers, e.g. 0,1)");
      }
      o.gpu_devices.push_back(static_cast<int>(d));
      if (comma == std::string::npos) break;
      start = comma + 1;
    }
  });
  // A quarter of it (one client's share) holds a waiting create with 1 MiB of metadata.
  size("--max-waiting-bytes", &o.max_waiting_bytes, 8ull << 20,
       "8M (a client's quarter then holds a waiting create of the largest metadata)",
       " (examples: 64M, 1G)");
  // A backlog limit must hold the largest reply (a page of objects, under 10 MiB), or a client
  // that reads would be dropped for one large page.
  size("--max-client-backlog", &o.max_client_backlog, 16ull << 20, "16M (the largest reply)",
       " (examples: 64M, 1G)");
  size("--max-backlog", &o.max_backlog, 16ull << 20, "16M (the largest reply)",
       " (examples: 64M, 1G)");
  // Two requests of the largest size (4 MiB) may be on their way at once.
  size("--max-partial-bytes", &o.max_partial_bytes, 8ull << 20,
       "8M (two of the largest requests)", " (examples: 64M, 1G)");
  value("--max-client-waiting", [&](const std::string& v) {
    o.max_client_waiting = Count("--max-client-waiting", v, 1000000);
  });
  value("--max-clients",
        [&](const std::string& v) { o.max_clients = Count("--max-clients", v, kMaxClientsCap); });
  value("--max-client-gpu-fds", [&](const std::string& v) {
    o.max_client_gpu_fds = Count("--max-client-gpu-fds", v, 1000000);
  });
  value("--max-objects",
        [&](const std::string& v) { o.max_objects = Count("--max-objects", v, kMaxObjectsCap); });
  value("--gpu-backend", [&](const std::string& v) {
    if (v != "cuda" && v != "memfd-standin") {
      cli::Reject("store: invalid --gpu-backend '" + v + "' (cuda or memfd-standin)");
    }
    o.gpu_backend = v;
  });

  cli::Failure failure;
  if (!cli::Parse(app, argc, argv, &failure)) {
    switch (failure.kind) {
      case cli::Failure::Kind::kNeedsValue:
        *error = "store: option " + failure.option + " needs a value (see --help)";
        break;
      case cli::Failure::Kind::kTakesNoValue:
        *error = "store: option " + failure.option + " takes no value (see --help)";
        break;
      case cli::Failure::Kind::kOther:
        *error = failure.message;
        break;
    }
    return false;
  }
  // The server takes no arguments besides its options.
  if (auto rest = app.remaining(); !rest.empty()) {
    *error = "store: unknown option '" + rest[0] + "' (see --help)";
    return false;
  }
  // A store that spills never deletes what it was given; one that drops has no disk to spill to.
  if (o.when_full == WhenFull::kDrop && !o.spill_dirs.empty()) {
    *error = "store: --when-full drop cannot be used with --spill-dir (a store that spills keeps "
             "every object; drop makes it a cache without a disk)";
    return false;
  }
  if (o.spill_low >= o.spill_high) {
    *error = "store: --spill-low must be below --spill-high";
    return false;
  }
  if (o.socket_path.empty()) o.socket_path = DefaultSocketPath();
  *out = o;
  return true;
}

}  // namespace store
