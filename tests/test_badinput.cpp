// test_badinput.cpp - a hostile client against a real store server.
//
// A raw Unix-socket client (plain socket/connect/send/recv, helpers below) sends malformed,
// out-of-bounds and misbehaving messages. After every attack the test shows that
//   (a) the server process is still alive,
//   (b) a libstoreclient client connected before the attack still works (put, open, read back,
//       delete) and a new client can connect, and
//   (c) where the protocol says so, the attacker got an error reply (a size-prefixed Message
//       with a STORE_E* status and a message) and, for protocol errors, its connection was
//       closed; for semantic errors the connection stays open.
#include <doctest.h>

#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "framing.h"
#include "harness.h"
#include "storeclient.h"

namespace {

namespace proto = store::proto;
using proto::Body;
using Bytes = std::vector<uint8_t>;
using Ms = std::chrono::milliseconds;

// The usual reply wait. Tests that a flood does not hold the loop up rely on it: the release
// build is their sharp check. Under the sanitizers (-O0, and every access checked) the server
// is several times slower, and linear work that takes 1-2 s there takes 3-4: the wait is three
// times as long, still far below what the quadratic costs these tests guard against took.
#ifdef __SANITIZE_ADDRESS__
constexpr Ms kReplyTimeout{15000};
#else
constexpr Ms kReplyTimeout{5000};
#endif

// ------------------------------------------------------------------------------------------
// Building messages.

proto::ObjectId IdOf(const std::string& key) {
  store_object_id id;
  store_object_id_from_string(key.data(), key.size(), &id);
  return proto::ToProto(id.bytes);
}

store_object_id CIdOf(const std::string& key) {
  store_object_id id;
  store_object_id_from_string(key.data(), key.size(), &id);
  return id;
}

Bytes Finish(flatbuffers::FlatBufferBuilder& b, uint64_t seq, Body type,
             flatbuffers::Offset<void> body, const char* identifier = proto::MessageIdentifier()) {
  auto m = proto::CreateMessage(b, seq, 0, 0, 0, type, body);
  b.FinishSizePrefixed(m, identifier);
  return Bytes(b.GetBufferPointer(), b.GetBufferPointer() + b.GetSize());
}

Bytes ConnectMsg(uint64_t seq, uint32_t version = proto::kProtocolVersion,
                 const std::string& name = "attacker",
                 const char* identifier = proto::MessageIdentifier()) {
  flatbuffers::FlatBufferBuilder b(256);
  auto n = b.CreateString(name);
  auto body = proto::CreateConnectRequest(b, version, n, static_cast<int32_t>(getpid()));
  return Finish(b, seq, Body::ConnectRequest, body.Union(), identifier);
}

Bytes StatsMsg(uint64_t seq, const char* identifier = proto::MessageIdentifier()) {
  flatbuffers::FlatBufferBuilder b(64);
  return Finish(b, seq, Body::StatsRequest, proto::CreateStatsRequest(b).Union(), identifier);
}

Bytes NoneMsg(uint64_t seq) {
  flatbuffers::FlatBufferBuilder b(64);
  return Finish(b, seq, Body::NONE, 0);
}

struct CreateArgs {
  std::string key = "object";
  uint64_t data_size = 16;
  std::optional<Bytes> metadata;
  int32_t device = -1;
  int64_t timeout_ms = 0;
  std::optional<Bytes> data;
};

Bytes CreateMsg(uint64_t seq, const CreateArgs& a) {
  flatbuffers::FlatBufferBuilder b(1024);
  flatbuffers::Offset<flatbuffers::Vector<uint8_t>> meta = 0, data = 0;
  if (a.metadata) meta = b.CreateVector(*a.metadata);
  if (a.data) data = b.CreateVector(*a.data);
  proto::ObjectId id = IdOf(a.key);
  auto body =
      proto::CreateCreateRequest(b, &id, a.data_size, meta, 0, a.device, a.timeout_ms, data);
  return Finish(b, seq, Body::CreateRequest, body.Union());
}

Bytes GpuChunkMsg(uint64_t seq, int32_t device, uint32_t chunk) {
  flatbuffers::FlatBufferBuilder b(128);
  auto body = proto::CreateGpuChunkRequest(b, device, chunk);
  return Finish(b, seq, Body::GpuChunkRequest, body.Union());
}

Bytes SealMsg(uint64_t seq, const std::string& key, uint64_t uid) {
  flatbuffers::FlatBufferBuilder b(128);
  proto::ObjectId id = IdOf(key);
  return Finish(b, seq, Body::SealRequest, proto::CreateSealRequest(b, &id, uid).Union());
}

Bytes AbortMsg(uint64_t seq, const std::string& key, uint64_t uid) {
  flatbuffers::FlatBufferBuilder b(128);
  proto::ObjectId id = IdOf(key);
  return Finish(b, seq, Body::AbortRequest, proto::CreateAbortRequest(b, &id, uid).Union());
}

Bytes GetMsg(uint64_t seq, const std::vector<proto::ObjectId>& ids, int64_t timeout_ms = 0) {
  flatbuffers::FlatBufferBuilder b(1024 + ids.size() * 20);
  auto v = b.CreateVectorOfStructs(ids);
  return Finish(b, seq, Body::GetRequest, proto::CreateGetRequest(b, v, timeout_ms).Union());
}

Bytes ContainsMsg(uint64_t seq, const std::vector<proto::ObjectId>& ids) {
  flatbuffers::FlatBufferBuilder b(1024 + ids.size() * 20);
  auto v = b.CreateVectorOfStructs(ids);
  return Finish(b, seq, Body::ContainsRequest, proto::CreateContainsRequest(b, v).Union());
}

Bytes DeleteMsg(uint64_t seq, const std::vector<proto::ObjectId>& ids) {
  flatbuffers::FlatBufferBuilder b(1024 + ids.size() * 20);
  auto v = b.CreateVectorOfStructs(ids);
  return Finish(b, seq, Body::DeleteRequest, proto::CreateDeleteRequest(b, v).Union());
}

Bytes ReleaseMsg(uint64_t seq, const std::vector<uint64_t>& uids) {
  flatbuffers::FlatBufferBuilder b(256);
  auto v = b.CreateVector(uids);
  return Finish(b, seq, Body::ReleaseRequest, proto::CreateReleaseRequest(b, v).Union());
}

// A message whose body is a reply table (or any other type the server must not accept).
Bytes ReplyTypeMsg(uint64_t seq, Body type) {
  flatbuffers::FlatBufferBuilder b(512);
  flatbuffers::Offset<void> body;
  switch (type) {
    case Body::ConnectReply: {
      auto v = b.CreateString("9.9.9");
      auto region = proto::CreateRegion(b, 1, 1 << 20);
      body = proto::CreateConnectReply(b, proto::kProtocolVersion, v, 1, region, 1 << 20).Union();
      break;
    }
    case Body::CreateReply: body = proto::CreateCreateReply(b, 1, 1, 0, 16, 0).Union(); break;
    case Body::SealReply: body = proto::CreateSealReply(b).Union(); break;
    case Body::AbortReply: body = proto::CreateAbortReply(b).Union(); break;
    case Body::GetReply: {
      std::vector<proto::ObjectLocation> locs(2);
      body = proto::CreateGetReply(b, b.CreateVectorOfStructs(locs)).Union();
      break;
    }
    case Body::ContainsReply: {
      std::vector<uint8_t> present = {1, 0};
      body = proto::CreateContainsReply(b, b.CreateVector(present)).Union();
      break;
    }
    case Body::DeleteReply: {
      std::vector<int32_t> st = {0};
      body = proto::CreateDeleteReply(b, b.CreateVector(st)).Union();
      break;
    }
    case Body::InfoReply: {
      proto::ObjectInfo info{};
      body = proto::CreateInfoReply(b, &info).Union();
      break;
    }
    case Body::ListReply: {
      std::vector<proto::ObjectInfo> infos(1);
      body = proto::CreateListReply(b, b.CreateVectorOfStructs(infos)).Union();
      break;
    }
    case Body::PinReply: body = proto::CreatePinReply(b).Union(); break;
    case Body::UnpinReply: body = proto::CreateUnpinReply(b).Union(); break;
    case Body::StatsReply: body = proto::CreateStatsReply(b, 1, 2, 3).Union(); break;
    default: FAIL("no builder for body type " << static_cast<int>(type));
  }
  return Finish(b, seq, type, body);
}

// A copy of the size-prefixed message m with its Message.body_type byte set to type. The body
// offset is left as it is, so the verifier (which skips unknown union types) still accepts it.
Bytes WithBodyType(Bytes m, uint8_t type) {
  auto* msg = proto::GetSizePrefixedMessage(m.data());
  const uint8_t* p = reinterpret_cast<const flatbuffers::Table*>(msg)->GetAddressOf(
      proto::Message::VT_BODY_TYPE);
  REQUIRE(p != nullptr);
  m[static_cast<size_t>(p - m.data())] = type;
  return m;
}

Bytes Prefix(uint32_t len) {
  Bytes b(4);
  uint32_t le = flatbuffers::EndianScalar(len);
  std::memcpy(b.data(), &le, 4);
  return b;
}

Bytes Concat(std::initializer_list<Bytes> parts) {
  Bytes out;
  for (const Bytes& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

// ------------------------------------------------------------------------------------------
// The raw client.

// One message from the server: the whole size-prefixed buffer, 8-aligned, verified.
struct Reply {
  std::vector<uint64_t> storage;
  size_t size = 0;
  const proto::Message* msg = nullptr;
  size_t fds = 0;  // descriptors that came with the bytes of this message (closed on arrival)
};

enum class Got { kMessage, kEof, kReset, kTimeout, kError, kBadMessage };

std::string Name(Got g) {
  switch (g) {
    case Got::kMessage: return "a message";
    case Got::kEof: return "end of stream";
    case Got::kReset: return "connection reset";
    case Got::kTimeout: return "nothing (timeout)";
    case Got::kError: return "a socket error";
    case Got::kBadMessage: return "bytes that are not a valid message";
  }
  return "?";
}

class RawConn {
 public:
  explicit RawConn(const std::string& path) {
    fd_ = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0) return;
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
    if (connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
      close(fd_);
      fd_ = -1;
    }
  }
  ~RawConn() { Close(); }
  RawConn(const RawConn&) = delete;
  RawConn& operator=(const RawConn&) = delete;

  bool ok() const { return fd_ >= 0; }
  int fd() const { return fd_; }
  void Close() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }
  void ShutdownWrite() { shutdown(fd_, SHUT_WR); }

  // Sends every byte (optionally with descriptors attached to the first byte).
  bool Send(const uint8_t* p, size_t n, const std::vector<int>& fds = {}) {
    bool fds_pending = !fds.empty();
    while (n > 0 || fds_pending) {
      pollfd pfd{fd_, POLLOUT, 0};
      int pr = poll(&pfd, 1, static_cast<int>(kReplyTimeout.count()));
      if (pr <= 0) return false;
      iovec iov{const_cast<uint8_t*>(p), n};
      msghdr mh{};
      mh.msg_iov = &iov;
      mh.msg_iovlen = 1;
      std::vector<char> control;
      if (fds_pending) {
        control.resize(CMSG_SPACE(sizeof(int) * fds.size()));
        mh.msg_control = control.data();
        mh.msg_controllen = control.size();
        cmsghdr* cm = CMSG_FIRSTHDR(&mh);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
        std::memcpy(CMSG_DATA(cm), fds.data(), sizeof(int) * fds.size());
      }
      ssize_t w = sendmsg(fd_, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (w < 0) {
        if (errno == EAGAIN || errno == EINTR) continue;
        return false;
      }
      fds_pending = false;
      p += w;
      n -= static_cast<size_t>(w);
    }
    return true;
  }
  bool Send(const Bytes& b, const std::vector<int>& fds = {}) {
    return Send(b.data(), b.size(), fds);
  }

  // Waits for the next whole message, the end of the stream, or the timeout.
  Got Next(Reply* out, Ms timeout = kReplyTimeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      if (in_.size() >= 4) {
        uint32_t l;
        std::memcpy(&l, in_.data(), 4);
        l = flatbuffers::EndianScalar(l);
        if (l < 8 || l > proto::kMaxReplyBytes) return Got::kBadMessage;
        if (in_.size() >= 4 + size_t{l}) {
          out->size = 4 + size_t{l};
          out->storage.assign((out->size + 7) / 8, 0);
          std::memcpy(out->storage.data(), in_.data(), out->size);
          in_.erase(in_.begin(), in_.begin() + static_cast<ptrdiff_t>(out->size));
          auto at = fds_at_.find(consumed_);
          out->fds = at != fds_at_.end() ? at->second : 0;
          if (at != fds_at_.end()) fds_at_.erase(at);
          consumed_ += out->size;
          out->msg = proto::VerifyMessage(reinterpret_cast<const uint8_t*>(out->storage.data()),
                                          out->size);
          return out->msg ? Got::kMessage : Got::kBadMessage;
        }
      }
      auto left = std::chrono::duration_cast<Ms>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return Got::kTimeout;
      pollfd pfd{fd_, POLLIN, 0};
      int pr = poll(&pfd, 1, static_cast<int>(left.count()));
      if (pr < 0 && errno != EINTR) return Got::kError;
      if (pr <= 0) continue;
      uint8_t buf[65536];
      alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 16)];
      iovec iov{buf, sizeof buf};
      msghdr mh{};
      mh.msg_iov = &iov;
      mh.msg_iovlen = 1;
      mh.msg_control = control;
      mh.msg_controllen = sizeof control;
      ssize_t n = recvmsg(fd_, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
      if (n < 0) {
        if (errno == EAGAIN || errno == EINTR) continue;
        return errno == ECONNRESET ? Got::kReset : Got::kError;
      }
      size_t fds = 0;
      for (cmsghdr* cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
        if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) continue;
        size_t count = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < count; i++) {
          int fd;
          std::memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof fd);
          close(fd);
          fds++;
        }
      }
      if (n == 0) return in_.empty() ? Got::kEof : Got::kBadMessage;
      const size_t old_size = in_.size();
      in_.insert(in_.end(), buf, buf + n);
      if (fds > 0) {
        // Descriptors arrive with the bytes of the send that carried them, and a read stops
        // right after them: the server sends a reply's descriptor with that reply's first
        // bytes, so they belong to the last message that starts within this read (the bytes
        // before it may finish earlier messages). in_ starts at a message's start.
        size_t pos = 0, start = 0;
        while (pos < in_.size()) {
          if (pos >= old_size) start = pos;
          if (pos + 4 > in_.size()) break;
          uint32_t l;
          std::memcpy(&l, in_.data() + pos, 4);
          pos += 4 + size_t{flatbuffers::EndianScalar(l)};
        }
        fds_at_[consumed_ + start] += fds;
      }
    }
  }

  // Reads and verifies messages until the server ends the stream; returns how it ended.
  Got Drain(size_t* messages, Ms timeout = kReplyTimeout) {
    *messages = 0;
    auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      auto left = std::chrono::duration_cast<Ms>(deadline - std::chrono::steady_clock::now());
      Reply r;
      Got g = Next(&r, std::max(left, Ms{0}));
      if (g != Got::kMessage) return g;
      ++*messages;
    }
  }

 private:
  int fd_ = -1;
  Bytes in_;
  uint64_t consumed_ = 0;  // stream offset of in_[0], a message's start
  // Descriptors received, by the stream offset of the message they came with.
  std::map<uint64_t, size_t> fds_at_;
};

// The next message must be an error reply with this status (and seq, if given), a message and
// no body. Returns the error text ("" if the reply was not as expected). A message that cannot
// be parsed has no seq the server could echo: its error reply carries seq 0.
std::string ExpectError(RawConn& c, std::optional<uint64_t> seq, int status) {
  Reply r;
  Got g = c.Next(&r);
  CHECK_MESSAGE(g == Got::kMessage, "expected an error reply, got " << Name(g));
  if (g != Got::kMessage) return "";
  CHECK(r.msg->status() == status);
  if (seq) CHECK(r.msg->seq() == *seq);
  CHECK(r.msg->body_type() == Body::NONE);
  CHECK(r.msg->error() != nullptr);
  if (!r.msg->error()) return "";
  CHECK(r.msg->error()->size() > 0);
  return r.msg->error()->str();
}

// The server must close the connection now: recv returns 0 with nothing more to read.
void ExpectClosed(RawConn& c) {
  Reply r;
  Got g = c.Next(&r);
  CHECK_MESSAGE(g == Got::kEof, "expected the server to close the connection, got " << Name(g));
}

// A protocol error: an STORE_EPROTO reply, then the connection is closed.
std::string ExpectProtocolError(RawConn& c, std::optional<uint64_t> seq) {
  std::string e = ExpectError(c, seq, STORE_EPROTO);
  ExpectClosed(c);
  return e;
}

// The next message must be a successful reply of this type and seq.
bool ExpectReply(RawConn& c, uint64_t seq, Body type, Reply* out) {
  Got g = c.Next(out);
  CHECK_MESSAGE(g == Got::kMessage, "expected a reply, got " << Name(g));
  if (g != Got::kMessage) return false;
  CHECK_MESSAGE(out->msg->status() == 0,
                "error reply " << out->msg->status() << ": "
                               << (out->msg->error() ? out->msg->error()->str() : ""));
  CHECK(out->msg->seq() == seq);
  CHECK(out->msg->body_type() == type);
  return out->msg->status() == 0 && out->msg->seq() == seq && out->msg->body_type() == type;
}

// Connect handshake on a raw connection; returns the server's capacity (0 on failure).
uint64_t Handshake(RawConn& c, uint64_t seq = 1) {
  REQUIRE(c.ok());
  REQUIRE(c.Send(ConnectMsg(seq)));
  Reply r;
  if (!ExpectReply(c, seq, Body::ConnectReply, &r)) return 0;
  CHECK(r.fds == 1);
  CHECK(r.msg->body_as_ConnectReply()->protocol_version() == proto::kProtocolVersion);
  return r.msg->body_as_ConnectReply()->capacity();
}

// Sends a StatsRequest and waits for its reply: the connection is open and served.
std::optional<uint64_t> RawObjectCount(RawConn& c, uint64_t seq) {
  if (!c.Send(StatsMsg(seq))) {
    FAIL_CHECK("cannot send a stats request");
    return std::nullopt;
  }
  Reply r;
  if (!ExpectReply(c, seq, Body::StatsReply, &r)) return std::nullopt;
  return r.msg->body_as_StatsReply()->object_count();
}

// ------------------------------------------------------------------------------------------
// The server's side.

size_t OpenFds(pid_t pid) {
  size_t n = 0;
  std::error_code ec;
  for (auto it = std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
    n++;
  }
  return n;
}

// Resident set of the process in KiB (VmRSS), 0 if unknown.
uint64_t RssKib(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoull(line.substr(6));
  }
  return 0;
}

// Whether the server's resident set measures its heap. Not under AddressSanitizer (the test is
// built with it exactly when the server is): freed memory waits in its quarantine (256 MiB) and
// every allocation carries redzones, so a bounded heap still shows a large RSS. The limits
// themselves are checked through the server's counters either way.
#ifdef __SANITIZE_ADDRESS__
constexpr bool kRssIsHeap = false;
#else
constexpr bool kRssIsHeap = true;
#endif

// A store with a well-behaved client connected before any attack.
struct Attacked {
  test::TestStore store;
  store_client* good = nullptr;
  unsigned checks = 0;

  explicit Attacked(const std::string& memory = "64M", std::vector<std::string> extra = {})
      : store(memory, std::move(extra)) {
    REQUIRE(store.started());
    store_connect_options o = STORE_CONNECT_OPTIONS_INIT;
    o.client_name = "good";
    REQUIRE(store_client_connect(&good, store.socket().c_str(), &o) == STORE_OK);
    // One round trip more: the server has finished sending the connect reply (and closed its
    // copy of the region descriptor it passed), so descriptor counts taken now are stable.
    Stats();
  }
  ~Attacked() { store_client_free(good); }
  Attacked(const Attacked&) = delete;
  Attacked& operator=(const Attacked&) = delete;

