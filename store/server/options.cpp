#include "server/options.h"

#include "framing.h"

#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>

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
         "                       order they were written, restore up to SIZE of the ones\n"
         "                       that follow before they are asked for, into free memory\n"
         "                       below --spill-high only (default 32M; 0 = never)\n"
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
         "  --max-client-waiting N    gets and creates one client may have waiting (default 1024)\n"
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
         "  --help               show this help and exit\n"
         "  --version            show the version and exit\n"
         "\n"
         "SIZE is a number of bytes, optionally with a suffix: K, M, G, T (and KiB, MiB, GiB, TiB)\n"
         "are 1024-based; KB, MB, GB, TB are 1000-based. Example: --memory 4G, --memory 1.5GiB.\n"
         "\n"
         "The server stops cleanly on SIGINT or SIGTERM and removes its socket.\n";
}

bool ParseOptions(int argc, char** argv, ServerOptions* out, std::string* error) {
  ServerOptions o;
  auto value_of = [&](int& i, const std::string& flag, std::string* v) -> bool {
    std::string a = argv[i];
    size_t eq = a.find('=');
    if (eq != std::string::npos) {
      *v = a.substr(eq + 1);
      return true;
    }
    if (i + 1 >= argc) {
      *error = "store: option " + flag + " needs a value (see --help)";
      return false;
    }
    *v = argv[++i];
    return true;
  };
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    std::string flag = a.substr(0, a.find('='));
    std::string v;
    bool has_value = a.find('=') != std::string::npos;
    if (has_value && (flag == "--help" || flag == "-h" || flag == "--version" || flag == "-V" ||
                      flag == "--prefault" || flag == "--no-prefault" || flag == "--hugepages" ||
                      flag == "--no-hugepages" || flag == "--recover")) {
      *error = "store: option " + flag + " takes no value (see --help)";
      return false;
    }
    if (flag == "--help" || flag == "-h") {
      o.help = true;
    } else if (flag == "--version" || flag == "-V") {
      o.version = true;
    } else if (flag == "--prefault") {
      o.prefault = true;
    } else if (flag == "--no-prefault") {
      o.prefault = false;
    } else if (flag == "--hugepages") {
      o.hugepages = HugePages::kAsked;
    } else if (flag == "--no-hugepages") {
      o.hugepages = HugePages::kNever;
    } else if (flag == "--socket") {
      if (!value_of(i, flag, &v)) return false;
      if (v.empty()) {
        *error = "store: --socket needs a non-empty path";
        return false;
      }
      if (v.size() >= 108) {
        *error = "store: socket path is too long (" + std::to_string(v.size()) +
                 " bytes; Unix sockets allow 107): " + v;
        return false;
      }
      o.socket_path = v;
    } else if (flag == "--memory") {
      if (!value_of(i, flag, &v)) return false;
      if (!ParseSize(v, &o.memory)) {
        *error = "store: invalid size for --memory: '" + v + "' (examples: 1073741824, 512M, 4G)";
        return false;
      }
      if (o.memory < (1ull << 20)) {
        *error = "store: --memory must be at least 1M, got '" + v + "'";
        return false;
      }
    } else if (flag == "--spill-dir") {
      if (!value_of(i, flag, &v)) return false;
      if (v.empty()) {
        *error = "store: --spill-dir needs a non-empty path";
        return false;
      }
      o.spill_dirs.push_back(v);
    } else if (flag == "--recover") {
      o.recover = true;
    } else if (flag == "--when-full") {
      if (!value_of(i, flag, &v)) return false;
      if (v == "refuse") {
        o.when_full = WhenFull::kRefuse;
      } else if (v == "drop") {
        o.when_full = WhenFull::kDrop;
      } else {
        *error = "store: invalid --when-full '" + v + "' (refuse or drop)";
        return false;
      }
    } else if (flag == "--spill-high" || flag == "--spill-low" || flag == "--disk-threshold" ||
               flag == "--spill-compact") {
      if (!value_of(i, flag, &v)) return false;
      char* end = nullptr;
      double f = std::strtod(v.c_str(), &end);
      if (v.empty() || *end != '\0' || !(f > 0) || f > 1) {
        *error = "store: invalid " + flag + " '" + v + "' (a fraction, 0 < f <= 1)";
        return false;
      }
      (flag == "--spill-high"      ? o.spill_high
       : flag == "--spill-low"     ? o.spill_low
       : flag == "--spill-compact" ? o.spill_compact
                                   : o.disk_threshold) = f;
    } else if (flag == "--spill-file-max-size") {
      if (!value_of(i, flag, &v)) return false;
      if (!ParseSize(v, &o.spill_file_max_size)) {
        *error = "store: invalid size for --spill-file-max-size: '" + v + "'";
        return false;
      }
    } else if (flag == "--restore-readahead") {
      if (!value_of(i, flag, &v)) return false;
      if (v == "0") {
        o.restore_readahead = 0;
      } else if (!ParseSize(v, &o.restore_readahead)) {
        *error = "store: invalid size for --restore-readahead: '" + v + "'";
        return false;
      }
    } else if (flag == "--spill-file-max-objects") {
      if (!value_of(i, flag, &v)) return false;
      char* end = nullptr;
      unsigned long n = std::strtoul(v.c_str(), &end, 10);
      if (v.empty() || *end != '\0' || n == 0 || n > 1000000) {
        *error = "store: invalid --spill-file-max-objects '" + v + "' (1 to 1000000)";
        return false;
      }
      o.spill_file_max_objects = static_cast<uint32_t>(n);
    } else if (flag == "--metrics-file") {
      if (!value_of(i, flag, &v)) return false;
      if (v.empty()) {
        *error = "store: --metrics-file needs a non-empty path";
        return false;
      }
      o.metrics_file = v;
    } else if (flag == "--metrics-interval") {
      if (!value_of(i, flag, &v)) return false;
      char* end = nullptr;
      double secs = std::strtod(v.c_str(), &end);
      if (v.empty() || *end != '\0' || !(secs >= 0.05) || secs > 86400) {
        *error = "store: invalid --metrics-interval '" + v + "' (seconds, 0.05 to 86400)";
        return false;
      }
      o.metrics_interval_ms = static_cast<uint64_t>(secs * 1000);
    } else if (flag == "--log-level") {
      if (!value_of(i, flag, &v)) return false;
      if (!ParseLogLevel(v.c_str(), &o.log_level)) {
        *error = "store: invalid --log-level '" + v + "' (use error, warn, info or debug)";
        return false;
      }
    } else if (flag == "--gpu-memory" || flag == "--gpu-chunk-size") {
      if (!value_of(i, flag, &v)) return false;
      if (!ParseSize(v, flag == "--gpu-memory" ? &o.gpu_memory : &o.gpu_chunk_size)) {
        *error = "store: invalid size for " + flag + ": '" + v + "'";
        return false;
      }
    } else if (flag == "--gpu-devices") {
      if (!value_of(i, flag, &v)) return false;
      o.gpu_devices.clear();
      size_t start = 0;
      while (start <= v.size()) {
        size_t comma = v.find(',', start);
        std::string item = v.substr(start, comma == std::string::npos ? std::string::npos
                                                                        : comma - start);
        char* end = nullptr;
        long d = std::strtol(item.c_str(), &end, 10);
        if (item.empty() || *end != '\0' || d < 0 || d > 1023) {
          *error = "store: invalid --gpu-devices '" + v + "' (device numbers, e.g. 0,1)";
          return false;
        }
        o.gpu_devices.push_back(static_cast<int>(d));
        if (comma == std::string::npos) break;
        start = comma + 1;
      }
    } else if (flag == "--max-waiting-bytes" || flag == "--max-client-backlog" ||
               flag == "--max-backlog" || flag == "--max-partial-bytes") {
      if (!value_of(i, flag, &v)) return false;
      uint64_t* dst = flag == "--max-waiting-bytes"    ? &o.max_waiting_bytes
                      : flag == "--max-client-backlog" ? &o.max_client_backlog
                      : flag == "--max-backlog"        ? &o.max_backlog
                                                       : &o.max_partial_bytes;
      if (!ParseSize(v, dst)) {
        *error = "store: invalid size for " + flag + ": '" + v + "' (examples: 64M, 1G)";
        return false;
      }
      // A backlog limit must hold the largest reply (a page of objects, under 10 MiB), or a
      // client that reads would be dropped for one large page.
      if ((flag == "--max-client-backlog" || flag == "--max-backlog") && *dst < (16ull << 20)) {
        *error = "store: " + flag + " must be at least 16M (the largest reply), got '" + v + "'";
        return false;
      }
      // Two requests of the largest size (4 MiB) may be on their way at once.
      if (flag == "--max-partial-bytes" && *dst < (8ull << 20)) {
        *error = "store: --max-partial-bytes must be at least 8M (two of the largest requests), "
                 "got '" + v + "'";
        return false;
      }
      // A quarter of it (one client's share) holds a waiting create with 1 MiB of metadata.
      if (flag == "--max-waiting-bytes" && *dst < (8ull << 20)) {
        *error = "store: --max-waiting-bytes must be at least 8M (a client's quarter then holds "
                 "a waiting create of the largest metadata), got '" + v + "'";
        return false;
      }
    } else if (flag == "--max-client-waiting" || flag == "--max-clients" ||
               flag == "--max-client-gpu-fds") {
      if (!value_of(i, flag, &v)) return false;
      const unsigned long most = flag == "--max-clients" ? kMaxClientsCap : 1000000;
      char* end = nullptr;
      errno = 0;
      unsigned long n = std::strtoul(v.c_str(), &end, 10);
      if (v.empty() || v[0] == '-' || *end != '\0' || errno == ERANGE || n == 0 || n > most) {
        *error = "store: invalid " + flag + " '" + v + "' (1 to " + std::to_string(most) + ")";
        return false;
      }
      (flag == "--max-client-waiting" ? o.max_client_waiting
       : flag == "--max-clients"      ? o.max_clients
                                      : o.max_client_gpu_fds) = static_cast<uint32_t>(n);
    } else if (flag == "--gpu-backend") {
      if (!value_of(i, flag, &v)) return false;
      if (v != "cuda" && v != "memfd-standin") {
        *error = "store: invalid --gpu-backend '" + v + "' (cuda or memfd-standin)";
        return false;
      }
      o.gpu_backend = v;
    } else {
      *error = "store: unknown option '" + a + "' (see --help)";
      return false;
    }
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
