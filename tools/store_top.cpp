// store_top.cpp - store-top: a live, htop-like view of a running store server.
//
// store-top connects as an ordinary client and only reads: every refresh asks for the server's
// stats, one page of the object table (sorted, filtered and cut by the server, so a store with a
// million objects costs no more than a small one) and, when the client table is shown, the
// connected clients. Operations per second come from the deltas of the stats' total_* counters
// between refreshes, over the server's own clock, less the requests store-top itself sent.
//
// When the store goes away the view says so and tries to connect again every interval; a store
// that comes back on the same socket is picked up. The terminal is restored on every way out:
// q, Ctrl-C, SIGTERM, SIGHUP (the handlers only set a flag; the main loop ends curses).
//
// --once and --json print one snapshot without curses (see report.h) and exit.
// Before curses.h, whose macros (clear(), erase(), timeout()...) would rewrite CLI11's methods.
#include "cli.h"

#include <curses.h>
#include <errno.h>
#include <stdarg.h>
#include <langinfo.h>
#include <locale.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <string>
#include <vector>

#include "report.h"
#include "storeclient.h"

namespace {

using namespace store::report;
using Clock = std::chrono::steady_clock;

volatile sig_atomic_t g_stop = 0;

void OnSignal(int) { g_stop = 1; }

// ---- command line --------------------------------------------------------------------------

const char kUsage[] =
    "Usage: store-top [OPTIONS]\n"
    "A live view of a running store: memory, objects by state, operations per second,\n"
    "the largest or most recently used objects, and the connected clients.\n"
    "\n"
    "  --socket PATH        the store's socket (default: $STORE_SOCKET, else\n"
    "                       $XDG_RUNTIME_DIR/store.sock, else /tmp/store-$UID.sock)\n"
    "  --interval SECONDS   time between refreshes, fractions allowed (default: 1)\n"
    "  --sort KEY           initial order of the object table: size, age, access,\n"
    "                       importance, state or id (live default: access; --once: size)\n"
    "  --limit N            objects --once and --json print (default: 20)\n"
    "  --once               print one plain-text snapshot and exit\n"
    "  --json               print one snapshot as a JSON document and exit\n"
    "  --help               show this help and exit\n"
    "  --version            show the version and exit\n"
    "\n"
    "Keys: s size, a age, l last access, i importance, t state, n id (again: reverse),\n"
    "r reverse, / id prefix filter, arrows PgUp PgDn Home End scroll, c clients, ? help, q quit.\n"
    "\n"
    "Exit status: 0 on success, 1 if --once or --json cannot reach the store, 2 on bad usage.\n";

struct Options {
  std::string socket;
  double interval = 1.0;
  bool once = false;
  bool json = false;
  bool help = false;
  bool version = false;
  bool sort_given = false;
  uint32_t sort = STORE_SORT_SIZE;
  uint32_t limit = 20;
};

// Parses argv into *o. Returns false with *error set (one line) on bad usage.
bool ParseArgs(int argc, char** argv, Options* o, std::string* error) {
  CLI::App app("", "store-top");
  store::cli::Configure(app);
  using store::cli::Reject;
  store::cli::Value(app, "--socket", [&](const std::string& v) {
    if (v.empty()) Reject("--socket needs a non-empty path");
    o->socket = v;
  });
  store::cli::Value(app, "--interval", [&](const std::string& v) {
    char* end = nullptr;
    errno = 0;
    double secs = strtod(v.c_str(), &end);
    if (v.empty() || *end != '\0' || errno != 0 || !std::isfinite(secs) || secs < 0.05 ||
        secs > 3600) {
      Reject("--interval must be a number of seconds from 0.05 to 3600, not '" + v + "'");
    }
    o->interval = secs;
  });
  store::cli::Value(app, "--sort", [&](const std::string& v) {
    if (!ParseSort(v, &o->sort)) {
      Reject("--sort must be size, age, access, importance, state or id, not '" + v + "'");
    }
    o->sort_given = true;
  });
  store::cli::Value(app, "--limit", [&](const std::string& v) {
    char* end = nullptr;
    errno = 0;
    unsigned long long n = strtoull(v.c_str(), &end, 10);
    if (v.empty() || v[0] == '-' || *end != '\0' || errno != 0 || n > STORE_MAX_PAGE_OBJECTS) {
      Reject("--limit must be a number from 0 to " + std::to_string(STORE_MAX_PAGE_OBJECTS) +
             ", not '" + v + "'");
    }
    o->limit = static_cast<uint32_t>(n);
  });
  store::cli::Flag(app, "--once", [&] { o->once = true; });
  store::cli::Flag(app, "--json", [&] { o->json = true; });
  store::cli::Flag(app, "-h,--help", [&] { o->help = true; });
  store::cli::Flag(app, "--version", [&] { o->version = true; });

  store::cli::Failure failure;
  if (!store::cli::Parse(app, argc, argv, &failure)) {
    switch (failure.kind) {
      case store::cli::Failure::Kind::kNeedsValue: {
        const std::string& f = failure.option;
        *error = "option " + f + " needs " +
                 (f == "--socket"     ? "a path"
                  : f == "--interval" ? "a number of seconds"
                  : f == "--sort"     ? "a key"
                                      : "a number");
        break;
      }
      case store::cli::Failure::Kind::kTakesNoValue:
        *error = "option " + failure.option + " takes no value";
        break;
      case store::cli::Failure::Kind::kOther:
        *error = failure.message;
        break;
    }
    return false;
  }
  if (auto rest = app.remaining(); !rest.empty()) {
    const std::string& a = rest[0];
    if (a.rfind("-", 0) == 0) {
      *error = "unknown option '" + a.substr(0, a.rfind("--", 0) == 0 ? a.find('=') : a.npos) +
               "' (see store-top --help)";
    } else {
      *error = "unexpected argument '" + a + "' (see store-top --help)";
    }
    return false;
  }
  return true;
}

// The direction a sort key starts in: the most interesting objects first.
bool DefaultDescending(uint32_t sort) {
  switch (sort) {
    case STORE_SORT_SIZE:         // largest
    case STORE_SORT_LAST_ACCESS:  // most recently used
    case STORE_SORT_IMPORTANCE:   // most important
      return true;
    default:  // id, state: natural order; created: oldest first
      return false;
  }
}

// ---- --once and --json ---------------------------------------------------------------------

int RunSnapshot(const Options& o, const std::string& socket) {
  store_connect_options co = STORE_CONNECT_OPTIONS_INIT;
  co.client_name = "store-top";
  store_client* client = nullptr;
  if (store_client_connect(&client, socket.c_str(), &co) != STORE_OK) {
    fprintf(stderr, "store-top: %s\n", ConnectError(socket).c_str());
    return 1;
  }
  PageRequest page;
  page.sort = o.sort;
  page.descending = DefaultDescending(o.sort);
  page.limit = o.limit;
  Snapshot snap;
  int rc = Fetch(client, page, true, &snap);
  if (rc != STORE_OK) {
    fprintf(stderr, "store-top: store at %s: %s\n", socket.c_str(), store_last_error_message());
    store_client_free(client);
    return 1;
  }
  store_client_free(client);
  if (o.json) {
    PrintJson(snap, socket, stdout);
  } else {
    PrintText(snap, socket, stdout);
  }
  return fflush(stdout) == 0 ? 0 : 1;
}

// ---- the live view -------------------------------------------------------------------------

// The steady clock in whole seconds: the key of a history bucket.
int64_t NowSecond() {
  return std::chrono::duration_cast<std::chrono::seconds>(Clock::now().time_since_epoch()).count();
}

// One second of history.
struct Bucket {
  int64_t second = -1;  // steady-clock second this bucket holds, -1 = empty
  bool has_used = false;
  uint64_t used = 0;
  uint64_t capacity = 0;
  bool has_ops = false;
  double ops = 0;
};

constexpr int kHistorySeconds = 60;

// Colour pairs.
enum Pair : short {
  kHeld = 1,
  kEvictable,
  kCreating,
  kDeleted,
  kTitle,
  kAlert,
  kSpark,
  kSpill,
};

class Top {
 public:
  Top(const Options& o, std::string socket) : opt_(o), socket_(std::move(socket)) {
    page_.sort = o.sort_given ? o.sort : STORE_SORT_LAST_ACCESS;
    page_.descending = DefaultDescending(page_.sort);
  }
  ~Top() { store_client_free(client_); }