  store_stats Stats() {
    store_stats st = STORE_STATS_INIT;
    CHECK(store_stats_get(good, &st) == STORE_OK);
    return st;
  }
  uint64_t Clients() { return Stats().client_count; }
  size_t ServerFds() { return OpenFds(store.pid()); }

  // (a) alive, (b) the earlier client still works end to end and a new client can connect.
  void CheckServes() {
    REQUIRE_MESSAGE(store.Alive(), "the server died; its log:\n" << store.Log());
    std::string key = "health-check-" + std::to_string(++checks);
    store_object_id id = CIdOf(key);
    std::string payload = "payload of " + key;
    REQUIRE(store_put(good, &id, payload.data(), payload.size(), nullptr) == STORE_OK);
    store_reader* r = nullptr;
    REQUIRE(store_open_reader(good, &r, &id, 0) == STORE_OK);
    std::string back(payload.size(), '\0');
    size_t n = 0;
    CHECK(store_reader_read(r, back.data(), back.size(), &n) == STORE_OK);
    CHECK(n == payload.size());
    CHECK(back == payload);
    store_reader_close(r);
    CHECK(store_delete(good, &id) == STORE_OK);

    store_client* fresh = nullptr;
    REQUIRE(store_client_connect(&fresh, store.socket().c_str(), nullptr) == STORE_OK);
    store_stats st = STORE_STATS_INIT;
    CHECK(store_stats_get(fresh, &st) == STORE_OK);
    CHECK(st.server_pid == store.pid());
    store_client_free(fresh);
  }

  // Every attacker is gone: only the good client remains and no descriptor is left over.
  void CheckBaseline(size_t fds) {
    CHECK(test::WaitFor([&] { return Clients() == 1; }));
    CHECK(test::WaitFor([&] { return ServerFds() == fds; }));
    CHECK(ServerFds() == fds);
  }
};

}  // namespace

// ------------------------------------------------------------------------------------------
// Framing.

TEST_CASE("a length prefix above kMaxRequestBytes is refused before anything is allocated") {
  Attacked s;
  const size_t fds = s.ServerFds();
  const uint64_t rss_before = RssKib(s.store.pid());
  for (uint32_t len : {0xFFFFFFFFu, proto::kMaxRequestBytes + 1, 0x80000000u}) {
    for (bool handshake : {false, true}) {
      INFO("length prefix " << len << std::string(handshake ? " after" : " before") << " the handshake");
      RawConn c(s.store.socket());
      REQUIRE(c.ok());
      if (handshake) Handshake(c);
      // The prefix and a few bytes of a body that never comes in full.
      REQUIRE(c.Send(Concat({Prefix(len), Bytes(64, 0xAB)})));
      ExpectProtocolError(c, 0);
      s.CheckServes();
    }
  }
  // Nothing close to the announced sizes was ever taken.
  const uint64_t rss_after = RssKib(s.store.pid());
  CHECK(rss_after < rss_before + 32 * 1024);
  s.CheckBaseline(fds);
}

TEST_CASE("a message of exactly kMaxRequestBytes passes the length check") {
  Attacked s;
  RawConn c(s.store.socket());
  Handshake(c);
  // A contains request with far too many ids, exactly kMaxRequestBytes long after its prefix.
  // Its Message has seq 0 and no 8-byte field, so its length need only be a multiple of 4; an
  // (ignored) error string tunes it. The framing accepts it, the server refuses it as a bad
  // request (EINVAL), and the connection stays open.
  const size_t want = 4 + size_t{proto::kMaxRequestBytes};
  const std::vector<proto::ObjectId> ids(209000, IdOf("many"));
  auto build = [&](size_t pad) {
    flatbuffers::FlatBufferBuilder b(want + 1024);
    auto v = b.CreateVectorOfStructs(ids);
    auto body = proto::CreateContainsRequest(b, v).Union();
    auto err = b.CreateString(std::string(pad, 'p'));
    b.FinishSizePrefixed(proto::CreateMessage(b, 0, 0, err, 0, Body::ContainsRequest, body),
                         proto::MessageIdentifier());
    return Bytes(b.GetBufferPointer(), b.GetBufferPointer() + b.GetSize());
  };
  const size_t base_size = build(0).size();
  REQUIRE(base_size < want);
  Bytes m;
  for (size_t pad = want - base_size - 8; pad <= want - base_size + 8; pad++) {
    m = build(pad);
    if (m.size() == want) break;
  }
  REQUIRE(m.size() == want);
  REQUIRE(proto::VerifyMessage(m.data(), m.size()) != nullptr);
  REQUIRE(c.Send(m));
  ExpectError(c, 0, STORE_EINVAL);
  CHECK(RawObjectCount(c, 3).has_value());
  s.CheckServes();
}

TEST_CASE("a length prefix smaller than 8 is a protocol error") {
  Attacked s;
  const size_t fds = s.ServerFds();
  for (uint32_t len : {0u, 1u, 4u, 7u}) {
    for (bool handshake : {false, true}) {
      INFO("length prefix " << len << std::string(handshake ? " after" : " before") << " the handshake");
      RawConn c(s.store.socket());
      REQUIRE(c.ok());
      if (handshake) Handshake(c);
      REQUIRE(c.Send(Concat({Prefix(len), Bytes(len, 0x5A)})));
      ExpectProtocolError(c, 0);
      s.CheckServes();
    }
  }
  s.CheckBaseline(fds);
}

TEST_CASE("a truncated message followed by a close is dropped") {
  Attacked s;
  const size_t fds = s.ServerFds();
  const Bytes connect = ConnectMsg(1);
  const Bytes stats = StatsMsg(2);
  SUBCASE("a prefix announcing more than ever comes") {
    RawConn c(s.store.socket());
    REQUIRE(c.Send(Concat({Prefix(200), Bytes(100, 0x11)})));
    c.Close();
  }
  SUBCASE("the first half of a connect request") {
    RawConn c(s.store.socket());
    REQUIRE(c.Send(connect.data(), connect.size() / 2));
    c.Close();
  }
  SUBCASE("all of a connect request but its last byte") {
    RawConn c(s.store.socket());
    REQUIRE(c.Send(connect.data(), connect.size() - 1));
    c.Close();
  }
  SUBCASE("half of a stats request after the handshake") {
    RawConn c(s.store.socket());
    Handshake(c);
    REQUIRE(c.Send(stats.data(), stats.size() / 2));
    c.Close();
  }
  SUBCASE("a truncated message, then the client only shuts down its sending side") {
    RawConn c(s.store.socket());
    Handshake(c);
    REQUIRE(c.Send(stats.data(), stats.size() - 3));
    c.ShutdownWrite();
    // Nothing is owed for an incomplete request: the server just closes.
    size_t n = 0;
    CHECK(c.Drain(&n) == Got::kEof);
    CHECK(n == 0);
  }
  s.CheckBaseline(fds);
  s.CheckServes();
}

TEST_CASE("random garbage with a valid small length prefix is refused, connection by connection") {
  Attacked s;
  const size_t fds = s.ServerFds();
  std::mt19937 rng(20240611);
  for (int i = 0; i < 200; i++) {
    INFO("iteration " << i);
    const bool handshake = i % 2 == 1;
    std::uniform_int_distribution<uint32_t> len_dist(8, 600);
    uint32_t len = len_dist(rng);
    Bytes body(len);
    for (auto& b : body) b = static_cast<uint8_t>(rng());
    RawConn c(s.store.socket());
    REQUIRE(c.ok());
    if (handshake) Handshake(c);
    REQUIRE(c.Send(Concat({Prefix(len), body})));
    ExpectProtocolError(c, 0);
    REQUIRE_MESSAGE(s.store.Alive(), s.store.Log());
    if (i % 50 == 49) s.CheckServes();
  }
  s.CheckBaseline(fds);
  s.CheckServes();
}

TEST_CASE("random byte streams: every reply is a valid message and the server survives") {
  Attacked s;
  const size_t fds = s.ServerFds();
  std::mt19937 rng(7);
  for (int i = 0; i < 100; i++) {
    INFO("iteration " << i);
    std::uniform_int_distribution<size_t> len_dist(1, 2000);
    Bytes junk(len_dist(rng));
    for (auto& b : junk) b = static_cast<uint8_t>(rng());
    RawConn c(s.store.socket());
    REQUIRE(c.ok());
    if (i % 2 == 1) Handshake(c);
    REQUIRE(c.Send(junk));
    c.ShutdownWrite();
    size_t n = 0;
    Got end = c.Drain(&n);
    CHECK_MESSAGE((end == Got::kEof || end == Got::kReset), "stream ended with " << Name(end));
    CHECK(n <= 1);
    REQUIRE_MESSAGE(s.store.Alive(), s.store.Log());
  }
  s.CheckBaseline(fds);
  s.CheckServes();
}

TEST_CASE("messages split into single bytes or packed together at odd offsets are served") {
  Attacked s;
  RawConn c(s.store.socket());
  REQUIRE(c.ok());
  // The handshake one byte per send.
  Bytes connect = ConnectMsg(1);
  for (uint8_t b : connect) REQUIRE(c.Send(&b, 1));
  Reply r;
  CHECK(ExpectReply(c, 1, Body::ConnectReply, &r));
  // A contains request with seq 0 has no 8-byte field, so its length can be 4 more than a
  // multiple of 8: the messages after it start at offsets that are not 8-aligned.
  Bytes spacer;
  for (size_t n = 1; n <= 8 && spacer.empty(); n++) {
    Bytes m = ContainsMsg(0, std::vector<proto::ObjectId>(n, IdOf("spacer")));
    if (m.size() % 8 == 4) spacer = m;
  }
  REQUIRE(!spacer.empty());
  // 50 stats requests, each after a spacer, all in one send.
  Bytes batch;
  for (uint64_t seq = 10; seq < 60; seq++) {
    Bytes m = StatsMsg(seq);
    batch.insert(batch.end(), spacer.begin(), spacer.end());
    batch.insert(batch.end(), m.begin(), m.end());
  }
  REQUIRE(c.Send(batch));
  for (uint64_t seq = 10; seq < 60; seq++) {
    CHECK(ExpectReply(c, 0, Body::ContainsReply, &r));
    CHECK(ExpectReply(c, seq, Body::StatsReply, &r));
  }
  s.CheckServes();
}

TEST_CASE("replies to requests sent together all arrive before the error that closes them") {
  Attacked s;
  RawConn c(s.store.socket());
  REQUIRE(c.ok());
  Handshake(c);
  // 40 requests, then a message that fails verification, then one that must not be served, all
  // in one send: the server holds the replies of a read back and writes them together.
  Bytes batch;
  for (uint64_t seq = 10; seq < 50; seq++) {
    Bytes m = seq % 2 ? StatsMsg(seq) : ContainsMsg(seq, {IdOf("together")});
    batch.insert(batch.end(), m.begin(), m.end());
  }
  Bytes garbage = Concat({Prefix(16), Bytes(16, 0xff)});
  batch.insert(batch.end(), garbage.begin(), garbage.end());
  Bytes after = StatsMsg(99);
  batch.insert(batch.end(), after.begin(), after.end());
  REQUIRE(c.Send(batch));
  Reply r;
  for (uint64_t seq = 10; seq < 50; seq++) {
    CHECK(ExpectReply(c, seq, seq % 2 ? Body::StatsReply : Body::ContainsReply, &r));
  }
  ExpectProtocolError(c, 0);
  s.CheckServes();
}

TEST_CASE("create replies sent together each carry their own object's fields") {
  Attacked s;
  RawConn c(s.store.socket());
  REQUIRE(c.ok());
  Handshake(c);
  // Inline creates of several sizes, one with metadata, and one create left for a writer.
  struct Sent {
    std::string key;
    uint64_t data_size;
    uint64_t metadata_size;
    bool inline_data;
  };
  const std::vector<Sent> sent = {{"fields-a", 64, 0, true},
                                  {"fields-b", 64, 0, true},
                                  {"fields-c", 1000, 24, true},
                                  {"fields-d", 4096, 8, false},
                                  {"fields-e", 8, 0, true}};
  Bytes batch;
  for (size_t i = 0; i < sent.size(); i++) {
    CreateArgs a;
    a.key = sent[i].key;
    a.data_size = sent[i].data_size;
    if (sent[i].metadata_size) a.metadata = Bytes(sent[i].metadata_size, 3);
    if (sent[i].inline_data) a.data = Bytes(sent[i].data_size, static_cast<uint8_t>(i));
    Bytes m = CreateMsg(10 + i, a);
    batch.insert(batch.end(), m.begin(), m.end());
  }
  REQUIRE(c.Send(batch));
  std::vector<uint64_t> uids, offsets;
  for (size_t i = 0; i < sent.size(); i++) {
    Reply r;
    REQUIRE(ExpectReply(c, 10 + i, Body::CreateReply, &r));
    const proto::CreateReply* cr = r.msg->body_as_CreateReply();
    CHECK(cr->data_size() == sent[i].data_size);
    CHECK(cr->metadata_size() == sent[i].metadata_size);
    CHECK(cr->device() == -1);
    CHECK(cr->uid() != 0);
    uids.push_back(cr->uid());
    offsets.push_back(cr->offset());
  }
  std::sort(uids.begin(), uids.end());
  CHECK(std::adjacent_find(uids.begin(), uids.end()) == uids.end());
  std::sort(offsets.begin(), offsets.end());
  CHECK(std::adjacent_find(offsets.begin(), offsets.end()) == offsets.end());
  std::vector<proto::ObjectId> ids;
  for (const Sent& x : sent) ids.push_back(IdOf(x.key));
  REQUIRE(c.Send(DeleteMsg(99, ids)));
  Reply r;
  CHECK(ExpectReply(c, 99, Body::DeleteReply, &r));
  c.Close();
  s.CheckServes();
}

// ------------------------------------------------------------------------------------------
// Verification.

TEST_CASE("a valid flatbuffer with the wrong file identifier is refused") {
  Attacked s;
  const size_t fds = s.ServerFds();
  SUBCASE("connect with identifier ROTS") {
    RawConn c(s.store.socket());
    REQUIRE(c.Send(ConnectMsg(1, proto::kProtocolVersion, "attacker", "ROTS")));
    ExpectProtocolError(c, 0);
  }
  SUBCASE("connect without an identifier") {
    RawConn c(s.store.socket());
    REQUIRE(c.Send(ConnectMsg(1, proto::kProtocolVersion, "attacker", nullptr)));
    ExpectProtocolError(c, 0);
  }
  SUBCASE("stats with identifier stor after the handshake") {
    RawConn c(s.store.socket());
    Handshake(c);
    REQUIRE(c.Send(StatsMsg(2, "stor")));
    ExpectProtocolError(c, 0);
  }
  s.CheckBaseline(fds);
  s.CheckServes();
}

TEST_CASE("a table missing a required field fails verification") {
  Attacked s;
  RawConn c(s.store.socket());
  Handshake(c);
  // A SealRequest without its required id, built by hand (the generated builder refuses).
  flatbuffers::FlatBufferBuilder b(128);
  auto start = b.StartTable();
  b.AddElement<uint64_t>(proto::SealRequest::VT_UID, 42, 0);
  flatbuffers::Offset<void> body(b.EndTable(start));
  Bytes m = Finish(b, 2, Body::SealRequest, body);
  REQUIRE(proto::VerifyMessage(m.data(), m.size()) == nullptr);
  REQUIRE(c.Send(m));
  ExpectProtocolError(c, 0);
  s.CheckServes();
}

TEST_CASE("a request type with no body is a protocol error") {
  // The flatbuffers verifier accepts a union type whose value is absent; the server must not
  // read the missing table.
  Attacked s;
  const size_t fds = s.ServerFds();
  {
    INFO("ConnectRequest without a body");
    flatbuffers::FlatBufferBuilder b(64);
    RawConn c(s.store.socket());
    REQUIRE(c.Send(Finish(b, 4, Body::ConnectRequest, 0)));
    ExpectProtocolError(c, std::nullopt);
    s.CheckServes();
  }
  const Body types[] = {Body::CreateRequest,   Body::SealRequest,   Body::AbortRequest,
                        Body::GetRequest,      Body::ReleaseRequest, Body::ContainsRequest,
                        Body::DeleteRequest,   Body::InfoRequest,   Body::PinRequest,
                        Body::UnpinRequest};
  for (Body type : types) {
    INFO(std::string(proto::EnumNameBody(type)) << " without a body");
    flatbuffers::FlatBufferBuilder b(64);
    Bytes m = Finish(b, 4, type, 0);
    RawConn c(s.store.socket());
    Handshake(c);
    REQUIRE(c.Send(m));
    ExpectProtocolError(c, std::nullopt);
    REQUIRE_MESSAGE(s.store.Alive(), "the server died; its log:\n" << s.store.Log());
    s.CheckServes();
  }
  s.CheckBaseline(fds);
}

TEST_CASE("random bit flips in a connect + create sequence never hurt the server") {
  Attacked s;
  const size_t fds = s.ServerFds();
  CreateArgs a;
  a.key = "bit-flip-target";
  a.data_size = 100;
  a.metadata = Bytes{'m', 'e', 't', 'a'};
  const Bytes base = Concat({ConnectMsg(1), CreateMsg(2, a)});
  std::mt19937 rng(4242);
  std::uniform_int_distribution<size_t> pos(0, base.size() * 8 - 1);
  std::uniform_int_distribution<int> nflips(1, 3);
  size_t served = 0, refused = 0;
  for (int i = 0; i < 500; i++) {
    INFO("iteration " << i);
    Bytes m = base;
    for (int k = nflips(rng); k > 0; k--) {
      size_t bit = pos(rng);
      m[bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));
    }
    RawConn c(s.store.socket());
    REQUIRE(c.ok());
    REQUIRE(c.Send(m));
    c.ShutdownWrite();
    size_t n = 0;
    Got end = c.Drain(&n);
    // Whatever came back must be whole, valid messages; then the server ends the stream.
    CHECK_MESSAGE((end == Got::kEof || end == Got::kReset), "stream ended with " << Name(end));
    (n >= 2 ? served : refused)++;
    REQUIRE_MESSAGE(s.store.Alive(), s.store.Log());
    if (i % 100 == 99) s.CheckServes();
  }
  CHECK(served > 0);  // some flips leave valid requests,
  CHECK(refused > 0);  // others break them
  s.CheckBaseline(fds);
  // Every object a flipped create made was unsealed and went with its connection.
  CHECK(test::WaitFor([&] { return s.Stats().object_count == 0; }));
  s.CheckServes();
}

// ------------------------------------------------------------------------------------------
// Handshake and dispatch.

TEST_CASE("a request before the connect handshake is a protocol error") {
  Attacked s;
  const size_t fds = s.ServerFds();
  CreateArgs a;
  std::vector<std::pair<const char*, Bytes>> cases = {
      {"stats", StatsMsg(7)},
      {"create", CreateMsg(7, a)},
      {"release", ReleaseMsg(7, {1})},
      {"get", GetMsg(7, {IdOf("x")}, -1)},
      {"body NONE", NoneMsg(7)},
  };
  for (auto& [name, m] : cases) {
    INFO(std::string(name));
    RawConn c(s.store.socket());
    REQUIRE(c.Send(m));
    ExpectProtocolError(c, 7);
    s.CheckServes();
  }
  s.CheckBaseline(fds);
}

TEST_CASE("a connect with the wrong protocol version names both versions") {
  Attacked s;
  const size_t fds = s.ServerFds();
  for (uint32_t v : {0u, proto::kProtocolVersion + 1, 777u, 0xFFFFFFFFu}) {
    INFO("version " << v);
    RawConn c(s.store.socket());
    REQUIRE(c.Send(ConnectMsg(3, v)));
    std::string e = ExpectProtocolError(c, 3);
    CHECK(e.find("version " + std::to_string(v)) != std::string::npos);
    CHECK(e.find("version " + std::to_string(proto::kProtocolVersion)) != std::string::npos);
    s.CheckServes();
  }
  s.CheckBaseline(fds);
}

TEST_CASE("a client name over the limit is a protocol error; one at the limit is fine") {
  Attacked s;
  {
    RawConn c(s.store.socket());
    REQUIRE(c.Send(ConnectMsg(1, proto::kProtocolVersion,
                              std::string(proto::kMaxClientName + 1, 'n'))));
    ExpectProtocolError(c, 1);
  }
  {
    RawConn c(s.store.socket());
    REQUIRE(c.Send(ConnectMsg(1, proto::kProtocolVersion,
                              std::string(proto::kMaxClientName, 'n'))));
    Reply r;
    CHECK(ExpectReply(c, 1, Body::ConnectReply, &r));
    CHECK(RawObjectCount(c, 2).has_value());
  }
  s.CheckServes();
}

TEST_CASE("a client name cannot forge log lines or reach a terminal: it is logged escaped") {
  Attacked s;
  const std::string name = "evil\n2026-01-01 00:00:00.000 store[1] error: forged\x1b[31m\\\x9b";
  RawConn c(s.store.socket());
  REQUIRE(c.Send(ConnectMsg(1, proto::kProtocolVersion, name)));
  Reply r;
  REQUIRE(ExpectReply(c, 1, Body::ConnectReply, &r));
  // A protocol error: the server logs a warning naming the client.
  REQUIRE(c.Send(NoneMsg(2)));
  ExpectProtocolError(c, 2);
  s.CheckServes();
  const std::string log = s.store.Log();
  INFO(log);
  CHECK(log.find("evil\\n2026-01-01 00:00:00.000 store[1] error: forged\\x1b[31m\\\\\\x9b") !=
        std::string::npos);
  CHECK(log.find("\nforged") == std::string::npos);
  CHECK(log.find("\n2026-01-01") == std::string::npos);
  CHECK(log.find('\x1b') == std::string::npos);
  CHECK(log.find('\x9b') == std::string::npos);
}

TEST_CASE("a second connect on the same connection is a protocol error") {
  Attacked s;
  const size_t fds = s.ServerFds();
  RawConn c(s.store.socket());
  Handshake(c, 1);
  REQUIRE(c.Send(ConnectMsg(2)));
  ExpectProtocolError(c, 2);
  s.CheckBaseline(fds);
  s.CheckServes();
}

TEST_CASE("reply types and an empty body sent as requests are protocol errors") {
  Attacked s;
  const size_t fds = s.ServerFds();
  const Body replies[] = {Body::ConnectReply, Body::CreateReply,   Body::SealReply,
                          Body::AbortReply,   Body::GetReply,      Body::ContainsReply,
                          Body::DeleteReply,  Body::InfoReply,     Body::ListReply,
                          Body::PinReply,     Body::UnpinReply,    Body::StatsReply};
  for (Body type : replies) {
    INFO("body type " << std::string(proto::EnumNameBody(type)));
    RawConn c(s.store.socket());
    Handshake(c);
    REQUIRE(c.Send(ReplyTypeMsg(5, type)));
    ExpectProtocolError(c, 5);
    REQUIRE_MESSAGE(s.store.Alive(), s.store.Log());
  }
  {
    INFO("body NONE");
    RawConn c(s.store.socket());
    Handshake(c);
    REQUIRE(c.Send(NoneMsg(6)));
    ExpectProtocolError(c, 6);
  }
  s.CheckBaseline(fds);
  s.CheckServes();
}

TEST_CASE("an unknown union type passes the verifier and is then a protocol error") {
  Attacked s;
  const size_t fds = s.ServerFds();
  for (uint8_t type : {uint8_t{200}, static_cast<uint8_t>(static_cast<int>(Body::MAX) + 1),
                       uint8_t{255}}) {
    for (bool handshake : {true, false}) {
      INFO("body type " << int{type} << std::string(handshake ? " after" : " before") << " the handshake");
      Bytes m = WithBodyType(StatsMsg(9), type);
      REQUIRE(proto::VerifyMessage(m.data(), m.size()) != nullptr);
      RawConn c(s.store.socket());
      if (handshake) Handshake(c);
      REQUIRE(c.Send(m));
      ExpectProtocolError(c, 9);
      s.CheckServes();
    }
  }
  s.CheckBaseline(fds);
}

// ------------------------------------------------------------------------------------------
// Semantic errors: an error reply, the connection stays open.

TEST_CASE("bad create requests get an error reply and the connection stays open") {
  Attacked s;
  RawConn c(s.store.socket());
  const uint64_t capacity = Handshake(c);
  REQUIRE(capacity > 0);
  const uint64_t objects_before = s.Stats().object_count;

  struct Case {
    const char* name;
    CreateArgs args;
    int status;
  };
  auto with = [](auto change) {
    CreateArgs a;
    a.key = "bad-create";
    change(a);
    return a;
  };
  std::vector<Case> cases = {
      {"data_size 0", with([](CreateArgs& a) { a.data_size = 0; }), STORE_EINVAL},
      {"data_size 0 with metadata",
       with([](CreateArgs& a) {
         a.data_size = 0;
         a.metadata = Bytes(10, 1);
       }),
       STORE_EINVAL},
      {"data_size capacity + 1", with([&](CreateArgs& a) { a.data_size = capacity + 1; }),
       STORE_EINVAL},
      {"data_size UINT64_MAX", with([](CreateArgs& a) { a.data_size = UINT64_MAX; }),
       STORE_EINVAL},
      {"data_size capacity with 1 byte of metadata",
       with([&](CreateArgs& a) {
         a.data_size = capacity;
         a.metadata = Bytes(1, 1);
       }),
       STORE_EINVAL},
      {"metadata of 1 MiB + 1",
       with([](CreateArgs& a) { a.metadata = Bytes(STORE_MAX_METADATA_SIZE + 1, 7); }),
       STORE_EINVAL},
      {"metadata of 3 MiB",
       with([](CreateArgs& a) { a.metadata = Bytes(3u << 20, 7); }),
       STORE_EINVAL},
      {"device 3", with([](CreateArgs& a) { a.device = 3; }), STORE_ENOTSUP},
      {"device -2", with([](CreateArgs& a) { a.device = -2; }), STORE_EINVAL},
      {"timeout_ms -5", with([](CreateArgs& a) { a.timeout_ms = -5; }), STORE_EINVAL},
      {"inline data shorter than data_size",
       with([](CreateArgs& a) {
         a.data_size = 11;
         a.data = Bytes(10, 3);
       }),
       STORE_EINVAL},
      {"inline data longer than data_size",
       with([](CreateArgs& a) {
         a.data_size = 11;
         a.data = Bytes(12, 3);
       }),
       STORE_EINVAL},
      {"empty inline data",
       with([](CreateArgs& a) {
         a.data_size = 5;
         a.data = Bytes();
       }),
       STORE_EINVAL},
      {"inline data above kInlinePutMax",
       with([](CreateArgs& a) {
         a.data_size = proto::kInlinePutMax + 1;
         a.data = Bytes(proto::kInlinePutMax + 1, 3);
       }),
       STORE_EINVAL},
  };
  uint64_t seq = 100;
  for (const Case& k : cases) {
    INFO(std::string(k.name));
    Bytes m = CreateMsg(++seq, k.args);
    REQUIRE(m.size() <= 4 + size_t{proto::kMaxRequestBytes});
    REQUIRE(c.Send(m));
    ExpectError(c, seq, k.status);
    // Same connection, next request: answered.
    auto count = RawObjectCount(c, ++seq);
    CHECK(count == objects_before);
    s.CheckServes();
  }

  // At the limits the same request is accepted: 1 MiB of metadata, kInlinePutMax inline bytes.
  CreateArgs ok;
  ok.key = "limits";
  ok.data_size = proto::kInlinePutMax;
  ok.data = Bytes(proto::kInlinePutMax, 0xC3);
  ok.metadata = Bytes(STORE_MAX_METADATA_SIZE, 0x3C);
  REQUIRE(c.Send(CreateMsg(++seq, ok)));
  Reply r;
  REQUIRE(ExpectReply(c, seq, Body::CreateReply, &r));
  CHECK(r.msg->body_as_CreateReply()->metadata_size() == STORE_MAX_METADATA_SIZE);
  store_object_id id = CIdOf("limits");
  store_reader* rd = nullptr;
  REQUIRE(store_open_reader(s.good, &rd, &id, 0) == STORE_OK);
  uint64_t msize = 0;
  const auto* meta = static_cast<const uint8_t*>(store_reader_metadata(rd, &msize));
  CHECK(msize == STORE_MAX_METADATA_SIZE);
  CHECK(store_reader_size(rd) == proto::kInlinePutMax);
  const auto* data = static_cast<const uint8_t*>(store_reader_data(rd));
  REQUIRE(data != nullptr);
  REQUIRE(meta != nullptr);
  CHECK(std::all_of(data, data + proto::kInlinePutMax, [](uint8_t b) { return b == 0xC3; }));
  CHECK(std::all_of(meta, meta + msize, [](uint8_t b) { return b == 0x3C; }));
  store_reader_close(rd);
  CHECK(store_delete(s.good, &id) == STORE_OK);
  s.CheckServes();
}

TEST_CASE("get, contains and delete with a bad number of ids get EINVAL") {
  Attacked s;
  RawConn c(s.store.socket());
  Handshake(c);
  std::vector<proto::ObjectId> none;
  std::vector<proto::ObjectId> too_many(proto::kMaxIdsPerRequest + 1, IdOf("many"));
  uint64_t seq = 10;

  struct Case {
    const char* name;
    Bytes msg;
  };
  std::vector<Case> cases;
  cases.push_back({"get with 0 ids", GetMsg(++seq, none)});
  cases.push_back({"get with kMaxIdsPerRequest + 1 ids", GetMsg(++seq, too_many)});
  cases.push_back({"get with timeout_ms -5", GetMsg(++seq, {IdOf("x")}, -5)});
  cases.push_back({"contains with kMaxIdsPerRequest + 1 ids", ContainsMsg(++seq, too_many)});
  cases.push_back({"delete with kMaxIdsPerRequest + 1 ids", DeleteMsg(++seq, too_many)});
  uint64_t expect = 10;
  for (Case& k : cases) {
    INFO(std::string(k.name));
    ++expect;
    REQUIRE(k.msg.size() <= 4 + size_t{proto::kMaxRequestBytes});
    REQUIRE(c.Send(k.msg));
    ExpectError(c, expect, STORE_EINVAL);
    CHECK(RawObjectCount(c, 1000 + expect).has_value());
    s.CheckServes();
  }

  // kMaxIdsPerRequest ids is allowed: every one is reported missing.
  std::vector<proto::ObjectId> max(proto::kMaxIdsPerRequest, IdOf("absent"));
  REQUIRE(c.Send(GetMsg(50, max, 0)));
  Reply r;
  REQUIRE(ExpectReply(c, 50, Body::GetReply, &r));
  auto* objs = r.msg->body_as_GetReply()->objects();
  REQUIRE(objs->size() == proto::kMaxIdsPerRequest);
  CHECK(objs->Get(0)->status() == STORE_ENOTFOUND);
  CHECK(objs->Get(proto::kMaxIdsPerRequest - 1)->status() == STORE_ENOTFOUND);
  s.CheckServes();
}

TEST_CASE("releasing a uid the client does not hold is a protocol error; other readers keep theirs") {
  Attacked s;
  const size_t fds = s.ServerFds();
  const std::string key = "shared-object";
  store_object_id id = CIdOf(key);
  const std::string payload = "read by two clients";
  REQUIRE(store_put(s.good, &id, payload.data(), payload.size(), nullptr) == STORE_OK);
  store_reader* good_reader = nullptr;
  REQUIRE(store_open_reader(s.good, &good_reader, &id, 0) == STORE_OK);

  // A second, raw reader of the same object; its uid is what the attackers name.
  RawConn holder(s.store.socket());
  Handshake(holder);
  REQUIRE(holder.Send(GetMsg(2, {IdOf(key)}, 0)));
  Reply r;
  REQUIRE(ExpectReply(holder, 2, Body::GetReply, &r));
  const uint64_t uid = r.msg->body_as_GetReply()->objects()->Get(0)->uid();
  REQUIRE(r.msg->body_as_GetReply()->objects()->Get(0)->status() == 0);
  REQUIRE(uid != 0);

  auto readers = [&] {
    store_object_info info = STORE_OBJECT_INFO_INIT;
    CHECK(store_info(s.good, &id, &info) == STORE_OK);
    return info.reader_count;
  };
  CHECK(readers() == 2);

  SUBCASE("a uid held by another client") {
    RawConn a(s.store.socket());
    Handshake(a);
    REQUIRE(a.Send(ReleaseMsg(3, {uid})));
    ExpectProtocolError(a, 3);
  }
  SUBCASE("uid 0 and a uid that never existed") {
    for (uint64_t bogus : {uint64_t{0}, uid + 100000}) {
      RawConn a(s.store.socket());
      Handshake(a);
      REQUIRE(a.Send(ReleaseMsg(3, {bogus})));
      ExpectProtocolError(a, 3);
    }
  }
  SUBCASE("a uid released twice by a client that held it once") {
    RawConn a(s.store.socket());
    Handshake(a);
    REQUIRE(a.Send(GetMsg(2, {IdOf(key)}, 0)));
    Reply g;
    REQUIRE(ExpectReply(a, 2, Body::GetReply, &g));
    REQUIRE(g.msg->body_as_GetReply()->objects()->Get(0)->uid() == uid);
    CHECK(readers() == 3);
    REQUIRE(a.Send(ReleaseMsg(3, {uid, uid})));
    ExpectProtocolError(a, 3);
  }
  // The attacker is gone; the two honest readers are intact.
  CHECK(test::WaitFor([&] { return readers() == 2; }));
  CHECK(readers() == 2);
  std::string back(payload.size(), '\0');
  size_t n = 0;
  CHECK(store_reader_read(good_reader, back.data(), back.size(), &n) == STORE_OK);
  CHECK(back == payload);
  CHECK(std::memcmp(store_reader_data(good_reader), payload.data(), payload.size()) == 0);

  // The raw holder still holds its reader: it can release it exactly once.
  REQUIRE(holder.Send(ReleaseMsg(4, {uid})));
  CHECK(RawObjectCount(holder, 5).has_value());  // the release was processed before this
  CHECK(readers() == 1);
  store_reader_close(good_reader);
  CHECK(readers() == 0);
  CHECK(store_delete(s.good, &id) == STORE_OK);
  holder.Close();
  s.CheckBaseline(fds);
  s.CheckServes();
}

TEST_CASE("seal and abort of an object created by another client get EPERM") {
  Attacked s;
  const std::string key = "someone-elses";
  store_object_id id = CIdOf(key);
  store_writer* w = nullptr;
  // Larger than a staged object: created in the store at once.
  const size_t size = 100 * 1024;
  REQUIRE(store_create(s.good, &w, &id, size, nullptr) == STORE_OK);

  // A raw creator too, so the attacker can also name the exact uid.
  RawConn creator(s.store.socket());
  Handshake(creator);
  CreateArgs a;
  a.key = "raw-created";
  a.data_size = 8;
  REQUIRE(creator.Send(CreateMsg(2, a)));
  Reply r;
  REQUIRE(ExpectReply(creator, 2, Body::CreateReply, &r));
  const uint64_t raw_uid = r.msg->body_as_CreateReply()->uid();

  RawConn attacker(s.store.socket());
  Handshake(attacker);
  uint64_t seq = 10;
  for (auto [k, uid] : {std::pair<std::string, uint64_t>{key, 0}, {"raw-created", 0},
                        {"raw-created", raw_uid}}) {
    INFO(k << " uid " << uid);
    REQUIRE(attacker.Send(SealMsg(++seq, k, uid)));
    ExpectError(attacker, seq, STORE_EPERM);
    REQUIRE(attacker.Send(AbortMsg(++seq, k, uid)));
    ExpectError(attacker, seq, STORE_EPERM);
    CHECK(RawObjectCount(attacker, ++seq).has_value());  // still connected
    s.CheckServes();
  }

  // Both objects are untouched: still being written by their creators, who can finish them.
  store_object_info info = STORE_OBJECT_INFO_INIT;
  REQUIRE(store_info(s.good, &id, &info) == STORE_OK);
  CHECK(info.state == STORE_STATE_CREATED);
  int present = 1;
  CHECK(store_contains(s.good, &id, &present) == STORE_OK);
  CHECK(present == 0);
  const std::string payload(size, 'w');
  CHECK(store_writer_write(w, payload.data(), payload.size()) == STORE_OK);
  REQUIRE(store_writer_seal(w) == STORE_OK);
  store_reader* rd = nullptr;
  REQUIRE(store_open_reader(s.good, &rd, &id, 0) == STORE_OK);
  CHECK(std::memcmp(store_reader_data(rd), payload.data(), payload.size()) == 0);
  store_reader_close(rd);
  CHECK(store_delete(s.good, &id) == STORE_OK);

  REQUIRE(creator.Send(SealMsg(3, "raw-created", raw_uid)));
  CHECK(ExpectReply(creator, 3, Body::SealReply, &r));
  store_object_id raw_id = CIdOf("raw-created");
  CHECK(store_contains(s.good, &raw_id, &present) == STORE_OK);
  CHECK(present == 1);
  CHECK(store_delete(s.good, &raw_id) == STORE_OK);
  s.CheckServes();
}

// ------------------------------------------------------------------------------------------
// Descriptors and connections.

TEST_CASE("descriptors sent by a client are closed, not kept") {
  Attacked s;
  const size_t base = s.ServerFds();

  // Descriptors of several kinds to pass.
  int pipefd[2];
  REQUIRE(pipe2(pipefd, O_CLOEXEC) == 0);
  int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
  int efd = eventfd(0, EFD_CLOEXEC);
  int sp[2];
  REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) == 0);
  int mfd = memfd_create("attack", MFD_CLOEXEC);
  std::vector<int> all = {pipefd[0], pipefd[1], devnull, efd, sp[0], sp[1], mfd};
  for (int fd : all) REQUIRE(fd >= 0);

  {
    RawConn c(s.store.socket());
    REQUIRE(c.ok());
    CHECK(test::WaitFor([&] { return s.ServerFds() == base + 1; }));
    // One descriptor with the connect request.
    REQUIRE(c.Send(ConnectMsg(1), {devnull}));
    Reply r;
    REQUIRE(ExpectReply(c, 1, Body::ConnectReply, &r));
    CHECK(test::WaitFor([&] { return s.ServerFds() == base + 1; }));
    // Three with a stats request, then all seven with the next one.
    REQUIRE(c.Send(StatsMsg(2), {pipefd[0], efd, sp[0]}));
    CHECK(ExpectReply(c, 2, Body::StatsReply, &r));
    REQUIRE(c.Send(StatsMsg(3), all));
    CHECK(ExpectReply(c, 3, Body::StatsReply, &r));
    CHECK(test::WaitFor([&] { return s.ServerFds() == base + 1; }));
    CHECK(s.ServerFds() == base + 1);
    s.CheckServes();
  }
  s.CheckBaseline(base);

  {
    // Descriptors with garbage: protocol error, descriptors gone with the connection.
    RawConn c(s.store.socket());
    REQUIRE(c.Send(Concat({Prefix(16), Bytes(16, 0x77)}), {pipefd[1], mfd}));
    ExpectProtocolError(c, 0);
  }
  s.CheckBaseline(base);
  {
    // Descriptors with half a message, then the client goes away.
    RawConn c(s.store.socket());
    Bytes m = ConnectMsg(1);
    REQUIRE(c.Send(m.data(), m.size() / 2, {sp[1], efd}));
    c.Close();
  }
  s.CheckBaseline(base);
  for (int fd : all) close(fd);
  s.CheckServes();
}