  int Run();

 private:
  // Connection and data.
  void TryConnect();
  void Refresh(bool force_page);
  void Disconnected(int rc);
  void Record(const Snapshot& s);

  // Input.
  void HandleKey(int ch);
  void HandleFilterKey(int ch);
  void SetSort(uint32_t sort);
  void Scroll(int64_t delta);
  uint64_t MaxOffset() const;

  // Drawing.
  void Draw();
  int DrawHeader(int y);
  int DrawHistory(int y);
  void DrawObjects(int y, int bottom);
  void DrawClients(int y, int bottom);
  void DrawStatus();
  void DrawHelp();
  void Put(int y, int x, const std::string& s, attr_t attr = A_NORMAL);
  std::string Spark(bool used) const;
  double OpsMax() const;
  int TableRows() const;

  const char* Dash() const { return utf8_ ? "\u2014" : "--"; }

  Options opt_;
  std::string socket_;
  bool utf8_ = false;
  bool colors_ = false;

  store_client* client_ = nullptr;
  bool ever_connected_ = false;
  bool have_snapshot_ = false;
  Snapshot snap_;
  std::string error_;       // why we are not connected
  int64_t gone_since_ns_ = 0;

  // Rates: the stats they are measured from and store-top's own requests since then.
  bool base_valid_ = false;
  store_stats base_ = STORE_STATS_INIT;
  int own_since_base_ = 0;
  Rates rates_;
  std::array<Bucket, kHistorySeconds> history_{};