TEST_CASE("idle clients and half a length prefix do not disturb the server") {
  Attacked s;
  const size_t base = s.ServerFds();
  {
    RawConn idle(s.store.socket());
    REQUIRE(idle.ok());
    CHECK(test::WaitFor([&] { return s.Clients() == 2; }));
    s.CheckServes();
    {
      RawConn half(s.store.socket());
      REQUIRE(half.ok());
      Bytes p = Prefix(64);
      REQUIRE(half.Send(p.data(), 2));
      CHECK(test::WaitFor([&] { return s.Clients() == 3; }));
      s.CheckServes();
    }  // half disconnects
    CHECK(test::WaitFor([&] { return s.Clients() == 2; }));
    s.CheckServes();
    // The idle one is still connected and can still do its handshake.
    Handshake(idle);
    CHECK(RawObjectCount(idle, 2).has_value());
  }
  s.CheckBaseline(base);
  s.CheckServes();
}

TEST_CASE("a client that never reads its replies does not stall the others") {
  Attacked s;
  const size_t base = s.ServerFds();
  {
    RawConn c(s.store.socket());
    Handshake(c);
    // Far more reply bytes than a socket buffer holds.
    Bytes batch;
    for (uint64_t seq = 10; seq < 20010; seq++) {
      Bytes m = StatsMsg(seq);
      batch.insert(batch.end(), m.begin(), m.end());
    }
    REQUIRE(c.Send(batch));
    s.CheckServes();
    // It can still read them all, in order.
    for (uint64_t seq = 10; seq < 20010; seq++) {
      Reply r;
      Got g = c.Next(&r);
      REQUIRE_MESSAGE(g == Got::kMessage, "reply " << seq << ": " << Name(g));
      REQUIRE(r.msg->seq() == seq);
    }
  }
  s.CheckBaseline(base);
  s.CheckServes();
}

// ------------------------------------------------------------------------------------------
// A client dropped for its unread backlog at the moment a waiting request is answered.
//
// The server drops a client whose unread replies pass kWriteBacklogLimit (its default
// --max-client-backlog). The attacker below brings its backlog to within a few bytes of that
// limit, so that the one reply that crosses it is the answer to a request that was waiting (a
// get waiting for a seal, a create waiting for space): the client is dropped while that request
// is being completed.

namespace {

constexpr uint64_t kWriteBacklogLimit = 128ull << 20;  // the server's per-client limit
constexpr int kListedObjects = 20000;                   // makes each list reply ~1.7 MiB

// Makes the server's allocator fill freed memory with junk while a TestStore starts, so that a
// use of freed memory shows at once rather than as a silently corrupted heap. MALLOC_CONF is
// read by jemalloc (the server's allocator) only.
struct JunkFreedMemory {
  std::optional<std::string> saved;
  JunkFreedMemory() {
    if (const char* v = std::getenv("MALLOC_CONF")) saved = v;
    setenv("MALLOC_CONF", "junk:true", 1);
  }
  void Restore() {
    if (saved) {
      setenv("MALLOC_CONF", saved->c_str(), 1);
    } else {
      unsetenv("MALLOC_CONF");
    }
  }
  ~JunkFreedMemory() { Restore(); }
};

Bytes ListMsg(uint64_t seq) {
  flatbuffers::FlatBufferBuilder b(64);
  return Finish(b, seq, Body::ListRequest, proto::CreateListRequest(b).Union());
}

class BacklogAttack {
 public:
  explicit BacklogAttack(Attacked& s) : s_(s), probe_(s.store.socket()), attacker_(s.store.socket()) {
    Handshake(probe_);
    Handshake(attacker_);
  }
  RawConn& attacker() { return attacker_; }

  // Fills the store with many small objects (every list reply then is large).
  void AddListedObjects() {
    RawConn filler(s_.store.socket());
    Handshake(filler);
    Bytes batch;
    for (int i = 0; i < kListedObjects; i++) {
      CreateArgs a;
      a.key = "listed-" + std::to_string(i);
      a.data_size = 1;
      a.data = Bytes{1};
      Bytes m = CreateMsg(100 + i, a);
      batch.insert(batch.end(), m.begin(), m.end());
    }
    REQUIRE(filler.Send(batch));
    for (int i = 0; i < kListedObjects; i++) {
      Reply r;
      REQUIRE(ExpectReply(filler, 100 + i, Body::CreateReply, &r));
    }
  }

  // Leaves between limit - 16 and limit bytes of replies unread in the server for the attacker.
  // The set of objects must not change from here until the waiting request is answered.
  void FillToTheEdge() {
    const size_t list = ReplySize(ListMsg(1));
    REQUIRE(list > (1u << 20));
    // Coarse: list replies up to about one list below the limit. The attacker reads nothing.
    const uint64_t lists = kWriteBacklogLimit / list - 1;
    Bytes batch;
    for (uint64_t i = 0; i < lists; i++) {
      Bytes m = ListMsg(seq_++);
      batch.insert(batch.end(), m.begin(), m.end());
    }
    REQUIRE(attacker_.Send(batch));
    Sync();
    // What the kernel took already is no longer queued in the server.
    int in_socket = 0;
    REQUIRE(ioctl(attacker_.fd(), FIONREAD, &in_socket) == 0);
    uint64_t gap = kWriteBacklogLimit - (lists * list - static_cast<uint64_t>(in_socket));
    // Medium: gets of 1000 absent ids (about 48 KiB of reply each).
    const Bytes chunk_msg = GetMsg(1, std::vector<proto::ObjectId>(1000, IdOf("absent")), 0);
    const size_t chunk = ReplySize(chunk_msg);
    batch.clear();
    while (gap > chunk + 1000) {
      Bytes m = GetMsg(seq_++, std::vector<proto::ObjectId>(1000, IdOf("absent")), 0);
      batch.insert(batch.end(), m.begin(), m.end());
      gap -= chunk;
    }
    // Fine: one contains of n ids (1 byte of reply per id) whose reply fits the rest exactly
    // enough: gap - 16 <= size <= gap.
    uint32_t lo = 1, hi = proto::kMaxIdsPerRequest;
    REQUIRE(ContainsSize(lo) <= gap);
    while (lo < hi) {  // largest n with ContainsSize(n) <= gap
      uint32_t mid = lo + (hi - lo + 1) / 2;
      if (ContainsSize(mid) <= gap) {
        lo = mid;
      } else {
        hi = mid - 1;
      }
    }
    const size_t last = ContainsSize(lo);
    REQUIRE(last + 16 >= gap);
    Bytes m = ContainsMsg(seq_++, std::vector<proto::ObjectId>(lo, IdOf("absent")));
    batch.insert(batch.end(), m.begin(), m.end());
    REQUIRE(attacker_.Send(batch));
    Sync();
    // Not dropped yet: the attacker is still a client.
    REQUIRE(test::WaitFor([&] { return s_.Clients() == 3; }));
  }

 private:
  // Size of the reply to req, measured on the probe connection.
  size_t ReplySize(const Bytes& req) {
    REQUIRE(probe_.Send(req));
    Reply r;
    REQUIRE(probe_.Next(&r) == Got::kMessage);
    return r.size;
  }
  size_t ContainsSize(uint32_t n) {
    return ReplySize(ContainsMsg(1, std::vector<proto::ObjectId>(n, IdOf("absent"))));
  }
  // Waits until the server has processed everything the attacker sent: a get that waits for an
  // object nobody makes is registered last.
  void Sync() {
    REQUIRE(attacker_.Send(GetMsg(seq_++, {IdOf("never-" + std::to_string(seq_))}, -1)));
    ++syncs_;
    REQUIRE(test::WaitFor([&] { return s_.Stats().waiting_gets == syncs_; },
                          std::chrono::seconds(60)));
  }

  Attacked& s_;
  RawConn probe_, attacker_;
  uint64_t seq_ = 1000;
  uint64_t syncs_ = 0;
};

// What is left after the attacker was dropped: the server answers, works for everyone, and
// waiting gets still reach the right clients.
void CheckAfterBacklogDrop(Attacked& s, size_t base_fds) {
  {
    RawConn check(s.store.socket());
    Handshake(check);
    REQUIRE_MESSAGE(RawObjectCount(check, 2).has_value(), "the server stopped answering");
  }
  REQUIRE_MESSAGE(s.store.Alive(), "the server died; its log:\n" << s.store.Log());
  CHECK(test::WaitFor([&] { return s.Clients() == 1; }));  // the attacker was dropped
  CHECK(s.Stats().waiting_gets == 0);
  CHECK(s.Stats().waiting_creates == 0);
  s.CheckServes();

  constexpr int kWaiters = 16;
  std::vector<std::unique_ptr<RawConn>> waiters;
  for (int i = 0; i < kWaiters; i++) {
    waiters.push_back(std::make_unique<RawConn>(s.store.socket()));
    Handshake(*waiters.back());
    REQUIRE(waiters.back()->Send(GetMsg(50 + i, {IdOf("waited-" + std::to_string(i))}, -1)));
  }
  REQUIRE(test::WaitFor([&] { return s.Stats().waiting_gets == kWaiters; }));
  for (int i = 0; i < kWaiters; i++) {
    store_object_id id = CIdOf("waited-" + std::to_string(i));
    CHECK(store_put(s.good, &id, &i, sizeof i, nullptr) == STORE_OK);
  }
  for (int i = 0; i < kWaiters; i++) {
    INFO("waiter " << i);
    Reply r;
    REQUIRE(ExpectReply(*waiters[i], 50 + i, Body::GetReply, &r));
    auto* objs = r.msg->body_as_GetReply()->objects();
    REQUIRE(objs->size() == 1);
    CHECK(objs->Get(0)->status() == 0);
    CHECK(objs->Get(0)->data_size() == sizeof(int));
    CHECK(RawObjectCount(*waiters[i], 500 + i).has_value());  // nothing else came before
  }
  waiters.clear();
  s.CheckBaseline(base_fds);
  s.CheckServes();
}

}  // namespace

TEST_CASE("a client dropped for its backlog by the reply to its waiting get") {
  JunkFreedMemory junk;
  Attacked s("256M");
  junk.Restore();
  const size_t base = s.ServerFds();
  {
    BacklogAttack attack(s);
    attack.AddListedObjects();
    attack.FillToTheEdge();
    // A get waiting for an object that is sealed next; its reply crosses the limit.
    REQUIRE(attack.attacker().Send(GetMsg(7, {IdOf("sealed-later")}, -1)));
    REQUIRE(test::WaitFor([&] { return s.Stats().waiting_gets == 3; }));
    RawConn sealer(s.store.socket());
    Handshake(sealer);
    CreateArgs a;
    a.key = "sealed-later";
    a.data_size = 1;
    a.data = Bytes{'x'};
    REQUIRE(sealer.Send(CreateMsg(2, a)));
    Reply r;
    CHECK(ExpectReply(sealer, 2, Body::CreateReply, &r));
  }
  CheckAfterBacklogDrop(s, base);
}

TEST_CASE("a client dropped for its backlog by the reply to its waiting create") {
  JunkFreedMemory junk;
  Attacked s("256M");
  junk.Restore();
  const size_t base = s.ServerFds();
  // Most of the store is taken by an object still being written (nothing can evict it), so
  // the attacker's create has to wait for space.
  store_object_id blocker = CIdOf("blocker");
  store_writer* w = nullptr;
  REQUIRE(store_create(s.good, &w, &blocker, 200u << 20, nullptr) == STORE_OK);
  {
    BacklogAttack attack(s);
    attack.AddListedObjects();
    attack.FillToTheEdge();
    CreateArgs a;
    a.key = "waits-for-space";
    a.data_size = 100u << 20;
    a.timeout_ms = -1;
    REQUIRE(attack.attacker().Send(CreateMsg(7, a)));
    REQUIRE(test::WaitFor([&] { return s.Stats().waiting_creates == 1; }));
    // Freeing the space serves the create; its reply crosses the limit.
    CHECK(store_writer_abort(w) == STORE_OK);
  }
  CheckAfterBacklogDrop(s, base);
  // The create of the dropped client did not survive it.
  store_object_id id = CIdOf("waits-for-space");
  int present = 1;
  CHECK(store_contains(s.good, &id, &present) == STORE_OK);
  CHECK(present == 0);
}

TEST_CASE("protocol errors are logged once a second at most, the others counted in one line") {
  // A broken client that reconnects in a loop, or a hostile one, must not flood the log.
  Attacked s;
  const size_t fds = s.ServerFds();
  const uint64_t bad_before = s.Stats().total_bad_requests;
  constexpr int kConns = 300;
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < kConns; i++) {
    RawConn c(s.store.socket());
    REQUIRE(c.ok());
    REQUIRE(c.Send(Prefix(0)));
    ExpectProtocolError(c, 0);
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  CHECK(s.Stats().total_bad_requests - bad_before == kConns);
  // Every one is in the log, by itself or in a count, once its second is over.
  size_t lines = 0;
  auto said = [&] {
    return test::LoggedOrCounted(
        s.store.Log(), "; closing its connection",
        " more connections closed for protocol errors in the last second", &lines);
  };
  CHECK(test::WaitFor([&] { return said() == kConns; }));
  INFO(s.store.Log());
  CHECK(lines >= 1);
  CHECK(static_cast<double>(lines) <= seconds + 2);
  s.CheckBaseline(fds);
  s.CheckServes();
}

TEST_CASE("hundreds of connections opened and closed quickly leave nothing behind") {
  Attacked s;
  const size_t base = s.ServerFds();
  SUBCASE("connect and close at once, 200 times") {
    for (int i = 0; i < 200; i++) {
      RawConn c(s.store.socket());
      REQUIRE(c.ok());
    }
  }
  SUBCASE("connect, handshake and close, 200 times") {
    for (int i = 0; i < 200; i++) {
      RawConn c(s.store.socket());
      Handshake(c);
    }
  }
  SUBCASE("200 open at once, half of them handshaken, then all closed") {
    std::vector<std::unique_ptr<RawConn>> conns;
    for (int i = 0; i < 200; i++) {
      conns.push_back(std::make_unique<RawConn>(s.store.socket()));
      REQUIRE(conns.back()->ok());
      if (i % 2 == 0) Handshake(*conns.back());
    }
    CHECK(test::WaitFor([&] { return s.Clients() == 201; }));
    conns.clear();
  }
  s.CheckBaseline(base);
  CHECK(s.Clients() == 1);
  s.CheckServes();
}

// ------------------------------------------------------------------------------------------
// Limits: what one client can make the server hold is bounded, each bound by a flag (see
// store/server/limits.cpp). Each attack runs against small limits, so that it is quick: the
// server's memory and descriptors stay under them, the good client is served throughout and
// loses nothing, and the limit shows in the stats and, once per burst, in the log.

namespace {

// Objects the good client puts before an attack (and checks after it).
struct Witnesses {
  Attacked& s;
  std::vector<std::string> keys;
  explicit Witnesses(Attacked& a) : s(a) {}
  void Put(const std::string& key) {
    store_object_id id = CIdOf(key);
    const std::string payload = "kept through the attack: " + key;
    REQUIRE(store_put(s.good, &id, payload.data(), payload.size(), nullptr) == STORE_OK);
    keys.push_back(key);
  }
  void CheckIntact() {
    for (const auto& key : keys) {
      INFO(key);
      store_object_id id = CIdOf(key);
      store_reader* r = nullptr;
      REQUIRE(store_open_reader(s.good, &r, &id, 0) == STORE_OK);
      const std::string payload = "kept through the attack: " + key;
      REQUIRE(store_reader_size(r) == payload.size());
      CHECK(std::memcmp(store_reader_data(r), payload.data(), payload.size()) == 0);
      store_reader_close(r);
    }
  }
  void DeleteAll() {
    for (const auto& key : keys) {
      store_object_id id = CIdOf(key);
      CHECK(store_delete(s.good, &id) == STORE_OK);
    }
  }
};

// Lines of the server's log that contain text.
size_t LogLines(const test::TestStore& store, const std::string& text) {
  size_t n = 0;
  std::string log = store.Log();
  for (size_t at = log.find(text); at != std::string::npos; at = log.find(text, at + 1)) n++;
  return n;
}

// A get of n ids that are not there, answered at once: a reply of about 48 bytes per id.
Bytes AbsentGetMsg(uint64_t seq, uint32_t n) {
  return GetMsg(seq, std::vector<proto::ObjectId>(n, IdOf("absent")), 0);
}

}  // namespace

TEST_CASE("waiting creates past --max-waiting-bytes get STORE_ELIMIT; the server's memory stays bounded") {
  // A store whose memory is held by an object being written: every create of 1 MiB waits.
  Attacked s("64M", {"--max-waiting-bytes", "16M"});
  Witnesses before(s);
  for (int i = 0; i < 8; i++) before.Put("before-" + std::to_string(i));
  store_object_id blocker = CIdOf("blocker");
  store_writer* w = nullptr;
  REQUIRE(store_create(s.good, &w, &blocker, s.Stats().largest_free_bytes, nullptr) == STORE_OK);
  const size_t base_fds = s.ServerFds();
  const uint64_t rss_before = RssKib(s.store.pid());

  // 8 connections, 25 creates each, each with 1 MiB of metadata and waiting forever: 200 MiB
  // the server would copy (1,000 such creates took a store from 71 MB to 1.1 GB). It keeps
  // 16 MiB in all, 4 MiB (a quarter) per client.
  constexpr int kConns = 8, kPerConn = 25;
  std::vector<std::unique_ptr<RawConn>> conns;
  const Bytes meta(1u << 20, 0xAB);
  Witnesses during(s);
  const uint64_t creates_base = s.Stats().total_creates;
  auto t0 = std::chrono::steady_clock::now();
  for (int k = 0; k < kConns; k++) {
    conns.push_back(std::make_unique<RawConn>(s.store.socket()));
    Handshake(*conns.back());
    for (int i = 0; i < kPerConn; i++) {
      CreateArgs a;
      a.key = "waits-" + std::to_string(k) + "-" + std::to_string(i);
      a.data_size = 1u << 20;
      a.metadata = meta;
      a.timeout_ms = -1;
      REQUIRE(conns.back()->Send(CreateMsg(100 + i, a)));
    }
    during.Put("during-" + std::to_string(k));
  }
  const auto sent_ms =
      std::chrono::duration_cast<Ms>(std::chrono::steady_clock::now() - t0).count();
  // Each create is refused, waits, or finds room at once (the blocker leaves a little); the
  // server holds what waits.
  const bool all_answered = test::WaitFor([&] {
    store_stats st = s.Stats();
    return st.refused_waiting_bytes + st.waiting_creates + (st.total_creates - creates_base) ==
           kConns * kPerConn + kConns;  // and the good client's puts
  });
  {
    store_stats st = s.Stats();
    INFO("refused " << st.refused_waiting_bytes << " + " << st.refused_client_waiting
                    << ", waiting " << st.waiting_creates << ", bytes " << st.waiting_bytes);
    REQUIRE(all_answered);
  }
  int refused = 0, at_once = 0;
  for (int k = 0; k < kConns; k++) {
    for (;;) {
      Reply r;
      Got g = conns[k]->Next(&r, Ms{200});
      if (g == Got::kTimeout) break;
      REQUIRE(g == Got::kMessage);
      if (r.msg->status() == 0) {
        at_once++;
        continue;
      }
      CHECK(r.msg->status() == STORE_ELIMIT);
      std::string e = r.msg->error() ? r.msg->error()->str() : "";
      CHECK(e.find("--max-waiting-bytes") != std::string::npos);
      refused++;
    }
  }
  store_stats st = s.Stats();
  INFO("refused " << refused << ", waiting " << st.waiting_creates);
  CHECK(refused + at_once + st.waiting_creates == kConns * kPerConn);
  CHECK(st.waiting_creates <= 16);
  CHECK(st.waiting_bytes <= (16u << 20));
  CHECK(st.refused_waiting_bytes == static_cast<uint64_t>(refused));
  const uint64_t rss_after = RssKib(s.store.pid());
  MESSAGE("server RSS " << rss_before / 1024 << " MiB -> " << rss_after / 1024 << " MiB, "
                        << st.waiting_creates << " creates waiting, " << refused << " refused, "
                        << at_once << " created at once, in " << sent_ms << " ms");
  if (kRssIsHeap) {
    CHECK(rss_after < rss_before + 48 * 1024);  // 16 MiB waiting, and buffers (not 1,000 MiB)
  }
  s.CheckServes();
  // Once per burst in the log (the burst lasts a second or two), naming the client.
  const size_t lines = LogLines(s.store, "limit --max-waiting-bytes");
  CHECK(lines >= 1);
  CHECK(lines <= static_cast<size_t>(sent_ms / 1000 + 2));
  CHECK(s.store.Log().find("'attacker'") != std::string::npos);

  // The waiting creates are served once there is room: nothing that was accepted is lost.
  REQUIRE(store_writer_abort(w) == STORE_OK);
  REQUIRE(test::WaitFor([&] { return s.Stats().waiting_creates == 0; }));
  size_t created = 0;
  for (int k = 0; k < kConns; k++) {
    for (;;) {
      Reply r;
      Got g = conns[k]->Next(&r, Ms{200});
      if (g == Got::kTimeout) break;
      REQUIRE(g == Got::kMessage);
      CHECK(r.msg->status() == 0);
      CHECK(r.msg->body_type() == Body::CreateReply);
      created++;
    }
  }
  CHECK(created == st.waiting_creates);
  CHECK(s.Stats().waiting_bytes == 0);
  conns.clear();
  before.CheckIntact();
  during.CheckIntact();
  before.DeleteAll();
  during.DeleteAll();
  s.CheckBaseline(base_fds);
  CHECK(s.Stats().object_count == 0);  // the raw creators' objects were aborted with them
}

TEST_CASE("objects past --max-objects get STORE_ELIMIT, spilled ones counted; the server's memory "
          "stays bounded") {
  // Whatever its size, an object costs the server about 200 bytes of its own memory: 8 million
  // objects of one byte, spilled, took a store's RSS from 72 MB to 1.7 GB on 421 MB of disk.
  test::TempDir tmp;
  Attacked s("64M", {"--max-objects", "20000", "--spill-dir", tmp.Sub("spill")});
  Witnesses before(s);
  for (int i = 0; i < 8; i++) before.Put("before-" + std::to_string(i));
  CHECK(s.Stats().limit_objects == 20000);
  const size_t base_fds = s.ServerFds();
  const uint64_t rss_before = RssKib(s.store.pid());

  store_client* bad = nullptr;
  store_connect_options o = STORE_CONNECT_OPTIONS_INIT;
  o.client_name = "attacker";
  REQUIRE(store_client_connect(&bad, s.store.socket().c_str(), &o) == STORE_OK);
  // 300,000 objects of one byte, 4096 to a call; the first 10,000 are spilled to disk, which
  // frees their memory but not what the server keeps for each.
  constexpr size_t kBatch = 4096, kTries = 300000;
  std::vector<store_object_id> ids(kBatch);
  std::vector<const void*> datas(kBatch);
  std::vector<uint64_t> sizes(kBatch, 1);
  const char one = 'x';
  size_t put = 0, tried = 0, refused_calls = 0;
  bool spilled = false;
  std::string why;
  auto t0 = std::chrono::steady_clock::now();
  for (; tried < kTries; tried += kBatch) {
    for (size_t i = 0; i < kBatch; i++) {
      ids[i] = CIdOf("tiny-" + std::to_string(tried + i));
      datas[i] = &one;
    }
    size_t done = 0;
    int rc = store_put_many(bad, ids.data(), datas.data(), sizes.data(), kBatch, nullptr, &done);
    put += done;
    if (rc != STORE_OK) {
      CHECK(rc == STORE_ELIMIT);
      why = store_last_error_message();
      refused_calls++;
    }
    if (!spilled && put >= 10000) {
      uint64_t n = 0;
      REQUIRE(store_evict(bad, UINT64_MAX, &n) == STORE_OK);
      spilled = true;
    }
  }
  const auto sent_ms =
      std::chrono::duration_cast<Ms>(std::chrono::steady_clock::now() - t0).count();
  store_stats st = s.Stats();
  INFO("put " << put << ", objects " << st.object_count << ", spilled " << st.spilled_count
              << ", refused " << st.refused_objects << "; " << why);
  CHECK(put == 20000 - 8);
  CHECK(st.object_count == 20000);
  CHECK(st.spilled_count >= 10000);
  CHECK(st.refused_objects == tried - put);
  CHECK(refused_calls >= (tried - 20000) / kBatch);
  CHECK(why.find("--max-objects") != std::string::npos);
  CHECK(why.find("20000") != std::string::npos);
  const uint64_t rss_after = RssKib(s.store.pid());
  MESSAGE("server RSS " << rss_before / 1024 << " MiB -> " << rss_after / 1024 << " MiB with "
                        << st.object_count << " objects, " << st.refused_objects
                        << " refused, in " << sent_ms << " ms");
  if (kRssIsHeap) {
    CHECK(rss_after < rss_before + 24 * 1024);  // 20,000 objects, not 300,000 (60 MB)
  }
  // Every client is refused alike (objects belong to no client), and reads go on.
  store_object_id more = CIdOf("one more");
  CHECK(store_put(s.good, &more, &one, 1, nullptr) == STORE_ELIMIT);
  before.CheckIntact();
  // Once per burst in the log, naming the client.
  const size_t lines = LogLines(s.store, "limit --max-objects");
  CHECK(lines >= 1);
  CHECK(lines <= static_cast<size_t>(sent_ms / 1000 + 2));
  CHECK(s.store.Log().find("'attacker'") != std::string::npos);
  // Deletes make room again.
  for (size_t i = 0; i < put; i++) {
    store_object_id id = CIdOf("tiny-" + std::to_string(i));
    REQUIRE(store_delete(bad, &id) == STORE_OK);
  }
  store_client_free(bad);
  s.CheckServes();
  before.CheckIntact();
  before.DeleteAll();
  s.CheckBaseline(base_fds);
  CHECK(s.Stats().object_count == 0);
}

TEST_CASE("--max-objects by default: one object per 2 KiB of the machine's memory, at least 2^20") {
  Attacked s("64M");
  const uint64_t ram = static_cast<uint64_t>(sysconf(_SC_PHYS_PAGES)) *
                       static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  CHECK(s.Stats().limit_objects == std::max<uint64_t>(uint64_t{1} << 20, ram / 2048));
}

TEST_CASE("waiting gets past --max-client-waiting get STORE_ELIMIT and the connection stays open") {
  Attacked s("64M", {"--max-client-waiting", "4"});
  const size_t base_fds = s.ServerFds();
  {
    RawConn c(s.store.socket());
    Handshake(c);
    for (uint64_t seq = 10; seq < 20; seq++) {
      REQUIRE(c.Send(GetMsg(seq, {IdOf("later-" + std::to_string(seq))}, -1)));
    }
    // The first four wait; the other six are refused at once.
    for (uint64_t seq = 14; seq < 20; seq++) {
      std::string e = ExpectError(c, seq, STORE_ELIMIT);
      CHECK(e.find("--max-client-waiting") != std::string::npos);
    }
    store_stats st = s.Stats();
    CHECK(st.waiting_gets == 4);
    CHECK(st.refused_client_waiting == 6);
    CHECK(st.waiting_bytes > 0);
    CHECK(RawObjectCount(c, 2).has_value());  // still connected and served
    // Another client is not held back by this one's limit.
    RawConn other(s.store.socket());
    Handshake(other);
    REQUIRE(other.Send(GetMsg(3, {IdOf("later-10")}, -1)));
    CHECK(test::WaitFor([&] { return s.Stats().waiting_gets == 5; }));
    // The objects come: every get that waited is answered.
    for (uint64_t seq = 10; seq < 14; seq++) {
      store_object_id id = CIdOf("later-" + std::to_string(seq));
      REQUIRE(store_put(s.good, &id, &seq, sizeof seq, nullptr) == STORE_OK);
      Reply r;
      REQUIRE(ExpectReply(c, seq, Body::GetReply, &r));
      CHECK(r.msg->body_as_GetReply()->objects()->Get(0)->status() == 0);
    }
    Reply r;
    REQUIRE(ExpectReply(other, 3, Body::GetReply, &r));
    CHECK(s.Stats().waiting_bytes == 0);
    for (uint64_t seq = 10; seq < 14; seq++) {
      store_object_id id = CIdOf("later-" + std::to_string(seq));
      CHECK(store_delete(s.good, &id) == STORE_OK);
    }
  }
  s.CheckBaseline(base_fds);
  s.CheckServes();
  CHECK(LogLines(s.store, "limit --max-client-waiting") == 1);
}

// n connections, each sending per_conn requests in one write (msg(i, k) is request k of
// connection i) and reading none of the replies.
std::vector<std::unique_ptr<RawConn>> Flood(const std::string& socket, int n, int per_conn,
                                            const std::function<Bytes(int, int)>& msg) {
  std::vector<std::unique_ptr<RawConn>> conns;
  for (int i = 0; i < n; i++) {
    conns.push_back(std::make_unique<RawConn>(socket));
    REQUIRE(Handshake(*conns.back()) > 0);
    Bytes batch;
    for (int k = 0; k < per_conn; k++) {
      Bytes m = msg(i, k);
      batch.insert(batch.end(), m.begin(), m.end());
    }
    REQUIRE(conns.back()->Send(batch));
  }
  return conns;
}

// n connections, each sending per_conn creates of `size` bytes on `device` (-1: host memory)
// that wait without end (named "waits-<i>-<k>", request k numbered 100 + k), reading nothing.
std::vector<std::unique_ptr<RawConn>> FloodWaitingCreates(const std::string& socket, int n,
                                                          int per_conn, uint64_t size,
                                                          int32_t device = -1) {
  return Flood(socket, n, per_conn, [=](int i, int k) {
    CreateArgs a;
    a.key = "waits-" + std::to_string(i) + "-" + std::to_string(k);
    a.device = device;
    a.data_size = size;
    a.timeout_ms = -1;
    return CreateMsg(100 + static_cast<uint64_t>(k), a);
  });
}

// A connection of its own that asks for the server's stats.
class StatsProbe {
 public:
  explicit StatsProbe(const std::string& socket) : conn_(socket) { REQUIRE(Handshake(conn_) > 0); }
  // f applied to a fresh StatsReply.
  template <class F>
  auto Read(F f) {
    REQUIRE(conn_.Send(StatsMsg(++seq_)));
    Reply r;
    REQUIRE(ExpectReply(conn_, seq_, Body::StatsReply, &r));
    return f(*r.msg->body_as_StatsReply());
  }

 private:
  RawConn conn_;
  uint64_t seq_ = 1;  // the handshake's
};

// 262,144 gets waiting on one id (256 connections of 1,024, inside every default limit) all end
// at its seal. Each used to leave the id's list of waiters by a search of that list: the seal
// held the loop for about 23 s in a release build, a minute under sanitizers, and the put's
// reply did not come within the usual reply wait. Now each leaves in O(1).
TEST_CASE("a quarter million gets waiting on one id all end at its seal in linear time") {
  test::TestStore s("64M");
  REQUIRE(s.started());
  constexpr int kConns = 256, kGets = 1024;
  const proto::ObjectId id = IdOf("awaited");
  std::vector<std::unique_ptr<RawConn>> conns =
      Flood(s.socket(), kConns, kGets, [&](int, int k) {
        return GetMsg(100 + static_cast<uint64_t>(k), {id}, -1);
      });
  StatsProbe probe(s.socket());
  auto waiting = [&] { return probe.Read([](const auto& st) { return st.waiting_gets(); }); };
  REQUIRE(test::WaitFor([&] { return waiting() == uint64_t{kConns} * kGets; },
                        std::chrono::seconds(120)));

  RawConn writer(s.socket());
  REQUIRE(Handshake(writer) > 0);
  CreateArgs put;
  put.key = "awaited";
  put.data = Bytes(16, 'x');
  REQUIRE(writer.Send(CreateMsg(2, put)));
  Reply r;
  REQUIRE(ExpectReply(writer, 2, Body::CreateReply, &r));
  CHECK(waiting() == 0);
  // Every get got its object.
  for (auto& c : conns) {
    for (int k = 0; k < kGets; k++) {
      Reply g;
      REQUIRE(c->Next(&g) == Got::kMessage);
      REQUIRE(g.msg->status() == 0);
      REQUIRE(g.msg->body_type() == Body::GetReply);
    }
  }
  CHECK(s.Alive());
}

// 262,144 creates waiting for room (256 connections of 1,024), whose clients then go, the last
// to queue first. Each used to be found by a search of the queue from its front: the
// disconnects held the loop for longer than the usual reply wait. Now each leaves in O(1).
TEST_CASE("a quarter million waiting creates leave the queue in linear time when their clients go") {
  test::TestStore s("64M");
  REQUIRE(s.started());
  // Memory held by an object being written: the creates below wait for it.
  RawConn holder(s.socket());
  REQUIRE(Handshake(holder) > 0);
  CreateArgs hold;
  hold.key = "held";
  hold.data_size = 48ull << 20;
  REQUIRE(holder.Send(CreateMsg(2, hold)));
  Reply r;
  REQUIRE(ExpectReply(holder, 2, Body::CreateReply, &r));

  constexpr int kConns = 256, kCreates = 1024;
  std::vector<std::unique_ptr<RawConn>> conns =
      FloodWaitingCreates(s.socket(), kConns, kCreates, 32ull << 20);
  StatsProbe probe(s.socket());
  auto waiting = [&] { return probe.Read([](const auto& st) { return st.waiting_creates(); }); };
  REQUIRE(test::WaitFor([&] { return waiting() == uint64_t{kConns} * kCreates; },
                        std::chrono::seconds(120)));

  // While they leave the probe's stats requests are answered within the usual reply wait (a
  // stalled loop fails it), until none waits.
  while (!conns.empty()) conns.pop_back();  // the last to queue go first
  REQUIRE(test::WaitFor([&] { return waiting() == 0; }, std::chrono::seconds(120)));
  // The holder can still seal its object.
  REQUIRE(holder.Send(SealMsg(3, "held", r.msg->body_as_CreateReply()->uid())));
  Reply sealed;
  CHECK(ExpectReply(holder, 3, Body::SealReply, &sealed));
  CHECK(s.Alive());
}

Bytes ClientsMsg(uint64_t seq) {
  flatbuffers::FlatBufferBuilder b(64);
  return Finish(b, seq, Body::ClientsRequest, proto::CreateClientsRequest(b).Union());
}

// The list of clients (store-top asks for it every second) is counted as it changes. It used
// to walk every reader, pin and create of every client on each request: with 131,072 readers
// held, 4,000 requests sent at once held the loop past the usual reply wait.
TEST_CASE("the list of clients costs the same however many objects clients hold") {
  test::TestStore s("256M");
  REQUIRE(s.started());
  constexpr int kObjects = 131072, kChunk = 4096;
  RawConn holder(s.socket());
  REQUIRE(Handshake(holder) > 0);
  // kObjects small puts, then a reader of each, held.
  std::vector<proto::ObjectId> ids;
  uint64_t seq = 10;
  for (int at = 0; at < kObjects; at += kChunk) {
    Bytes batch;
    for (int k = at; k < at + kChunk; k++) {
      CreateArgs a;
      a.key = "held-" + std::to_string(k);
      a.data_size = 8;
      a.data = Bytes(8, 'h');
      ids.push_back(IdOf(a.key));
      Bytes m = CreateMsg(seq++, a);
      batch.insert(batch.end(), m.begin(), m.end());
    }
    REQUIRE(holder.Send(batch));
    for (int k = 0; k < kChunk; k++) {
      Reply r;
      REQUIRE(ExpectReply(holder, seq - kChunk + k, Body::CreateReply, &r));
    }
  }
  for (size_t at = 0; at < ids.size(); at += proto::kMaxIdsPerRequest) {
    std::vector<proto::ObjectId> part(ids.begin() + static_cast<ptrdiff_t>(at),
                                      ids.begin() + static_cast<ptrdiff_t>(at) +
                                          proto::kMaxIdsPerRequest);
    REQUIRE(holder.Send(GetMsg(seq, part)));
    Reply r;
    REQUIRE(ExpectReply(holder, seq++, Body::GetReply, &r));
  }
  StatsProbe probe(s.socket());
  const uint64_t open_bytes = probe.Read([](const auto& st) { return st.open_bytes(); });
  REQUIRE(open_bytes >= uint64_t{kObjects} * 8);
  // What the list says of the holder: every reader, and the bytes they hold.
  RawConn asker(s.socket());
  REQUIRE(Handshake(asker) > 0);
  REQUIRE(asker.Send(ClientsMsg(2)));
  Reply r;
  REQUIRE(ExpectReply(asker, 2, Body::ClientsReply, &r));
  int found = 0;
  for (const proto::ClientInfo* k : *r.msg->body_as_ClientsReply()->clients()) {
    if (k->readers() == 0) continue;
    found++;
    CHECK(k->readers() == uint64_t{kObjects});
    CHECK(k->pins() == 0);
    CHECK(k->bytes_held() == open_bytes);
  }
  CHECK(found == 1);

  // 4 connections ask for the list 1,000 times each in one write; the probe is answered within
  // the usual reply wait meanwhile.
  std::vector<std::unique_ptr<RawConn>> askers =
      Flood(s.socket(), 4, 1000, [](int, int k) { return ClientsMsg(100 + static_cast<uint64_t>(k)); });
  for (int i = 0; i < 3; i++) {
    CHECK(probe.Read([](const auto& st) { return st.open_bytes(); }) == open_bytes);
  }
  for (auto& a : askers) {
    for (int k = 0; k < 1000; k++) {
      Reply g;
      REQUIRE(a->Next(&g) == Got::kMessage);
      REQUIRE(g.msg->body_type() == Body::ClientsReply);
    }
  }
  // The holder goes: what the list counts goes with it.
  holder.Close();
  REQUIRE(test::WaitFor([&] { return probe.Read([](const auto& st) { return st.open_bytes(); }) == 0; }));
  REQUIRE(asker.Send(ClientsMsg(3)));
  REQUIRE(ExpectReply(asker, 3, Body::ClientsReply, &r));
  for (const proto::ClientInfo* k : *r.msg->body_as_ClientsReply()->clients()) {
    CHECK(k->readers() == 0);
    CHECK(k->bytes_held() == 0);
  }
  CHECK(s.Alive());
}

Bytes PinMsg(uint64_t seq, const std::string& key, bool pin) {
  flatbuffers::FlatBufferBuilder b(128);
  proto::ObjectId id = IdOf(key);
  if (pin) return Finish(b, seq, Body::PinRequest, proto::CreatePinRequest(b, &id).Union());
  return Finish(b, seq, Body::UnpinRequest, proto::CreateUnpinRequest(b, &id).Union());
}