  // View.
  PageRequest page_;
  bool show_clients_ = false;
  bool show_help_ = false;
  bool editing_ = false;
  std::string edit_;
  uint64_t client_offset_ = 0;
  int visible_rows_ = 0;  // object rows the last draw had room for
  std::string flash_;
  Clock::time_point flash_until_{};
  bool need_fetch_ = true;  // the view changed: fetch everything now
  Clock::time_point next_fetch_{};
  // The server sorts its whole table for every page. When that is slow (a million objects)
  // the table is refreshed less often than the rest, so that store-top keeps the server busy
  // for at most a tenth of the time; keys still fetch a new page at once.
  double page_cost_s_ = 0;
  Clock::time_point next_page_{};
  Clock::time_point next_connect_{};
};

int Top::Run() {
  setlocale(LC_ALL, "");
  utf8_ = strcmp(nl_langinfo(CODESET), "UTF-8") == 0;
  SCREEN* screen = newterm(nullptr, stdout, stdin);
  if (screen == nullptr) {
    const char* term = getenv("TERM");
    fprintf(stderr, "store-top: cannot use the terminal (TERM=%s)\n", term ? term : "unset");
    return 1;
  }
  set_escdelay(25);
  cbreak();
  noecho();
  nonl();
  keypad(stdscr, TRUE);
  curs_set(0);
  if (has_colors()) {
    start_color();
    use_default_colors();
    colors_ = true;
    init_pair(kHeld, COLOR_RED, -1);
    init_pair(kEvictable, COLOR_GREEN, -1);
    init_pair(kCreating, COLOR_YELLOW, -1);
    init_pair(kDeleted, COLOR_MAGENTA, -1);
    init_pair(kTitle, COLOR_BLACK, COLOR_CYAN);
    init_pair(kAlert, COLOR_RED, -1);
    init_pair(kSpark, COLOR_CYAN, -1);
    init_pair(kSpill, COLOR_BLUE, -1);
  }

  const auto interval = std::chrono::duration_cast<Clock::duration>(
      std::chrono::duration<double>(opt_.interval));
  next_connect_ = Clock::now();
  while (!g_stop) {
    Clock::time_point now = Clock::now();
    if (client_ == nullptr && now >= next_connect_) {
      TryConnect();
      next_connect_ = now + interval;
      if (client_ != nullptr) need_fetch_ = true;
    }
    if (client_ != nullptr && (need_fetch_ || now >= next_fetch_)) {
      bool periodic = now >= next_fetch_;
      Refresh(need_fetch_);
      need_fetch_ = false;
      if (periodic) next_fetch_ = now + interval;
      if (client_ == nullptr) next_connect_ = now + interval;
    }
    Draw();

    // Wait for a key until the next refresh or connection attempt; at most 100 ms at a time,
    // so a signal's flag is seen soon even if the wait is not interrupted.
    Clock::time_point deadline = client_ != nullptr ? next_fetch_ : next_connect_;
    auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    int ms = static_cast<int>(std::clamp<int64_t>(wait.count(), 0, 100));
    timeout(ms);
    int ch = getch();
    while (ch != ERR && !g_stop) {
      if (ch == KEY_RESIZE) {
        need_fetch_ = true;  // the page holds as many rows as the screen
      } else {
        HandleKey(ch);
      }
      timeout(0);
      ch = getch();
    }
  }
  endwin();
  delscreen(screen);
  return 0;
}

void Top::TryConnect() {
  store_connect_options co = STORE_CONNECT_OPTIONS_INIT;
  co.client_name = "store-top";
  store_client* c = nullptr;
  int rc = store_client_connect(&c, socket_.c_str(), &co);
  if (rc != STORE_OK) {
    error_ = ConnectError(socket_);
    return;
  }
  client_ = c;
  ever_connected_ = true;
  base_valid_ = false;
  rates_ = Rates();
  error_.clear();
}

void Top::Disconnected(int rc) {
  error_ = rc == STORE_ECONN ? "" : store_last_error_message();
  store_client_free(client_);
  client_ = nullptr;
  base_valid_ = false;
  rates_ = Rates();
  have_snapshot_ = false;
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  gone_since_ns_ = static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

int Top::TableRows() const {
  // The rows the last draw had room for; before the first draw, the whole screen. A page a bit
  // longer than the table costs little and keeps it full while the header changes size.
  return std::max(1, visible_rows_ > 0 ? visible_rows_ : LINES);
}

uint64_t Top::MaxOffset() const {
  uint64_t total = have_snapshot_ ? snap_.objects_matching : 0;
  uint64_t rows = static_cast<uint64_t>(TableRows());
  return total > rows ? total - rows : 0;
}

void Top::Refresh(bool force_page) {
  Clock::time_point start = Clock::now();
  bool want_page = !show_clients_ && (force_page || !have_snapshot_ || start >= next_page_);
  PageRequest req = page_;
  req.limit = want_page ? static_cast<uint32_t>(TableRows()) : 0;
  // Deep pages: ask for the mirror page in the opposite order and turn it around. The server
  // sorts only as far as the end of the page it returns, so End on a million objects stays as
  // cheap as Home. Ties are broken by id: the order is total and the mirror exact.
  bool mirrored = false;
  uint64_t total = have_snapshot_ ? snap_.objects_matching : 0;
  if (req.limit > 0 && total > 0 && req.offset > total / 2) {
    uint64_t end = std::min<uint64_t>(req.offset + req.limit, total);
    uint64_t first = std::min(req.offset, end);
    req.descending = !req.descending;
    req.offset = total - end;
    req.limit = static_cast<uint32_t>(end - first);
    mirrored = true;
  }
  Snapshot s;
  int rc = Fetch(client_, req, show_clients_, &s);
  if (rc != STORE_OK) {
    Disconnected(rc);
    return;
  }
  if (mirrored) std::reverse(s.objects.begin(), s.objects.end());
  s.page = page_;
  if (want_page) {
    page_cost_s_ = std::chrono::duration<double>(Clock::now() - start).count();
    next_page_ = start + std::chrono::duration_cast<Clock::duration>(
                             std::chrono::duration<double>(10 * page_cost_s_));
  } else if (!show_clients_) {
    s.objects = snap_.objects;
    s.objects_matching = snap_.objects_matching;
  }
  Record(s);
  snap_ = std::move(s);
  have_snapshot_ = true;
  // The table shrank under the view (objects deleted): move back to its end.
  if (!show_clients_ && page_.offset > 0 && page_.offset >= snap_.objects_matching) {
    page_.offset = MaxOffset();
    need_fetch_ = true;
  }
}

void Top::Record(const Snapshot& s) {
  const store_stats& cur = s.stats;
  int64_t second = NowSecond();
  Bucket& b = history_[static_cast<size_t>(second % kHistorySeconds)];
  if (b.second != second) b = Bucket{second};
  b.has_used = true;
  b.used = std::max(b.used, cur.used_bytes);
  b.capacity = cur.capacity_bytes;

  if (!base_valid_ || base_.server_pid != cur.server_pid || cur.uptime_ns < base_.uptime_ns) {
    base_valid_ = true;
    base_ = cur;
    own_since_base_ = s.requests - 1;
    rates_ = Rates();
    return;
  }
  // Rates over at least half an interval, so refreshes forced by keys do not make them jumpy.
  double elapsed = static_cast<double>(cur.uptime_ns - base_.uptime_ns) / 1e9;
  int own = own_since_base_ + 1;  // this snapshot's stats request
  if (elapsed < std::max(0.05, opt_.interval / 2)) {
    own_since_base_ += s.requests;
    return;
  }
  rates_ = ComputeRates(base_, cur, own);
  base_ = cur;
  own_since_base_ = s.requests - 1;
  if (rates_.valid) {
    b.has_ops = true;
    b.ops = std::max(b.ops, rates_.others);
  }
}

// ---- input ---------------------------------------------------------------------------------

void Top::SetSort(uint32_t sort) {
  if (page_.sort == sort) {
    page_.descending = !page_.descending;
  } else {
    page_.sort = sort;
    page_.descending = DefaultDescending(sort);
  }
  page_.offset = 0;
  show_clients_ = false;
  need_fetch_ = true;
}

void Top::Scroll(int64_t delta) {
  if (show_clients_) {
    int64_t n = static_cast<int64_t>(snap_.clients.size());
    int64_t off = static_cast<int64_t>(client_offset_) + delta;  // |delta| <= 2^62: no overflow
    client_offset_ = static_cast<uint64_t>(std::clamp<int64_t>(off, 0, std::max<int64_t>(0, n - 1)));
    return;
  }
  int64_t off = static_cast<int64_t>(page_.offset) + delta;
  off = std::clamp<int64_t>(off, 0, static_cast<int64_t>(MaxOffset()));
  if (static_cast<uint64_t>(off) != page_.offset) {
    page_.offset = static_cast<uint64_t>(off);
    need_fetch_ = true;
  }
}

void Top::HandleFilterKey(int ch) {
  if (ch == 27) {  // Esc
    editing_ = false;
    return;
  }
  if (ch == '\n' || ch == '\r' || ch == KEY_ENTER) {
    editing_ = false;
    page_.prefix = edit_;
    page_.offset = 0;
    show_clients_ = false;
    need_fetch_ = true;
    return;
  }
  if (ch == KEY_BACKSPACE || ch == 127 || ch == 8) {
    if (!edit_.empty()) edit_.pop_back();
    return;
  }
  if (ch == 21) {  // Ctrl-U
    edit_.clear();
    return;
  }
  if (ch >= 0 && ch < 256 && isxdigit(ch)) {
    if (edit_.size() < 2 * STORE_OBJECT_ID_SIZE) {
      edit_ += static_cast<char>(tolower(ch));
    }
    return;
  }
  flash_ = "ids are hex: 0-9 and a-f";
  flash_until_ = Clock::now() + std::chrono::seconds(2);
}

void Top::HandleKey(int ch) {
  if (editing_) return HandleFilterKey(ch);
  if (show_help_) {
    show_help_ = false;
    if (ch != 'q') return;
  }
  int rows = show_clients_ ? std::max(1, LINES - 12) : TableRows();
  switch (ch) {
    case 'q':
    case 'Q':
      g_stop = 1;
      break;
    case '?':
    case 'h':
    case KEY_F(1):
      show_help_ = true;
      break;
    case 's': SetSort(STORE_SORT_SIZE); break;
    case 'a': SetSort(STORE_SORT_CREATED); break;
    case 'l': SetSort(STORE_SORT_LAST_ACCESS); break;
    case 'i': SetSort(STORE_SORT_IMPORTANCE); break;
    case 't': SetSort(STORE_SORT_STATE); break;
    case 'n': SetSort(STORE_SORT_ID); break;
    case 'r':
      page_.descending = !page_.descending;
      page_.offset = 0;
      need_fetch_ = true;
      break;
    case '/':
      editing_ = true;
      edit_ = page_.prefix;
      break;
    case 27:  // Esc outside the prompt clears the filter
      if (!page_.prefix.empty()) {
        page_.prefix.clear();
        page_.offset = 0;
        need_fetch_ = true;
      }
      break;
    case 'c':
      show_clients_ = !show_clients_;
      client_offset_ = 0;
      need_fetch_ = true;
      break;
    case KEY_UP: case 'k': Scroll(-1); break;
    case KEY_DOWN: case 'j': Scroll(1); break;
    case KEY_PPAGE: Scroll(-rows); break;
    case KEY_NPAGE: case ' ': Scroll(rows); break;
    case KEY_HOME: case 'g': Scroll(-(int64_t{1} << 62)); break;
    case KEY_END: case 'G': Scroll(int64_t{1} << 62); break;
    case 12:  // Ctrl-L
      clearok(stdscr, TRUE);
      break;
    default:
      break;
  }
}

// ---- drawing -------------------------------------------------------------------------------

// Columns s takes on the screen: one per UTF-8 sequence.
int Cols(const std::string& s) {
  int n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

// Prints s at (y, x), cut at the right edge. Counts UTF-8 sequences as one column each, which
// holds for every character store-top prints.
void Top::Put(int y, int x, const std::string& s, attr_t attr) {
  if (y < 0 || y >= LINES || x >= COLS) return;
  int room = COLS - x;
  size_t bytes = 0;
  int cols = 0;
  while (bytes < s.size() && cols < room) {
    bytes++;
    while (bytes < s.size() && (static_cast<unsigned char>(s[bytes]) & 0xC0) == 0x80) bytes++;
    cols++;
  }
  attron(attr);
  mvaddnstr(y, x, s.data(), static_cast<int>(bytes));
  attroff(attr);
}

std::string Fmt(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
std::string Fmt(const char* fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  return buf;
}

std::string Rate(double r) {
  if (r < 9.95) return Fmt("%.1f", r);
  if (r < 99500) return Fmt("%.0f", r);
  if (r < 9.95e6) return Fmt("%.0fk", r / 1e3);
  return Fmt("%.0fM", r / 1e6);
}

// The highest ops/s of the last minute.
double Top::OpsMax() const {
  int64_t now = NowSecond();
  double top = 0;
  for (const Bucket& b : history_) {
    if (b.second > now - kHistorySeconds && b.has_ops) top = std::max(top, b.ops);
  }
  return top;
}

// The last minute, one cell per second, oldest first.
std::string Top::Spark(bool used) const {
  static const char* const kBlocks[] = {"\u2581", "\u2582", "\u2583", "\u2584",
                                        "\u2585", "\u2586", "\u2587", "\u2588"};
  static const char kAscii[] = "_.-~=+*#";
  int64_t now = NowSecond();
  double top = used ? 0 : OpsMax();
  std::string out;
  for (int64_t sec = now - kHistorySeconds + 1; sec <= now; sec++) {
    const Bucket& b = history_[static_cast<size_t>(sec % kHistorySeconds)];
    bool have = b.second == sec && (used ? b.has_used : b.has_ops);
    if (!have) {
      out += ' ';
      continue;
    }
    double v = used ? (b.capacity ? static_cast<double>(b.used) / static_cast<double>(b.capacity)
                                  : 0.0)
                    : (top > 0 ? b.ops / top : 0.0);
    int level = std::clamp(static_cast<int>(v * 7.999), 0, 7);
    if (utf8_) {
      out += kBlocks[level];
    } else {
      out += kAscii[level];
    }
  }
  return out;
}

void Top::Draw() {
  erase();
  // Title bar.
  std::string title = " store-top  " + socket_;
  if (have_snapshot_) {
    title += Fmt("  server pid %d  up %s", snap_.stats.server_pid,
                 Duration(static_cast<int64_t>(snap_.stats.uptime_ns)).c_str());
  }
  title += Fmt("  every %gs", opt_.interval);
  time_t t = time(nullptr);
  struct tm tm;
  localtime_r(&t, &tm);
  char clock[16];
  strftime(clock, sizeof clock, "%H:%M:%S ", &tm);
  attr_t title_attr = colors_ ? COLOR_PAIR(kTitle) : A_REVERSE;
  attron(title_attr);
  mvhline(0, 0, ' ', COLS);
  attroff(title_attr);
  Put(0, 0, title, title_attr);
  if (COLS > static_cast<int>(title.size() + 10)) Put(0, COLS - 9, clock, title_attr);

  if (LINES < 8 || COLS < 40) {
    Put(1, 0, "terminal too small");
    refresh();
    return;
  }

  int y = 1;
  if (client_ == nullptr || !have_snapshot_) {
    attr_t alert = (colors_ ? COLOR_PAIR(kAlert) : A_NORMAL) | A_BOLD;
    std::string msg;
    if (ever_connected_) {
      msg = "store at " + socket_ + " is gone " + Dash() + " retrying every " +
            Fmt("%gs", opt_.interval);
    } else {
      msg = "no store at " + socket_ + " " + Dash() + " retrying every " +
            Fmt("%gs", opt_.interval);
    }
    Put(y++, 1, msg, alert);
    if (!error_.empty()) Put(y++, 1, error_);
    if (ever_connected_ && gone_since_ns_ > 0) {
      timespec ts;
      clock_gettime(CLOCK_REALTIME, &ts);
      int64_t now_ns = static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
      Put(y++, 1, "lost " + Duration(now_ns - gone_since_ns_) + " ago");
    }
    y++;
    DrawHistory(y);
    DrawStatus();
    if (show_help_) DrawHelp();
    refresh();
    return;
  }

  y = DrawHeader(y);
  y = DrawHistory(y);
  int bottom = LINES - 1;  // the status line
  if (show_clients_) {
    DrawClients(y, bottom);
  } else {
    DrawObjects(y, bottom);
  }
  DrawStatus();
  if (show_help_) DrawHelp();
  refresh();
}

int Top::DrawHeader(int y) {
  const store_stats& s = snap_.stats;
  Derived d = Derive(s);

  // Memory bar: held by readers or pins, evictable, being written, being spilled, being
  // restored, deleted but still read.
  std::string label = Fmt(" %s/%s (%.1f%%) ", BytesShort(s.used_bytes).c_str(),
                          BytesShort(s.capacity_bytes).c_str(), 100.0 * d.used_ratio);
  int width = std::max(10, COLS - 7 - static_cast<int>(label.size()));
  Put(y, 1, "Mem[", A_BOLD);
  int x = 5;
  struct Segment {
    uint64_t bytes;
    char ch;
    short pair;
  } segs[] = {{d.held_bytes, '#', kHeld},
              {d.evictable_min, '=', kEvictable},
              {s.created_bytes, '~', kCreating},
              {s.spilling_bytes, '>', kSpill},
              {s.restoring_bytes, '<', kSpill},
              {s.deleted_pending_bytes, 'x', kDeleted}};
  double per_cell = s.capacity_bytes ? static_cast<double>(s.capacity_bytes) / width : 1;
  double acc = 0;
  int drawn = 0;
  for (const Segment& g : segs) {
    acc += static_cast<double>(g.bytes);
    int upto = std::min(width, static_cast<int>(std::lround(acc / per_cell)));
    // Anything non-zero gets at least one cell, if there is room.
    if (g.bytes > 0 && upto <= drawn && drawn < width) upto = drawn + 1;
    if (upto > drawn) {
      attr_t a = colors_ ? COLOR_PAIR(g.pair) : A_NORMAL;
      Put(y, x + drawn, std::string(static_cast<size_t>(upto - drawn), g.ch), a | A_BOLD);
      drawn = upto;
    }
  }
  Put(y, x + width, "]" + label, A_BOLD);
  y++;

  std::string evictable = d.evictable_exact
                              ? BytesShort(d.evictable_min)
                              : ">= " + BytesShort(d.evictable_min) + " (<= " +
                                    BytesShort(d.evictable_max) + ")";
  Put(y++, 1,
      Fmt("free %s  largest free block %s  resident %s  held (read/pinned) %s  evictable %s",
          BytesShort(d.free_bytes).c_str(), BytesShort(s.largest_free_bytes).c_str(),
          BytesShort(s.resident_bytes).c_str(), BytesShort(d.held_bytes).c_str(),
          evictable.c_str()));
  Put(y++, 1,
      Fmt("Objects: %" PRIu64 "  creating %" PRIu64 " (%s)  sealed %" PRIu64 " (%s)  open %" PRIu64
          " (%s)  pinned %" PRIu64 " (%s)  deleted-still-read %" PRIu64 " (%s)",
          s.object_count, s.created_count, BytesShort(s.created_bytes).c_str(), s.sealed_count,
          BytesShort(s.sealed_bytes).c_str(), s.open_count, BytesShort(s.open_bytes).c_str(),
          s.pinned_count, BytesShort(s.pinned_bytes).c_str(), s.deleted_pending_count,
          BytesShort(s.deleted_pending_bytes).c_str()));
  std::string spill;
  if (!s.spill_enabled && d.spill_idle) {
    spill = "Spill: off (the store has no spill directory)";
  } else if (d.spill_idle) {
    spill = "Spill: on, none yet";
  } else {
    spill = Fmt("Spill: spilled %" PRIu64 " (%s)  spilling %" PRIu64 " (%s)  restoring %" PRIu64
                " (%s)  files %" PRIu64 " on disk %s (dead %s)",
                s.spilled_count, BytesShort(s.spilled_bytes).c_str(), s.spilling_count,
                BytesShort(s.spilling_bytes).c_str(), s.restoring_count,
                BytesShort(s.restoring_bytes).c_str(), s.spill_files,
                BytesShort(s.spill_disk_bytes).c_str(), BytesShort(s.spill_dead_bytes).c_str());
    if (rates_.valid) {
      spill += Fmt("  out %s/s  in %s/s",
                   BytesShort(static_cast<uint64_t>(rates_.spilled_bytes)).c_str(),
                   BytesShort(static_cast<uint64_t>(rates_.restored_bytes)).c_str());
    }
    // Compaction, once there was one: the disk it gave back (the line stays short until then).
    if (s.total_compactions > 0) {
      spill += Fmt("  compacted %" PRIu64 " (freed %s)", s.total_compactions,
                   BytesShort(s.total_compact_bytes_freed).c_str());
    }
  }
  if (s.when_full_drop) {
    // A cache: what it dropped to make room, next to what it spills (nothing: no spill dir).
    spill += Fmt("   When full: drop (dropped %" PRIu64 ", %s)", s.total_dropped_objects,
                 BytesShort(s.total_dropped_bytes).c_str());
  }
  Put(y, 1, spill);
  uint64_t failures = s.total_spill_failures + s.total_restore_failures + s.total_compact_failures;
  if (failures > 0 || s.spill_undurable_deletes > 0) {
    std::string failed = Fmt("failed: %" PRIu64 " spills, %" PRIu64 " restores",
                             s.total_spill_failures, s.total_restore_failures);
    if (s.total_compact_failures > 0) {
      failed += Fmt(", %" PRIu64 " compactions", s.total_compact_failures);
    }
    if (s.spill_undurable_deletes > 0) {
      // Deletes whose record could not be written yet: a crash now could bring them back.
      failed += Fmt("; %" PRIu64 " deletes not durable", s.spill_undurable_deletes);
    }
    Put(y, 3 + Cols(spill), failed, (colors_ ? COLOR_PAIR(kAlert) : A_NORMAL) | A_BOLD);
  }
  y++;
  if (!snap_.gpus.empty()) {
    std::string gpu = Fmt("GPU (%s):", GpuBackendName(snap_.gpu_backend));
    for (const auto& g : snap_.gpus) {
      double pct = g.capacity_bytes ? 100.0 * static_cast<double>(g.used_bytes) /
                                          static_cast<double>(g.capacity_bytes)
                                    : 0.0;
      gpu += Fmt("  dev %d %s/%s (%.1f%%) %" PRIu64 " objects", g.device,
                 BytesShort(g.used_bytes).c_str(), BytesShort(g.capacity_bytes).c_str(), pct,
                 g.object_count);
    }
    Put(y++, 1, gpu);
  }
  attr_t wait_attr = (s.waiting_creates > 0 && colors_) ? COLOR_PAIR(kAlert) | A_BOLD : A_NORMAL;
  std::string waiting =
      Fmt("Waiting: %" PRIu64 " gets  %" PRIu64 " creates", s.waiting_gets, s.waiting_creates);
  Put(y, 1, waiting, wait_attr);
  Put(y, 3 + Cols(waiting),
      Fmt(" Clients: %" PRIu64 "   Refused (full): %" PRIu64 "   Bad requests: %" PRIu64,
          s.client_count, s.total_full, s.total_bad_requests));
  y++;
  // The limits on what clients make the store hold: what each watches of its limit, and how
  // often one was hit (refused a request or closed a client), highlighted when any was.
  const uint64_t hits = s.refused_client_waiting + s.refused_waiting_bytes +
                        s.closed_client_backlog + s.closed_backlog + s.closed_partial +
                        s.refused_clients + s.accept_failures + s.refused_gpu_fds +
                        s.refused_objects;
  std::string limits =
      Fmt("Limits: waiting %s/%s  backlog %s/%s  partial %s/%s  clients %" PRIu64 "/%" PRIu64
          "  unsent fds %" PRIu64 "  objects %" PRIu64 "/%" PRIu64,
          BytesShort(s.waiting_bytes).c_str(), BytesShort(s.limit_waiting_bytes).c_str(),
          BytesShort(s.backlog_bytes).c_str(), BytesShort(s.limit_backlog).c_str(),
          BytesShort(s.partial_bytes).c_str(), BytesShort(s.limit_partial_bytes).c_str(),
          s.client_count, s.limit_clients, s.pending_fds, s.object_count, s.limit_objects);
  Put(y, 1, limits);
  if (hits > 0) {
    Put(y, 3 + Cols(limits),
        Fmt("hit: waiting %" PRIu64 "  backlog %" PRIu64 "  partial %" PRIu64 "  clients %" PRIu64
            "  accept %" PRIu64 "  gpu fds %" PRIu64 "  objects %" PRIu64,
            s.refused_client_waiting + s.refused_waiting_bytes,
            s.closed_client_backlog + s.closed_backlog, s.closed_partial, s.refused_clients,
            s.accept_failures, s.refused_gpu_fds, s.refused_objects),
        (colors_ ? COLOR_PAIR(kAlert) : A_NORMAL) | A_BOLD);
  }
  y++;
  if (rates_.valid) {
    Put(y++, 1,
        Fmt("Ops/s: create %s  seal %s  get %s  release %s  delete %s  all requests %s "
            "(not counting this view's)",
            Rate(rates_.creates).c_str(), Rate(rates_.seals).c_str(), Rate(rates_.gets).c_str(),
            Rate(rates_.releases).c_str(), Rate(rates_.deletes).c_str(),
            Rate(rates_.others).c_str()));
  } else {
    Put(y++, 1, "Ops/s: measuring...");
  }
  return y;
}

int Top::DrawHistory(int y) {
  attr_t a = colors_ ? COLOR_PAIR(kSpark) : A_NORMAL;
  std::string used = Spark(true);
  std::string ops = Spark(false);
  double top = OpsMax();
  // Side by side when they fit, else one under the other.
  const int label = 11;  // "Used   60s[" and "Ops/s  60s["
  int width = label + kHistorySeconds + 16;
  Put(y, 1, "Used   60s[");
  Put(y, 1 + label, used, a);
  Put(y, 1 + label + kHistorySeconds, "] " + Fmt("%.1f%%", have_snapshot_ ? 100.0 *
      Derive(snap_.stats).used_ratio : 0.0));
  int x = COLS >= 2 * width + 2 ? width + 2 : -1;
  if (x < 0) {
    y++;
    x = 1;
  }
  Put(y, x, "Ops/s  60s[");
  Put(y, x + label, ops, a);
  Put(y, x + label + kHistorySeconds, Fmt("] max %s", Rate(top).c_str()));
  return y + 1;
}

// The object table: columns as in --once, with a shorter id on narrow screens.
void Top::DrawObjects(int y, int bottom) {
  bool up = !page_.descending;
  const char* arrow = utf8_ ? (up ? "\u25b2" : "\u25bc") : (up ? "^" : "v");
  // The age column runs the other way from the creation time it is sorted by.
  const char* age_arrow = utf8_ ? (up ? "\u25bc" : "\u25b2") : (up ? "v" : "^");
  const char* sort = SortName(page_.sort);
  uint64_t total = snap_.objects_matching;
  uint64_t first = snap_.objects.empty() ? 0 : page_.offset + 1;
  uint64_t last = page_.offset + snap_.objects.size();
  int visible = std::max(0, bottom - (y + 2));
  visible_rows_ = visible;
  if (last > page_.offset + static_cast<uint64_t>(visible)) {
    last = page_.offset + static_cast<uint64_t>(visible);
  }
  std::string where = Fmt("Objects by %s %s %s %" PRIu64 "-%" PRIu64 " of %" PRIu64,
                          sort ? sort : "?", page_.descending ? "descending" : "ascending",
                          Dash(), first, last, total);
  if (!page_.prefix.empty()) where += "  filter: id starts with " + page_.prefix;
  Put(y, 1, where, A_BOLD);
  if (10 * page_cost_s_ > opt_.interval) {
    Put(y, 3 + Cols(where),
        Fmt("(refreshed every %.1fs: the server takes %.0f ms to sort a page)", 10 * page_cost_s_,
            1000 * page_cost_s_),
        A_DIM);
  }
  y++;

  int idw = COLS >= 118 ? 40 : 12;
  auto mark = [&](uint32_t key, const char* name) {
    std::string s = name;
    if (page_.sort == key) s += key == STORE_SORT_CREATED ? age_arrow : arrow;
    return s;
  };
  std::string head = Fmt(" %-*s %9s %7s %-10s %5s %5s %5s %8s %10s %8s", idw,
                         mark(STORE_SORT_ID, "ID").c_str(), mark(STORE_SORT_SIZE, "SIZE").c_str(),
                         "META", mark(STORE_SORT_STATE, "STATE").c_str(),
                         mark(STORE_SORT_IMPORTANCE, "IMP").c_str(), "RDRS", "PINS",
                         mark(STORE_SORT_CREATED, "AGE").c_str(),
                         mark(STORE_SORT_LAST_ACCESS, "ACCESSED").c_str(), "CREATOR");
  // Multi-byte arrows take more bytes than columns: pad the reversed line by columns.
  attron(A_REVERSE);
  mvhline(y, 0, ' ', COLS);
  attroff(A_REVERSE);
  Put(y++, 0, head, A_REVERSE);
  for (const auto& o : snap_.objects) {
    if (y >= bottom) break;
    std::string id = HexId(o.id).substr(0, static_cast<size_t>(idw));
    std::string acc = Duration(snap_.taken_ns - o.last_access_ns) + " ago";
    std::string row = Fmt(" %-*s %9s %7s %-10s %5d %5u %5u %8s %10s %8d", idw, id.c_str(),
                          BytesShort(o.data_size).c_str(), BytesShort(o.metadata_size).c_str(),
                          StateName(o.state), o.importance, o.reader_count, o.pin_count,
                          Duration(snap_.taken_ns - o.create_time_ns).c_str(), acc.c_str(),
                          o.creator_pid);
    attr_t a = A_NORMAL;
    if (colors_) {
      if (o.state == STORE_STATE_CREATED) {
        a = COLOR_PAIR(kCreating);
      } else if (o.state != STORE_STATE_SEALED) {
        a = COLOR_PAIR(kSpill);
      } else if (o.pin_count > 0 || o.reader_count > 0) {
        a = COLOR_PAIR(kHeld);
      }
    }
    Put(y++, 0, row, a);
  }
  if (snap_.objects.empty() && y < bottom) {
    Put(y, 1, page_.prefix.empty() ? "(no objects)" : "(no object id starts with " +
                                                          page_.prefix + ")");
  }
}

void Top::DrawClients(int y, int bottom) {
  Put(y++, 1,
      Fmt("Clients: %zu connected (store-top is marked *)", snap_.clients.size()), A_BOLD);
  std::string head = Fmt(" %5s %-24s %8s %8s %8s %8s %6s %8s %10s %10s", "ID", "NAME", "PID",
                         "CREATED", "CREATING", "READERS", "PINS", "HELD", "REQUESTS",
                         "CONNECTED");
  attron(A_REVERSE);
  mvhline(y, 0, ' ', COLS);
  attroff(A_REVERSE);
  Put(y++, 0, head, A_REVERSE);
  for (size_t i = client_offset_; i < snap_.clients.size() && y < bottom; i++) {
    const store_client_info& c = snap_.clients[i];
    std::string name;
    for (size_t k = 0; k < sizeof c.name && c.name[k]; k++) {
      unsigned char ch = static_cast<unsigned char>(c.name[k]);
      name += (ch >= 0x20 && ch < 0x7f) ? static_cast<char>(ch) : '?';
    }
    if (c.is_self) name = "* " + name;
    if (name.size() > 24) name.resize(24);
    Put(y++, 0,
        Fmt(" %5" PRIu64 " %-24s %8d %8" PRIu64 " %8" PRIu64 " %8" PRIu64 " %6" PRIu64
            " %8s %10" PRIu64 " %10s",
            c.client_id, name.c_str(), c.pid, c.objects_created, c.creating_count,
            c.readers_held, c.pins_held, BytesShort(c.bytes_held).c_str(), c.requests,
            Duration(snap_.taken_ns - c.connect_time_ns).c_str()));
  }
}

void Top::DrawStatus() {
  int y = LINES - 1;
  if (editing_) {
    std::string prompt = "Filter by id prefix: ";
    Put(y, 0, prompt, A_BOLD);
    Put(y, static_cast<int>(prompt.size()), edit_ + "_");
    bool flash = !flash_.empty() && Clock::now() < flash_until_;
    Put(y, static_cast<int>(prompt.size() + edit_.size()) + 3,
        flash ? flash_ : "(hex digits; Enter applies, empty clears, Esc cancels)",
        flash ? A_BOLD : A_NORMAL);
    return;
  }
  if (!flash_.empty() && Clock::now() < flash_until_) {
    Put(y, 0, flash_, A_BOLD);
    return;
  }
  std::string keys =
      "s size  a age  l access  i importance  t state  n id  r reverse  / filter  "
      "c clients  ? help  q quit";
  Put(y, 0, keys, A_DIM);
}

void Top::DrawHelp() {
  static const char* const kLines[] = {
      "store-top keys",
      "",
      "  s  sort by size            a  sort by age (creation time)",
      "  l  sort by last access     i  sort by importance",
      "  t  sort by state           n  sort by id",
      "  the same key again, or r, reverses the order",
      "",
      "  /      filter by id prefix (hex; Enter applies, Esc cancels)",
      "  Esc    clear the filter",
      "  Up Down PgUp PgDn Home End  scroll (also j k space g G)",
      "  c      show or hide the client table",
      "  Ctrl-L redraw       ? h  this help       q  quit",
      "",
      "Mem bar: # held by readers or pins  = evictable  ~ being written",
      "         > being spilled  < being restored  x deleted but still read",
      "Evictable: sealed, in memory, not read or pinned (what may be",
      "spilled); shown as bounds by servers that do not count it.",
      "Ops/s leave out this view's own requests.",
      "",
      "Press any key to close.",
  };
  int n = static_cast<int>(sizeof kLines / sizeof kLines[0]);
  int w = 0;
  for (const char* l : kLines) w = std::max(w, static_cast<int>(strlen(l)));
  w += 4;
  int h = n + 2;
  int y0 = std::max(0, (LINES - h) / 2);
  int x0 = std::max(0, (COLS - w) / 2);
  for (int i = 0; i < h && y0 + i < LINES; i++) {
    mvhline(y0 + i, x0, ' ', std::min(w, COLS - x0));
  }
  for (int i = 0; i < n; i++) Put(y0 + 1 + i, x0 + 2, kLines[i], i == 0 ? A_BOLD : A_NORMAL);
  // A plain ASCII frame: it survives any terminal and any capture.
  for (int i = 0; i < h; i++) {
    Put(y0 + i, x0, i == 0 || i == h - 1 ? "+" : "|");
    Put(y0 + i, x0 + w - 1, i == 0 || i == h - 1 ? "+" : "|");
  }
  if (w > 2) {
    Put(y0, x0 + 1, std::string(static_cast<size_t>(w - 2), '-'));
    Put(y0 + h - 1, x0 + 1, std::string(static_cast<size_t>(w - 2), '-'));
  }
}

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  std::string error;
  if (!ParseArgs(argc, argv, &opt, &error)) {
    fprintf(stderr, "store-top: %s\n", error.c_str());
    return 2;
  }
  if (opt.help) {
    fputs(kUsage, stdout);
    return 0;
  }
  if (opt.version) {
    printf("store-top %s\n", STORE_VERSION_STRING);
    return 0;
  }
  std::string socket = opt.socket.empty() ? DefaultSocketPath() : opt.socket;
  if (opt.once || opt.json) return RunSnapshot(opt, socket);

  if (!isatty(STDIN_FILENO) || !isatty(STDOUT_FILENO)) {
    fprintf(stderr, "store-top: the live view needs a terminal; use --once or --json\n");
    return 2;
  }
  // Installed before curses starts, so curses leaves them in place.
  struct sigaction sa {};
  sa.sa_handler = OnSignal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGHUP, &sa, nullptr);
  Top top(opt, socket);
  return top.Run();
}