// Puts n objects "<prefix><k>" of `size` bytes (each byte k) through c, 1024 creates a write,
// each write's replies read before the next; with pin_every > 0, every pin_every-th object is
// pinned right after its create. Requests are numbered from *seq on.
void PutMany(RawConn& c, uint64_t* seq, const std::string& prefix, int n, uint64_t size,
             int pin_every = 0) {
  constexpr int kBatch = 1024;
  for (int at = 0; at < n; at += kBatch) {
    Bytes batch;
    std::vector<std::pair<uint64_t, Body>> sent;
    auto add = [&](Bytes m, Body reply) {
      batch.insert(batch.end(), m.begin(), m.end());
      sent.emplace_back((*seq)++, reply);
    };
    for (int k = at; k < std::min(n, at + kBatch); k++) {
      CreateArgs a;
      a.key = prefix + std::to_string(k);
      a.data_size = size;
      a.data = Bytes(size, static_cast<uint8_t>(k));
      add(CreateMsg(*seq, a), Body::CreateReply);
      if (pin_every > 0 && k % pin_every == 0) add(PinMsg(*seq, a.key, true), Body::PinReply);
    }
    REQUIRE(c.Send(batch));
    for (const auto& [k, type] : sent) {
      Reply r;
      REQUIRE(ExpectReply(c, k, type, &r));
    }
  }
}

// A store with a spill dir whose n small objects ("spilled-<k>", 64 bytes of k) are on disk,
// and whose memory is all taken by an object being written: no restore fits, and nothing can
// be spilled to make room, until Release.
struct StalledRestores {
  test::TempDir spill;
  test::TestStore s;
  RawConn owner;
  uint64_t seq = 10;
  uint64_t hold_uid = 0;

  explicit StalledRestores(int n, std::vector<std::string> extra = {})
      : s("64M", With(std::move(extra), {"--spill-dir", spill.path})), owner(s.socket()) {
    REQUIRE(s.started());
    REQUIRE(Handshake(owner) > 0);
    PutMany(owner, &seq, "spilled-", n, 64);
    flatbuffers::FlatBufferBuilder eb(64);
    REQUIRE(owner.Send(Finish(eb, seq, Body::EvictRequest,
                              proto::CreateEvictRequest(eb, 1ull << 40).Union())));
    Reply r;
    REQUIRE(ExpectReply(owner, seq++, Body::EvictReply, &r));
    StatsProbe probe(s.socket());
    REQUIRE(probe.Read([](const auto& st) { return st.spilled_count(); }) == uint64_t(n));
    // Every free page (jemalloc's unused ones are purged for it).
    CreateArgs hold;
    hold.key = "holds-the-memory";
    hold.data_size = probe.Read([](const auto& st) { return st.capacity_bytes() - st.used_bytes(); }) &
                     ~uint64_t{4095};
    REQUIRE(owner.Send(CreateMsg(seq, hold)));
    REQUIRE(ExpectReply(owner, seq++, Body::CreateReply, &r));
    hold_uid = r.msg->body_as_CreateReply()->uid();
  }
  static std::vector<std::string> With(std::vector<std::string> a, std::vector<std::string> b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
  }
  // Room comes.
  void Release() {
    REQUIRE(owner.Send(AbortMsg(seq, "holds-the-memory", hold_uid)));
    Reply r;
    REQUIRE(ExpectReply(owner, seq++, Body::AbortReply, &r));
  }
};

// Reads the replies to the n gets each connection sent, each of one object: all find it.
void ExpectObjects(std::vector<std::unique_ptr<RawConn>>& conns, int n) {
  for (auto& c : conns) {
    for (int k = 0; k < n; k++) {
      Reply g;
      REQUIRE(c->Next(&g) == Got::kMessage);
      REQUIRE(g.msg->status() == 0);
      REQUIRE(g.msg->body_type() == Body::GetReply);
      REQUIRE(g.msg->body_as_GetReply()->objects()->Get(0)->status() == 0);
    }
  }
}

// Gets of objects on disk while no room can be made: their restores queue until room comes.
// Each new one used to rescan the whole queue (Spiller::Stall): 32,768 gets sent at once held
// the loop past the usual reply wait. Now each is looked at once. Then, when room came, every
// queued restore started at once and each opened its spill file: the descriptors ran out, and
// the gets failed with STORE_ECORRUPT. Now at most Spiller::kMaxRestoreJobs run at a time.
TEST_CASE("gets of spilled objects queue their restores in linear time while no room can be made") {
  constexpr int kConns = 32, kGets = 1024;
  StalledRestores st(kConns * kGets);
  std::vector<std::unique_ptr<RawConn>> conns = Flood(st.s.socket(), kConns, kGets, [](int i, int k) {
    return GetMsg(100 + static_cast<uint64_t>(k), {IdOf("spilled-" + std::to_string(i * kGets + k))},
                  -1);
  });
  StatsProbe probe(st.s.socket());
  auto waiting = [&] { return probe.Read([](const auto& x) { return x.waiting_gets(); }); };
  REQUIRE(test::WaitFor([&] { return waiting() == uint64_t{kConns} * kGets; },
                        std::chrono::seconds(120)));
  CHECK(probe.Read([](const auto& x) { return x.spilled_count(); }) == uint64_t{kConns} * kGets);
  st.Release();
  ExpectObjects(conns, kGets);
  CHECK(waiting() == 0);
  CHECK(st.s.Alive());
}

// 262,144 gets of one object on disk while no room can be made, 65,536 per connection. Each
// new one used to walk every get already waiting for that id, to tell those that asked not to
// wait (timeout 0): quadratic, and the server reads tens of thousands of them in one turn, so
// the loop was held far past the usual reply wait. Those come first in the id's list now. One
// that asks not to wait still hears at once that there is no room.
TEST_CASE("a quarter million gets of one spilled object wait in linear time while no room can be made") {
  constexpr int kConns = 4, kGets = 65536;
  StalledRestores st(1, {"--max-client-waiting", std::to_string(kGets)});
  std::vector<std::unique_ptr<RawConn>> conns = Flood(st.s.socket(), kConns, kGets, [](int, int k) {
    return GetMsg(100 + static_cast<uint64_t>(k), {IdOf("spilled-0")}, -1);
  });
  StatsProbe probe(st.s.socket());
  auto waiting = [&] { return probe.Read([](const auto& x) { return x.waiting_gets(); }); };
  REQUIRE(test::WaitFor([&] { return waiting() == uint64_t{kConns} * kGets; },
                        std::chrono::seconds(120)));
  RawConn impatient(st.s.socket());
  REQUIRE(Handshake(impatient) > 0);
  REQUIRE(impatient.Send(GetMsg(2, {IdOf("spilled-0")}, 0)));
  Reply r;
  REQUIRE(ExpectReply(impatient, 2, Body::GetReply, &r));
  CHECK(r.msg->body_as_GetReply()->objects()->Get(0)->status() == STORE_ENOSPACE);
  st.Release();
  ExpectObjects(conns, kGets);
  CHECK(waiting() == 0);
  CHECK(st.s.Alive());
}

// A create that neither drops nor spills could fit waits (the store full of 20 KiB objects, one
// in 40 pinned, so that no run of its size could ever form), while 4 connections pin and unpin
// an object 16,384 times each. Each unpin puts an object back in the eviction order, which made
// the store ask again whether freeing every candidate could make the create's run, over all
// 12,000 of them (Server::RoomPossible, O(n log n)), and in drop mode choose its victims again:
// the 131,072 requests took 19 s (24 s with a spill directory), against 0.17 s with no create
// waiting. A "no" now stands for 20 times as long as finding it took, and a drop asks it first
// (Server::NoRoomStands): 0.26 s.
TEST_CASE("a create waiting on holes no drop or spill could join costs the others nothing while "
          "objects come and go from the eviction order") {
  test::TempDir spill;
  std::vector<std::string> mode = {"--when-full", "drop"};
  SUBCASE("spilling") { mode = {"--spill-dir", spill.path}; }
  SUBCASE("dropping") {}
  test::TestStore s("256M", mode);
  REQUIRE(s.started());
  RawConn owner(s.socket());
  REQUIRE(Handshake(owner) > 0);
  StatsProbe probe(s.socket());
  const uint64_t capacity = probe.Read([](const auto& st) { return st.capacity_bytes(); });
  constexpr uint64_t kSize = 20 << 10;
  const int n = static_cast<int>((capacity - (24ull << 20)) / kSize);
  uint64_t seq = 10;
  PutMany(owner, &seq, "holed-", n, kSize, 40);
  REQUIRE(probe.Read([](const auto& st) { return st.total_dropped_objects(); }) == 0);
  const std::string churned = "holed-" + std::to_string(n - 2);  // the last ones stay in memory
  // 64 MiB: more than the free run at the top and the pinned objects' neighbours could make.
  CreateArgs big;
  big.key = "waits-on-holes";
  big.data_size = 64ull << 20;
  big.timeout_ms = -1;
  RawConn waiter(s.socket());
  REQUIRE(Handshake(waiter) > 0);
  REQUIRE(waiter.Send(CreateMsg(2, big)));
  REQUIRE(test::WaitFor([&] { return probe.Read([](const auto& st) { return st.waiting_creates(); }) == 1; }));

  constexpr int kConns = 4, kPairs = 16384;
  auto t0 = std::chrono::steady_clock::now();
  std::vector<std::unique_ptr<RawConn>> conns = Flood(s.socket(), kConns, 2 * kPairs, [&](int, int k) {
    return PinMsg(100 + static_cast<uint64_t>(k), churned, k % 2 == 0);
  });
  // Served while they are.
  RawConn witness(s.socket());
  REQUIRE(Handshake(witness) > 0);
  REQUIRE(witness.Send(StatsMsg(2)));
  Reply r;
  REQUIRE(ExpectReply(witness, 2, Body::StatsReply, &r));
  for (auto& c : conns) {
    for (int k = 0; k < 2 * kPairs; k++) {
      REQUIRE(c->Next(&r) == Got::kMessage);
      REQUIRE(r.msg->status() == 0);
    }
  }
  // All of them answered within one reply wait (a quarter of a second here; 19 s before).
  const auto took = std::chrono::steady_clock::now() - t0;
  CHECK_MESSAGE(took < kReplyTimeout,
                "the pins and unpins took " << std::chrono::duration<double>(took).count() << " s");
  CHECK(probe.Read([](const auto& st) { return st.waiting_creates(); }) == 1);
  CHECK(probe.Read([](const auto& st) { return st.total_dropped_objects(); }) == 0);
  CHECK(s.Alive());
}

// store_evict waits for the spill jobs it started. Every evict used to wait outside the
// waiting limits: one connection that sent evicts of a byte each by the thousand, in one write,
// had the store start a spill job, and a spill file, for each of them at once. They count toward
// --max-client-waiting now, as gets and creates do; a client that goes drops its count.
TEST_CASE("evicts waiting for their spills count toward --max-client-waiting") {
  test::TempDir spill;
  test::TestStore s("64M", {"--spill-dir", spill.path, "--max-client-waiting", "8"});
  REQUIRE(s.started());
  RawConn owner(s.socket());
  REQUIRE(Handshake(owner) > 0);
  uint64_t seq = 10;
  PutMany(owner, &seq, "evictable-", 256, 4096);
  auto evicts = [](int n) {
    Bytes b;
    for (int k = 0; k < n; k++) {
      flatbuffers::FlatBufferBuilder eb(64);
      Bytes m = Finish(eb, 100 + static_cast<uint64_t>(k), Body::EvictRequest,
                       proto::CreateEvictRequest(eb, 1).Union());
      b.insert(b.end(), m.begin(), m.end());
    }
    return b;
  };
  constexpr int kEvicts = 64;
  RawConn evictor(s.socket());
  REQUIRE(Handshake(evictor) > 0);
  REQUIRE(evictor.Send(evicts(kEvicts)));
  int served = 0, refused = 0;
  for (int k = 0; k < kEvicts; k++) {
    Reply r;
    REQUIRE(evictor.Next(&r) == Got::kMessage);
    if (r.msg->status() == STORE_ELIMIT) {
      refused++;
    } else {
      REQUIRE(r.msg->status() == 0);
      served++;
    }
  }
  MESSAGE(served << " evicts served, " << refused << " refused");
  CHECK(refused > 0);
  CHECK(served >= 8);
  StatsProbe probe(s.socket());
  CHECK(probe.Read([](const auto& st) { return st.spilled_count(); }) == uint64_t(served));
  // Those answered count no more; a client that goes with evicts waiting leaves no count
  // behind.
  {
    RawConn gone(s.socket());
    REQUIRE(Handshake(gone) > 0);
    REQUIRE(gone.Send(evicts(8)));
  }
  REQUIRE(evictor.Send(evicts(8)));
  for (int k = 0; k < 8; k++) {
    Reply r;
    REQUIRE(evictor.Next(&r) == Got::kMessage);
    CHECK(r.msg->status() == 0);
  }
  CHECK(test::WaitFor([&] {
    return probe.Read([](const auto& st) { return st.waiting_bytes(); }) == 0 &&
           probe.Read([](const auto& st) { return st.client_count(); }) == 3;
  }));
  CHECK(s.Alive());
}

TEST_CASE("clients that never read their replies are disconnected past --max-backlog, the largest first") {
  Attacked s("64M", {"--max-backlog", "32M", "--max-client-backlog", "64M"});
  Witnesses before(s);
  for (int i = 0; i < 8; i++) before.Put("before-" + std::to_string(i));
  const size_t base_fds = s.ServerFds();
  const uint64_t rss_before = RssKib(s.store.pid());
  // Three clients ask for about 24 MiB of replies each (gets of 65,536 absent ids, 3 MiB of
  // reply each) and read nothing: 72 MiB, over the 32 MiB all of them may have queued.
  constexpr int kAttackers = 3, kGets = 8;
  std::vector<std::unique_ptr<RawConn>> conns;
  uint64_t rss_peak = 0;
  for (int k = 0; k < kAttackers; k++) {
    conns.push_back(std::make_unique<RawConn>(s.store.socket()));
    Handshake(*conns.back());
    for (int i = 0; i < kGets; i++) {
      if (!conns.back()->Send(AbsentGetMsg(10 + i, proto::kMaxIdsPerRequest))) break;
    }
    // Then a get that waits: once it waits (or its client is gone) the server has handled
    // everything this attacker sent.
    conns.back()->Send(GetMsg(99, {IdOf("sync-" + std::to_string(k))}, -1));
    REQUIRE(test::WaitFor([&] {
      store_stats st = s.Stats();
      return st.waiting_gets + st.closed_backlog == static_cast<uint64_t>(k + 1);
    }));
    rss_peak = std::max(rss_peak, RssKib(s.store.pid()));
    store_stats st = s.Stats();
    CHECK(st.backlog_bytes <= (32u << 20));
  }
  // At least one was disconnected, for the largest backlog; the others keep their connection.
  CHECK(test::WaitFor([&] { return s.Stats().closed_backlog >= 1; }));
  store_stats st = s.Stats();
  MESSAGE("server RSS " << rss_before / 1024 << " MiB -> peak " << rss_peak / 1024 << " MiB; "
                        << st.closed_backlog << " clients disconnected, backlog now "
                        << st.backlog_bytes / 1024 << " KiB");
  CHECK(st.closed_backlog < kAttackers);
  CHECK(st.closed_client_backlog == 0);
  if (kRssIsHeap) {
    CHECK(rss_peak < rss_before + 96 * 1024);  // 32 MiB queued and the gets' buffers, not 72 MiB
  }
  s.CheckServes();
  CHECK(LogLines(s.store, "limit --max-backlog") >= 1);
  CHECK(LogLines(s.store, "limit --max-backlog") <= 3);
  // The survivors read their replies, every one whole.
  size_t survivors = 0;
  for (auto& c : conns) {
    size_t n = 0;
    Reply r;
    Got g;
    while ((g = c->Next(&r, Ms{2000})) == Got::kMessage) n++;
    if (n == kGets) survivors++;
  }
  CHECK(survivors == kAttackers - st.closed_backlog);
  conns.clear();
  CHECK(test::WaitFor([&] { return s.Stats().backlog_bytes == 0; }));
  before.CheckIntact();
  before.DeleteAll();
  s.CheckBaseline(base_fds);
}

TEST_CASE("a client that never reads its replies is disconnected past --max-client-backlog") {
  Attacked s("64M", {"--max-client-backlog", "16M"});
  const size_t base_fds = s.ServerFds();
  {
    RawConn c(s.store.socket());
    Handshake(c);
    for (int i = 0; i < 12; i++) {
      if (!c.Send(AbsentGetMsg(10 + i, proto::kMaxIdsPerRequest))) break;
    }
    CHECK(test::WaitFor([&] { return s.Stats().closed_client_backlog == 1; }));
    size_t n = 0;
    CHECK(c.Drain(&n) != Got::kTimeout);  // the connection is closed after what it was sent
  }
  s.CheckBaseline(base_fds);
  CHECK(s.Stats().backlog_bytes == 0);
  s.CheckServes();
  CHECK(LogLines(s.store, "limit --max-client-backlog") == 1);
}

TEST_CASE("partial frames past --max-partial-bytes: the client holding the most is disconnected") {
  Attacked s("64M", {"--max-partial-bytes", "16M"});
  Witnesses before(s);
  for (int i = 0; i < 8; i++) before.Put("before-" + std::to_string(i));
  const size_t base_fds = s.ServerFds();
  const uint64_t rss_before = RssKib(s.store.pid());
  const auto t0 = std::chrono::steady_clock::now();
  // 200 connections each start a message of 4 MiB and send 2 MiB of it: 400 MiB of buffers
  // the server would hold (800 MiB reserved for them). It keeps 16 MiB.
  constexpr int kConns = 200;
  const Bytes head = Prefix(proto::kMaxRequestBytes);
  const Bytes body(2u << 20, 0x42);
  std::vector<std::unique_ptr<RawConn>> conns;
  for (int k = 0; k < kConns; k++) {
    conns.push_back(std::make_unique<RawConn>(s.store.socket()));
    REQUIRE(conns.back()->ok());
    conns.back()->Send(Concat({head, body}));  // fails once the server has closed it
  }
  CHECK(test::WaitFor([&] { return s.Stats().closed_partial >= kConns - 4; }));
  const auto burst_ms =
      std::chrono::duration_cast<Ms>(std::chrono::steady_clock::now() - t0).count();
  store_stats st = s.Stats();
  const uint64_t rss_after = RssKib(s.store.pid());
  MESSAGE("server RSS " << rss_before / 1024 << " MiB -> " << rss_after / 1024 << " MiB; "
                        << st.closed_partial << " clients disconnected, partial "
                        << st.partial_bytes / 1024 << " KiB");
  CHECK(st.partial_bytes <= (16u << 20));
  if (kRssIsHeap) {
    CHECK(rss_after < rss_before + 48 * 1024);  // not 400 MiB
  }
  // Those disconnected got STORE_ELIMIT first.
  size_t told = 0;
  for (auto& c : conns) {
    Reply r;
    if (c->Next(&r, Ms{200}) == Got::kMessage && r.msg->status() == STORE_ELIMIT) told++;
  }
  CHECK(told >= kConns - 4);
  s.CheckServes();
  CHECK(LogLines(s.store, "limit --max-partial-bytes") >= 1);
  // Once per second or two of the burst (which takes longer on a slow or sanitized build).
  CHECK(LogLines(s.store, "limit --max-partial-bytes") <=
        std::max<size_t>(4, static_cast<size_t>(burst_ms / 1000 + 2)));
  conns.clear();
  CHECK(test::WaitFor([&] { return s.Stats().partial_bytes == 0; }));
  before.CheckIntact();
  before.DeleteAll();
  s.CheckBaseline(base_fds);
}

TEST_CASE("a connection that sent one large request does not keep its buffer") {
  Attacked s;
  RawConn c(s.store.socket());
  Handshake(c);
  // A get of 65,536 ids: a request of 1.3 MiB, in several reads.
  REQUIRE(c.Send(AbsentGetMsg(2, proto::kMaxIdsPerRequest)));
  Reply r;
  REQUIRE(ExpectReply(c, 2, Body::GetReply, &r));
  CHECK(s.Stats().partial_bytes == 0);
  // Half a message is held (in a buffer of its size), and given back when it is complete.
  const Bytes m = AbsentGetMsg(3, proto::kMaxIdsPerRequest);
  REQUIRE(c.Send(m.data(), m.size() / 2));
  CHECK(test::WaitFor([&] { return s.Stats().partial_bytes >= m.size() / 2; }));
  CHECK(s.Stats().partial_bytes < m.size() + (64u << 10));
  REQUIRE(c.Send(m.data() + m.size() / 2, m.size() - m.size() / 2));
  REQUIRE(ExpectReply(c, 3, Body::GetReply, &r));
  CHECK(s.Stats().partial_bytes == 0);
  CHECK(RawObjectCount(c, 4).has_value());
}

TEST_CASE("connections past --max-clients get STORE_ELIMIT with a message, logged once") {
  Attacked s("64M", {"--max-clients", "8"});
  CHECK(s.Stats().limit_clients == 8);
  const size_t base_fds = s.ServerFds();
  Witnesses before(s);
  before.Put("before");
  std::vector<std::unique_ptr<RawConn>> conns;
  for (int i = 0; i < 7; i++) {
    conns.push_back(std::make_unique<RawConn>(s.store.socket()));
    if (i % 2 == 0) Handshake(*conns.back());
  }
  CHECK(test::WaitFor([&] { return s.Clients() == 8; }));
  // A library client: STORE_ELIMIT, and the message names the flag.
  for (int i = 0; i < 20; i++) {
    store_client* more = nullptr;
    CHECK(store_client_connect(&more, s.store.socket().c_str(), nullptr) == STORE_ELIMIT);
    CHECK(more == nullptr);
    std::string msg = store_last_error_message();
    CHECK(msg.find("--max-clients") != std::string::npos);
    if (i == 0) MESSAGE("connect: " << msg);
  }
  // A raw one: the error (seq 0), then the end of the connection.
  for (int i = 0; i < 20; i++) {
    RawConn c(s.store.socket());
    REQUIRE(c.ok());
    std::string e = ExpectError(c, 0, STORE_ELIMIT);
    CHECK(e.find("--max-clients") != std::string::npos);
    ExpectClosed(c);
  }
  store_stats st = s.Stats();
  CHECK(st.refused_clients == 40);
  CHECK(st.client_count == 8);
  CHECK(s.ServerFds() <= base_fds + 7);
  // One line for the burst (it may straddle a second).
  CHECK(LogLines(s.store, "limit --max-clients") >= 1);
  CHECK(LogLines(s.store, "limit --max-clients") <= 2);
  // A place frees up: the next client is served.
  conns.pop_back();
  CHECK(test::WaitFor([&] { return s.Clients() == 7; }));
  s.CheckServes();
  conns.clear();
  before.CheckIntact();
  before.DeleteAll();
  s.CheckBaseline(base_fds);
}

TEST_CASE("a store with few descriptors serves as many clients as they allow and refuses the rest") {
  // The server raises its soft descriptor limit to the hard one: start it with both at 300
  // (through a shell that sets them, then runs the store in its place).
  test::TempDir dir;
  const std::string wrapper = dir / "store-with-300-fds";
  {
    std::ofstream f(wrapper);
    f << "#!/bin/sh\nulimit -n 300 || exit 1\nexec '" << test::StoreBin() << "' \"$@\"\n";
  }
  REQUIRE(chmod(wrapper.c_str(), 0755) == 0);
  const std::string saved = test::StoreBin();
  setenv("STORE_BIN", wrapper.c_str(), 1);
  std::optional<Attacked> s;
  s.emplace("64M");
  setenv("STORE_BIN", saved.c_str(), 1);
  store_stats st = s->Stats();
  CHECK(st.fd_limit == 300);
  const uint64_t max = st.limit_clients;
  CHECK(max > 50);
  CHECK(max < 150);  // two descriptors per client after a reserve
  const size_t base_fds = s->ServerFds();
  std::vector<std::unique_ptr<RawConn>> conns;
  size_t refused = 0;
  for (int i = 0; i < 400; i++) {
    auto c = std::make_unique<RawConn>(s->store.socket());
    REQUIRE(c->ok());
    if (i < static_cast<int>(max) - 1) {
      if (i % 2 == 0) Handshake(*c);
      conns.push_back(std::move(c));
      continue;
    }
    Reply r;
    if (c->Next(&r, Ms{2000}) == Got::kMessage && r.msg->status() == STORE_ELIMIT) refused++;
  }
  CHECK(refused == 400 - (max - 1));
  CHECK(test::WaitFor([&] { return s->ServerFds() == base_fds + max - 1; }));
  CHECK(s->ServerFds() < 300);
  MESSAGE("descriptor limit 300: " << max << " clients served, " << refused << " refused, "
                                   << s->ServerFds() << " descriptors open");
  CHECK(s->Stats().accept_failures == 0);  // refused before it ran out of descriptors
  conns.pop_back();
  CHECK(test::WaitFor([&] { return s->Clients() == max - 1; }));
  s->CheckServes();
  conns.clear();
  s->CheckBaseline(base_fds);
}

TEST_CASE("the list of clients fits in one reply at --max-clients' cap") {
  // Each entry is at most kMaxClientInfoBytes (1,280): a name of 256 bytes, each escaped to 4.
  Attacked s("64M", {"--max-clients", "32768"});
  constexpr int kConns = 50;
  std::vector<std::unique_ptr<RawConn>> conns;
  for (int i = 0; i < kConns; i++) {
    conns.push_back(std::make_unique<RawConn>(s.store.socket()));
    REQUIRE(conns.back()->Send(ConnectMsg(1, proto::kProtocolVersion,
                                          std::string(proto::kMaxClientName, '\x01'))));
    Reply r;
    REQUIRE(ExpectReply(*conns.back(), 1, Body::ConnectReply, &r));
  }
  flatbuffers::FlatBufferBuilder b(64);
  Bytes req = Finish(b, 2, Body::ClientsRequest, proto::CreateClientsRequest(b).Union());
  REQUIRE(conns[0]->Send(req));
  Reply r;
  REQUIRE(ExpectReply(*conns[0], 2, Body::ClientsReply, &r));
  REQUIRE(r.msg->body_as_ClientsReply()->clients()->size() == kConns + 1);
  const size_t per_client = r.size / (kConns + 1);
  MESSAGE("a client with the longest name takes " << per_client << " bytes of the reply");
  CHECK(per_client <= 1280);
  CHECK(32768 * 1280 + 4096 < proto::kMaxReplyBytes);
  // A larger cap is refused at start.
  const pid_t pid = test::Spawn({test::StoreBin(), "--max-clients", "32769", "--socket",
                                 s.store.dir() + "/other.sock"},
                                "/dev/null");
  const int status = test::WaitExit(pid);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 2);
}

TEST_CASE("GPU chunk replies a client does not read are bounded by --max-client-gpu-fds") {
  Attacked s("64M", {"--gpu-backend", "memfd-standin", "--gpu-memory", "8M",
                     "--gpu-chunk-size", "4M", "--max-client-gpu-fds", "8"});
  // A GPU object makes chunk 0.
  store_object_id id = CIdOf("on-device");
  store_create_options o = STORE_CREATE_OPTIONS_INIT;
  o.device = 0;
  store_writer* w = nullptr;
  REQUIRE(store_create(s.good, &w, &id, 1000, &o) == STORE_OK);
  REQUIRE(store_writer_seal(w) == STORE_OK);
  const size_t base_fds = s.ServerFds();
  {
    RawConn c(s.store.socket());
    Handshake(c);
    // 3,000 requests for the chunk, sent at once, none of the replies read: each reply keeps a
    // duplicate of the chunk's descriptor open in the server until it is written (until libuv
    // reports it written), so most of them would keep one open.
    constexpr int kRequests = 3000;
    Bytes batch;
    for (int i = 0; i < kRequests; i++) {
      Bytes m = GpuChunkMsg(10 + i, 0, 0);
      batch.insert(batch.end(), m.begin(), m.end());
    }
    Bytes sync = GetMsg(5, {IdOf("gpu-sync")}, -1);  // waits once the rest is handled
    batch.insert(batch.end(), sync.begin(), sync.end());
    REQUIRE(c.Send(batch));
    REQUIRE(test::WaitFor([&] { return s.Stats().waiting_gets == 1; }));
    store_stats st = s.Stats();
    const size_t fds = s.ServerFds();
    MESSAGE("server descriptors " << base_fds << " -> " << fds << " with " << st.pending_fds
                                  << " pending, " << st.refused_gpu_fds << " refused");
    CHECK(st.pending_fds <= 8);
    CHECK(fds <= base_fds + 1 + 8);
    s.CheckServes();
    // Every request is answered, in order: a chunk with its descriptor or STORE_ELIMIT.
    size_t chunks = 0, refused = 0;
    for (int i = 0; i < kRequests; i++) {
      Reply r;
      REQUIRE(c.Next(&r) == Got::kMessage);
      REQUIRE(r.msg->seq() == static_cast<uint64_t>(10 + i));
      if (r.msg->status() == 0) {
        CHECK(r.fds == 1);
        chunks++;
      } else {
        CHECK(r.msg->status() == STORE_ELIMIT);
        refused++;
      }
    }
    CHECK(refused == s.Stats().refused_gpu_fds);
    CHECK(chunks + refused == kRequests);
    MESSAGE(chunks << " chunk replies, " << refused << " refused");
  }
  s.CheckBaseline(base_fds);
  CHECK(s.Stats().pending_fds == 0);
  CHECK(LogLines(s.store, "limit --max-client-gpu-fds") >= 1);
  CHECK(store_delete(s.good, &id) == STORE_OK);
}

// ------------------------------------------------------------------------------------------
// GPU requests.

TEST_CASE("GPU requests to a store without GPU objects get STORE_ENOTSUP, and it stays up") {
  Attacked a;
  size_t fds = a.ServerFds();
  {
    RawConn c(a.store.socket());
    Handshake(c);
    REQUIRE(c.Send(GpuChunkMsg(2, 0, 0)));
    CHECK(ExpectError(c, 2, STORE_ENOTSUP).find("--gpu-memory") != std::string::npos);
    CreateArgs on_gpu;
    on_gpu.device = 0;
    REQUIRE(c.Send(CreateMsg(3, on_gpu)));
    CHECK(ExpectError(c, 3, STORE_ENOTSUP).find("--gpu-memory") != std::string::npos);
    CreateArgs bad;
    bad.device = -7;
    REQUIRE(c.Send(CreateMsg(4, bad)));
    ExpectError(c, 4, STORE_EINVAL);
    CHECK(RawObjectCount(c, 5) == 0u);
  }
  a.CheckServes();
  a.CheckBaseline(fds);
}

// The memfd stand-in is host memory in place of device memory: these cases test the server's
// checks of GPU requests, not a GPU.
// GPU creates waiting for device memory (memfd stand-in). Each GPU free used to walk every
// waiting create of every device, and each new create looked through them for one on its
// device: 32,768 creates and aborts of small objects, sent at once while 262,144 creates of
// whole chunks waited, held the loop past the usual reply wait. Each device now has its own
// queue, served from its head.
TEST_CASE("GPU creates that wait for device memory cost the others nothing (memfd stand-in)") {
  test::TestStore s("64M", {"--gpu-backend", "memfd-standin", "--gpu-memory", "8M",
                            "--gpu-chunk-size", "4M"});
  REQUIRE(s.started());
  // A chunk and half of the other taken by objects being written: 2 MiB stay free.
  RawConn holder(s.socket());
  REQUIRE(Handshake(holder) > 0);
  std::vector<uint64_t> held;
  for (uint64_t k = 0; k < 2; k++) {
    CreateArgs a;
    a.key = "device-" + std::to_string(k);
    a.device = 0;
    a.data_size = k == 0 ? 4u << 20 : 2u << 20;
    REQUIRE(holder.Send(CreateMsg(2 + k, a)));
    Reply r;
    REQUIRE(ExpectReply(holder, 2 + k, Body::CreateReply, &r));
    held.push_back(r.msg->body_as_CreateReply()->uid());
  }
  constexpr int kConns = 256, kWaits = 1024, kPairs = 32768;
  std::vector<std::unique_ptr<RawConn>> waiters =
      FloodWaitingCreates(s.socket(), kConns, kWaits, 4u << 20, 0);
  StatsProbe probe(s.socket());
  auto waiting = [&] { return probe.Read([](const auto& st) { return st.waiting_creates(); }); };
  REQUIRE(test::WaitFor([&] { return waiting() == uint64_t{kConns} * kWaits; },
                        std::chrono::seconds(120)));
  // Small objects that fit the free 2 MiB, created (not waiting) and aborted at once.
  std::vector<std::unique_ptr<RawConn>> churn = Flood(s.socket(), 1, 2 * kPairs, [](int, int k) {
    const std::string key = "small-" + std::to_string(k / 2);
    if (k % 2 == 1) return AbortMsg(100 + static_cast<uint64_t>(k), key, 0);
    CreateArgs a;
    a.key = key;
    a.device = 0;
    a.data_size = 1u << 20;
    return CreateMsg(100 + static_cast<uint64_t>(k), a);
  });
  CHECK(waiting() == uint64_t{kConns} * kWaits);
  for (int k = 0; k < 2 * kPairs; k++) {
    Reply r;
    REQUIRE(churn[0]->Next(&r) == Got::kMessage);
    REQUIRE(r.msg->status() == 0);
  }
  // The device freed: the first two waiting get its chunks, in turn.
  for (uint64_t k = 0; k < 2; k++) {
    REQUIRE(holder.Send(AbortMsg(10 + k, "device-" + std::to_string(k), held[k])));
    Reply r;
    REQUIRE(ExpectReply(holder, 10 + k, Body::AbortReply, &r));
  }
  for (int k = 0; k < 2; k++) {
    Reply r;
    REQUIRE(waiters[0]->Next(&r) == Got::kMessage);
    CHECK(r.msg->status() == 0);
    CHECK(r.msg->seq() == 100 + static_cast<uint64_t>(k));
  }
  CHECK(waiting() == uint64_t{kConns} * kWaits - 2);
  waiters.clear();
  REQUIRE(test::WaitFor([&] { return waiting() == 0; }));
  CHECK(s.Alive());
}

TEST_CASE("bad GPU requests to a store with GPU objects (memfd stand-in) get clear errors") {
  Attacked a("64M", {"--gpu-backend", "memfd-standin", "--gpu-memory", "8M",
                     "--gpu-chunk-size", "4M"});
  size_t fds = a.ServerFds();
  {
    RawConn c(a.store.socket());
    Handshake(c);
    REQUIRE(c.Send(GpuChunkMsg(2, 5, 0)));
    CHECK(ExpectError(c, 2, STORE_EINVAL).find("device 5") != std::string::npos);
    REQUIRE(c.Send(GpuChunkMsg(3, -1, 0)));
    ExpectError(c, 3, STORE_EINVAL);
    // No chunk exists before the first GPU object.
    REQUIRE(c.Send(GpuChunkMsg(4, 0, 0)));
    CHECK(ExpectError(c, 4, STORE_EINVAL).find("no chunk 0") != std::string::npos);
    CreateArgs too_big;
    too_big.device = 0;
    too_big.data_size = (4u << 20) + 1;
    REQUIRE(c.Send(CreateMsg(5, too_big)));
    CHECK(ExpectError(c, 5, STORE_EINVAL).find("chunk") != std::string::npos);
    CreateArgs other_device;
    other_device.device = 3;
    REQUIRE(c.Send(CreateMsg(6, other_device)));
    CHECK(ExpectError(c, 6, STORE_EINVAL).find("serves 0") != std::string::npos);
    CreateArgs inline_gpu;
    inline_gpu.device = 0;
    inline_gpu.data = Bytes(16, 0x5A);
    REQUIRE(c.Send(CreateMsg(7, inline_gpu)));
    CHECK(ExpectError(c, 7, STORE_EINVAL).find("inline") != std::string::npos);
    // A good one, then its chunk comes with exactly one descriptor.
    CreateArgs good;
    good.key = "on-device";
    good.device = 0;
    good.data_size = 1000;
    good.metadata = Bytes(8, 0x11);
    REQUIRE(c.Send(CreateMsg(8, good)));
    Reply r;
    REQUIRE(ExpectReply(c, 8, Body::CreateReply, &r));
    auto* cr = r.msg->body_as_CreateReply();
    CHECK(cr->device() == 0);
    CHECK(cr->chunk() == 0);
    CHECK(cr->chunk_offset() % 256 == 0);
    CHECK(cr->data_size() == 1000);
    CHECK(cr->metadata_size() == 8);
    REQUIRE(c.Send(GpuChunkMsg(9, 0, 0)));
    Reply chunk;
    REQUIRE(ExpectReply(c, 9, Body::GpuChunkReply, &chunk));
    CHECK(chunk.fds == 1);
    CHECK(chunk.msg->num_fds() == 1);
    CHECK(chunk.msg->body_as_GpuChunkReply()->size() == 4u << 20);
    REQUIRE(c.Send(GpuChunkMsg(10, 0, 1)));
    ExpectError(c, 10, STORE_EINVAL);
    CHECK(RawObjectCount(c, 11) == 1u);
    // The connection closes with the object unsealed: the server aborts it.
  }
  a.CheckServes();
  a.CheckBaseline(fds + 1);  // the chunk made for the object stays for the server's life
  CHECK(a.Stats().object_count == 0);
}

// ------------------------------------------------------------------------------------------
// Well-formed requests with random fields, in random order.

namespace {

// One random request of any type a client may send, well-formed (it passes the verifier) but
// with fields drawn from edge values: ids from a small pool (so requests meet each other's
// objects), sizes from 0 to far beyond the memory, uids the connection was given and uids it
// never was, out-of-range enums, offsets and limits.
Bytes RandomRequest(std::mt19937_64& rng, uint64_t seq, const std::vector<uint64_t>& uids) {
  auto pick = [&](auto&& list) { return list[rng() % std::size(list)]; };
  auto key = [&] { return "chaos-" + std::to_string(rng() % 8); };
  auto some_ids = [&] {
    std::vector<proto::ObjectId> ids;
    for (int n = static_cast<int>(rng() % 4); n > 0; n--) ids.push_back(IdOf(key()));
    return ids;
  };
  auto some_uid = [&]() -> uint64_t {
    if (!uids.empty() && rng() % 4 != 0) return uids[rng() % uids.size()];
    return pick(std::vector<uint64_t>{0, 1, 2, 12345, UINT64_MAX});
  };
  flatbuffers::FlatBufferBuilder b(1024);
  switch (rng() % 19) {
    case 0:
    case 1: {
      CreateArgs a;
      a.key = key();
      a.data_size = pick(std::vector<uint64_t>{0, 1, 64, 4096, 70000, 1u << 20, 9u << 20,
                                               40u << 20, 1ull << 40, UINT64_MAX});
      if (rng() % 3 == 0) a.metadata = Bytes(rng() % 200, 0x5a);
      a.device = pick(std::vector<int32_t>{-1, -1, -1, 0, 7, -2});
      a.timeout_ms = pick(std::vector<int64_t>{0, 0, 20, -5});
      if (rng() % 3 == 0 && a.data_size <= proto::kInlinePutMax + 1) {
        // Inline data: mostly of the size announced, sometimes one byte short.
        size_t n = static_cast<size_t>(a.data_size);
        if (rng() % 4 == 0 && n > 0) n--;
        a.data = Bytes(n, 0xa5);
      }
      return CreateMsg(seq, a);
    }
    case 2: return SealMsg(seq, key(), some_uid());
    case 3: return AbortMsg(seq, key(), some_uid());
    case 4: return GetMsg(seq, some_ids(), pick(std::vector<int64_t>{0, 0, 20, -3}));
    case 5: {
      std::vector<uint64_t> release;
      for (int n = static_cast<int>(rng() % 3); n > 0; n--) release.push_back(some_uid());
      return ReleaseMsg(seq, release);
    }
    case 6: return ContainsMsg(seq, some_ids());
    case 7: return DeleteMsg(seq, some_ids());
    case 8: {
      proto::ObjectId id = IdOf(key());
      return Finish(b, seq, Body::InfoRequest, proto::CreateInfoRequest(b, &id).Union());
    }
    case 9: {
      flatbuffers::FlatBufferBuilder lb(64);
      uint64_t cursor = pick(std::vector<uint64_t>{0, 0, 1, 2, UINT64_MAX});
      uint32_t limit = pick(std::vector<uint32_t>{0, 1, 7, proto::kMaxListPage + 1, UINT32_MAX});
      return Finish(lb, seq, Body::ListRequest, proto::CreateListRequest(lb, cursor, limit).Union());
    }
    case 10: {
      proto::ObjectId id = IdOf(key());
      if (rng() % 2) return Finish(b, seq, Body::PinRequest, proto::CreatePinRequest(b, &id).Union());
      return Finish(b, seq, Body::UnpinRequest, proto::CreateUnpinRequest(b, &id).Union());
    }
    case 11: return StatsMsg(seq);
    case 12: return Finish(b, seq, Body::ClientsRequest, proto::CreateClientsRequest(b).Union());
    case 13: {
      Bytes prefix(rng() % 4);
      for (auto& x : prefix) x = static_cast<uint8_t>(rng());
      auto p = b.CreateVector(prefix);
      auto body = proto::CreateObjectsRequest(
          b, static_cast<proto::SortKey>(rng() % 8), rng() % 2 == 0,
          pick(std::vector<uint64_t>{0, 1, 5, 1ull << 40}),
          pick(std::vector<uint32_t>{0, 1, 50, proto::kMaxPageObjects, proto::kMaxPageObjects + 1}),
          p, static_cast<uint32_t>(rng() % 10));
      return Finish(b, seq, Body::ObjectsRequest, body.Union());
    }
    case 14: {
      auto v = b.CreateVectorOfStructs(some_ids());
      return Finish(b, seq, Body::PrefetchRequest, proto::CreatePrefetchRequest(b, v).Union());
    }
    case 15: {
      uint64_t bytes = pick(std::vector<uint64_t>{0, 1, 1u << 20, 1ull << 40, UINT64_MAX});
      return Finish(b, seq, Body::EvictRequest, proto::CreateEvictRequest(b, bytes).Union());
    }
    case 16: {
      proto::ObjectId id = IdOf(key());
      auto importance = pick(std::vector<int32_t>{0, 1, -1, INT32_MAX, INT32_MIN});
      return Finish(b, seq, Body::SetImportanceRequest,
                    proto::CreateSetImportanceRequest(b, &id, importance).Union());
    }
    case 17:
      if (rng() % 8 == 0) {
        return Finish(b, seq, Body::DisconnectRequest, proto::CreateDisconnectRequest(b).Union());
      }
      return Finish(b, seq, Body::SpillFilesRequest,
                    proto::CreateSpillFilesRequest(
                        b, pick(std::vector<uint64_t>{0, 1, 2, UINT64_MAX}),
                        pick(std::vector<uint32_t>{0, 1, UINT32_MAX}))
                        .Union());
    default:
      return GpuChunkMsg(seq, pick(std::vector<int32_t>{-1, 0, 3}),
                         pick(std::vector<uint32_t>{0, 1, UINT32_MAX}));
  }
}

}  // namespace

TEST_CASE("a list reply is bounded: the objects come a page at a time, from one snapshot") {
  Attacked s;
  RawConn c(s.store.socket());
  Handshake(c);
  // More objects than a page holds, put through the library.
  const size_t n = proto::kMaxListPage + 1000;
  {
    store_client* lib = nullptr;
    REQUIRE(store_client_connect(&lib, s.store.socket().c_str(), nullptr) == STORE_OK);
    std::vector<store_object_id> ids(n);
    std::vector<const void*> datas(n);
    std::vector<uint64_t> sizes(n, 8);
    const uint64_t word = 42;
    for (size_t i = 0; i < n; i++) {
      ids[i] = CIdOf("listed-" + std::to_string(i));
      datas[i] = &word;
    }
    size_t done = 0;
    REQUIRE(store_put_many(lib, ids.data(), datas.data(), sizes.data(), n, nullptr, &done) ==
            STORE_OK);
    store_client_free(lib);
  }
  auto list = [&](uint64_t seq, uint64_t cursor, uint32_t limit) {
    flatbuffers::FlatBufferBuilder b(64);
    return Finish(b, seq, Body::ListRequest, proto::CreateListRequest(b, cursor, limit).Union());
  };
  // A first page with no limit given: one page's worth, a cursor, the snapshot's size.
  REQUIRE(c.Send(list(2, 0, 0)));
  Reply r;
  REQUIRE(ExpectReply(c, 2, Body::ListReply, &r));
  CHECK(r.size < proto::kMaxReplyBytes / 8);
  auto* lr = r.msg->body_as_ListReply();
  CHECK(lr->objects()->size() == proto::kMaxListPage);
  CHECK(lr->total() == n);
  uint64_t cursor = lr->cursor();
  CHECK(cursor != 0);
  std::set<std::string> seen;
  for (auto* o : *lr->objects()) seen.insert(std::string(o->id().bytes()->begin(), o->id().bytes()->end()));
  // A cursor that is not this client's list: EINVAL, and the connection stays open.
  REQUIRE(c.Send(list(3, cursor + 1, 10)));
  ExpectError(c, 3, STORE_EINVAL);
  // The rest, in small pages.
  uint64_t seq = 4;
  while (cursor != 0) {
    REQUIRE(c.Send(list(seq, cursor, 300)));
    REQUIRE(ExpectReply(c, seq, Body::ListReply, &r));
    lr = r.msg->body_as_ListReply();
    CHECK(lr->objects()->size() <= 300);
    for (auto* o : *lr->objects()) seen.insert(std::string(o->id().bytes()->begin(), o->id().bytes()->end()));
    cursor = lr->cursor();
    seq++;
  }
  CHECK(seen.size() == n);
  // Once ended, the cursor is gone.
  REQUIRE(c.Send(list(seq, 1, 10)));
  ExpectError(c, seq, STORE_EINVAL);
  // A new list replaces an unfinished one: the old cursor is refused.
  REQUIRE(c.Send(list(seq + 1, 0, 10)));
  REQUIRE(ExpectReply(c, seq + 1, Body::ListReply, &r));
  uint64_t first = r.msg->body_as_ListReply()->cursor();
  REQUIRE(c.Send(list(seq + 2, 0, 10)));
  REQUIRE(ExpectReply(c, seq + 2, Body::ListReply, &r));
  CHECK(r.msg->body_as_ListReply()->cursor() != first);
  REQUIRE(c.Send(list(seq + 3, first, 10)));
  ExpectError(c, seq + 3, STORE_EINVAL);
  s.CheckServes();
}

namespace {

// Puts objects prefix-<from> .. prefix-<to - 1> of 8 bytes each, many to a round trip.
void PutSmall(store_client* c, const std::string& prefix, size_t from, size_t to) {
  const uint64_t word = 42;
  std::vector<store_object_id> ids;
  for (size_t i = from; i < to; i++) ids.push_back(CIdOf(prefix + "-" + std::to_string(i)));
  std::vector<const void*> datas(ids.size(), &word);
  std::vector<uint64_t> sizes(ids.size(), 8);
  size_t done = 0;
  REQUIRE(store_put_many(c, ids.data(), datas.data(), sizes.data(), ids.size(), nullptr, &done) ==
          STORE_OK);
}

}  // namespace

TEST_CASE("unfinished lists keep no copy of the table: 100 of them over 200,000 objects leave the "
          "server's memory as it was") {
  // Each list in progress kept the uid of every object (8 bytes each): 100 connections that
  // start a list and never finish it held 160 MB of a store whose objects need 13 MB.
  Attacked s("64M");
  constexpr size_t kObjects = 200000;
  PutSmall(s.good, "listed", 0, kObjects);
  const size_t base_fds = s.ServerFds();
  const uint64_t rss_before = RssKib(s.store.pid());
  auto list = [&](uint64_t seq, uint64_t cursor, uint32_t limit) {
    flatbuffers::FlatBufferBuilder b(64);
    return Finish(b, seq, Body::ListRequest, proto::CreateListRequest(b, cursor, limit).Union());
  };
  constexpr int kConns = 100;
  std::vector<std::unique_ptr<RawConn>> conns;
  std::vector<uint64_t> cursors;
  std::vector<std::set<std::string>> seen(kConns);
  auto note = [&](int k, const proto::ListReply* lr) {
    for (auto* o : *lr->objects()) {
      std::string id(o->id().bytes()->begin(), o->id().bytes()->end());
      CHECK(seen[k].insert(id).second);  // never twice
    }
  };
  for (int k = 0; k < kConns; k++) {
    conns.push_back(std::make_unique<RawConn>(s.store.socket()));
    Handshake(*conns.back());
    REQUIRE(conns.back()->Send(list(2, 0, 1)));
    Reply r;
    REQUIRE(ExpectReply(*conns.back(), 2, Body::ListReply, &r));
    auto* lr = r.msg->body_as_ListReply();
    CHECK(lr->total() == kObjects);
    REQUIRE(lr->cursor() != 0);
    cursors.push_back(lr->cursor());
    note(k, lr);
  }
  const uint64_t rss_after = RssKib(s.store.pid());
  MESSAGE("server RSS " << rss_before / 1024 << " MiB -> " << rss_after / 1024 << " MiB with "
                        << kConns << " lists of " << kObjects << " objects in progress");
  if (kRssIsHeap) {
    CHECK(rss_after < rss_before + 24 * 1024);  // not 160 MB
  }
  // Meanwhile a tenth of the objects go and new ones come. Three of the lists go on to the end:
  // every object there throughout is listed exactly once, none created since.
  for (size_t i = 0; i < kObjects; i += 10) {
    store_object_id id = CIdOf("listed-" + std::to_string(i));
    REQUIRE(store_delete(s.good, &id) == STORE_OK);
  }
  PutSmall(s.good, "listed", kObjects, kObjects + 5000);
  for (int k = 0; k < 3; k++) {
    uint64_t seq = 3, cursor = cursors[k];
    while (cursor != 0) {
      REQUIRE(conns[k]->Send(list(seq, cursor, 7000)));
      Reply r;
      REQUIRE(ExpectReply(*conns[k], seq, Body::ListReply, &r));
      auto* lr = r.msg->body_as_ListReply();
      CHECK(lr->objects()->size() <= 7000);
      note(k, lr);
      cursor = lr->cursor();
      seq++;
    }
    for (size_t i = 0; i < kObjects + 5000; i++) {
      std::string key = "listed-" + std::to_string(i);
      store_object_id id = CIdOf(key);
      const bool listed = seen[k].count(std::string(id.bytes, id.bytes + 20)) > 0;
      if (i >= kObjects) {
        CHECK_MESSAGE(!listed, key);
      } else if (i % 10 != 0) {
        CHECK_MESSAGE(listed, key);
      }
    }
  }
  conns.clear();
  s.CheckBaseline(base_fds);
  s.CheckServes();
}

TEST_CASE("pages of the objects sent many at once by one client do not hold up the others: they "
          "are served between the pages") {
  // A page deep in the order of a large table is a pass over all of it: 1.6 s for the middle of
  // two million objects. One write of a hundred such requests held the server for all of them
  // before anyone else was served.
  Attacked s("64M");
  constexpr size_t kObjects = 200000;
  PutSmall(s.good, "paged", 0, kObjects);
  const size_t base_fds = s.ServerFds();
  // Another client asks all the time; its round trips are counted.
  std::atomic<uint64_t> round_trips{0};
  std::atomic<bool> stop{false};
  std::atomic<int> failures{0};
  std::thread other([&] {
    store_object_id id = CIdOf("paged-7");
    while (!stop.load()) {
      int present = 0;
      if (store_contains(s.good, &id, &present) != STORE_OK || !present) failures++;
      round_trips++;
    }
  });
  struct Join {
    std::atomic<bool>& stop;
    std::thread& t;
    ~Join() {
      stop = true;
      if (t.joinable()) t.join();
    }
  } join{stop, other};
  while (round_trips.load() == 0) std::this_thread::yield();

  auto attacker_ptr = std::make_unique<RawConn>(s.store.socket());
  RawConn& attacker = *attacker_ptr;
  Handshake(attacker);
  constexpr uint64_t kPages = 100;
  // Each page followed by a cheap request: the replies still come in the order asked.
  Bytes batch;
  for (uint64_t k = 0; k < kPages; k++) {
    flatbuffers::FlatBufferBuilder b(128);
    auto body = proto::CreateObjectsRequest(b, proto::SortKey::Size, false, kObjects / 2, 100);
    Bytes m = Finish(b, 10 + 2 * k, Body::ObjectsRequest, body.Union());
    batch.insert(batch.end(), m.begin(), m.end());
    m = StatsMsg(11 + 2 * k);
    batch.insert(batch.end(), m.begin(), m.end());
  }
  // A second attacker sends the same first, and reads nothing until the end; a third sends
  // the same and goes away without reading a reply.
  auto patient_ptr = std::make_unique<RawConn>(s.store.socket());
  RawConn& patient = *patient_ptr;
  {
    REQUIRE(patient.Send(ConnectMsg(1, proto::kProtocolVersion, "patient")));
    Reply r;
    REQUIRE(ExpectReply(patient, 1, Body::ConnectReply, &r));
  }
  auto requests_of_patient = [&] {
    store_client_info* cl = nullptr;
    size_t n = 0;
    uint64_t requests = 0;
    REQUIRE(store_list_clients(s.good, &cl, sizeof *cl, &n) == STORE_OK);
    for (size_t i = 0; i < n; i++) {
      if (std::string(cl[i].name) == "patient") requests = cl[i].requests;
    }
    store_free(cl);
    return requests;
  };
  REQUIRE(patient.Send(batch));
  {
    RawConn quitter(s.store.socket());
    Handshake(quitter);
    REQUIRE(quitter.Send(batch));
  }
  REQUIRE(attacker.Send(batch));
  uint64_t at_first = 0, at_last = 0, patient_at_first = 0;
  for (uint64_t k = 0; k < kPages; k++) {
    Reply r;
    REQUIRE(ExpectReply(attacker, 10 + 2 * k, Body::ObjectsReply, &r));
    auto* page = r.msg->body_as_ObjectsReply();
    CHECK(page->total() == kObjects);
    CHECK(page->objects()->size() == 100);
    if (k == 0) {
      at_first = round_trips.load();
      patient_at_first = requests_of_patient();
    }
    if (k == kPages - 1) at_last = round_trips.load();
    REQUIRE(ExpectReply(attacker, 11 + 2 * k, Body::StatsReply, &r));
  }
  stop = true;
  other.join();
  // The clients that ask for pages take turns: the one that asked first had not had all its
  // pages when the last to ask got its first (a few each at most).
  MESSAGE("the patient client had sent " << patient_at_first - 1 << " of its " << 2 * kPages
                                         << " requests when the attacker got its first page");
  CHECK(patient_at_first < 1 + 2 * kPages / 4);
  for (uint64_t k = 0; k < kPages; k++) {
    Reply r;
    REQUIRE(ExpectReply(patient, 10 + 2 * k, Body::ObjectsReply, &r));
    REQUIRE(ExpectReply(patient, 11 + 2 * k, Body::StatsReply, &r));
  }
  patient_ptr.reset();
  attacker_ptr.reset();
  MESSAGE("the other client made " << at_last - at_first << " round trips while the server sent "
                                   << kPages - 1 << " pages");
  CHECK(failures.load() == 0);
  // Served between the pages (one each at best, the quitter's pages in turn with the
  // attacker's), not after them all.
  CHECK(at_last - at_first >= kPages / 4);
  s.CheckBaseline(base_fds);
  s.CheckServes();
}

TEST_CASE("thousands of well-formed requests with random fields from several connections never "
          "hurt the server, and it is left with nothing once the objects are deleted") {
  test::TempDir spill;
  Attacked s("32M", {"--spill-dir", spill.path});
  const size_t fds = s.ServerFds();
  // STORE_TEST_SEED replays another sequence (the seed is in the failure's context).
  const char* seed_env = std::getenv("STORE_TEST_SEED");
  const uint64_t seed = seed_env ? std::strtoull(seed_env, nullptr, 10) : 20261205;
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  struct Conn {
    std::unique_ptr<RawConn> c;
    uint64_t seq = 1;
    std::vector<uint64_t> uids;  // uids the server handed this connection
  };
  std::vector<Conn> conns(4);
  auto open = [&](Conn& k) {
    k.c = std::make_unique<RawConn>(s.store.socket());
    k.seq = 2;
    k.uids.clear();
    REQUIRE(Handshake(*k.c) > 0);
  };
  for (Conn& k : conns) open(k);
  size_t replies = 0, errors = 0, closed = 0;
  // Reads what has arrived; learns the uids of creates and gets; reopens a closed connection.
  auto read = [&](Conn& k, Ms wait) {
    for (;;) {
      Reply r;
      Got g = k.c->Next(&r, wait);
      if (g == Got::kTimeout) return;
      if (g != Got::kMessage) {
        CHECK_MESSAGE((g == Got::kEof || g == Got::kReset), "stream ended with " << Name(g));
        closed++;
        open(k);
        return;
      }
      replies++;
      if (r.msg->status() != 0) errors++;
      if (auto* cr = r.msg->body_as_CreateReply()) k.uids.push_back(cr->uid());
      if (auto* gr = r.msg->body_as_GetReply()) {
        for (const auto* loc : *gr->objects()) {
          if (loc->uid() != 0) k.uids.push_back(loc->uid());
        }
      }
      wait = Ms{0};
    }
  };
  for (int i = 0; i < 4000; i++) {
    INFO("request " << i);
    Conn& k = conns[rng() % conns.size()];
    Bytes m = RandomRequest(rng, k.seq++, k.uids);
    if (!k.c->Send(m)) {  // the server closed it meanwhile
      closed++;
      open(k);
      continue;
    }
    read(k, Ms{i % 16 == 0 ? 30 : 0});
    if (i % 500 == 499) {
      REQUIRE_MESSAGE(s.store.Alive(), s.store.Log());
      s.CheckServes();
    }
  }
  CHECK(replies > 1000);
  CHECK(errors > 100);  // many requests were refused,
  CHECK(errors < replies);  // and many were served
  CHECK(closed > 0);  // and some closed their connection (a protocol error or a disconnect)
  conns.clear();
  CHECK(test::WaitFor([&] { return s.Clients() == 1; }));
  // What the connections left sealed stays in the store until deleted (a spill file holding
  // some of it stays open); then nothing is left: no object, byte, spill file or descriptor.
  for (int i = 0; i < 8; i++) {
    store_object_id id = CIdOf("chaos-" + std::to_string(i));
    const int rc = store_delete(s.good, &id);
    CHECK_MESSAGE((rc == STORE_OK || rc == STORE_ENOTFOUND), store_last_error_message());
  }
  CHECK(test::WaitFor([&] {
    store_stats st = s.Stats();
    return st.object_count == 0 && st.used_bytes == 0 && st.spill_files == 0;
  }));
  store_stats st = s.Stats();
  CHECK(st.object_count == 0);
  CHECK(st.used_bytes == 0);
  CHECK(st.spill_files == 0);
  s.CheckBaseline(fds);
  s.CheckServes();
}
