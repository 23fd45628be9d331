// framing.h - limits, framing and verification of protocol messages (protocol.fbs).
//
// Shared by the server (store/server) and the client library (capi/); header-only.
// A message on the wire is [u32 LE length L][L bytes of flatbuffer]; the flatbuffer itself is
// built with FinishSizePrefixed, so the length prefix is part of the verified buffer.
// FrameBuffer accumulates bytes from a stream and yields whole messages at 8-aligned addresses
// (flatbuffers checks alignment relative to the buffer start), after checking L against a cap
// before anything is allocated for it.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>

#include "protocol_generated.h"

namespace store::proto {

inline constexpr uint32_t kProtocolVersion = 3;
// Largest request the server accepts (bounded before allocation). Covers the biggest legal
// create (1 MiB metadata + inline data) and get (kMaxIdsPerRequest ids).
inline constexpr uint32_t kMaxRequestBytes = 4u << 20;
// Largest reply the client accepts. No reply comes near it: every list is paged (a page of
// kMaxPageObjects object infos is under 10 MiB), and the server refuses to send a larger one.
inline constexpr uint32_t kMaxReplyBytes = 64u << 20;
inline constexpr uint32_t kMaxIdsPerRequest = 65536;
// store_put sends objects up to this size inside the create request (one round trip).
inline constexpr uint64_t kInlinePutMax = 64u << 10;
inline constexpr uint32_t kMaxClientName = 256;
inline constexpr uint32_t kMaxFdsPerMessage = 4;
// Most objects in one page of an ObjectsRequest.
inline constexpr uint32_t kMaxPageObjects = 100000;
// Most objects in one page of a ListRequest (store_list pages through all of them).
inline constexpr uint32_t kMaxListPage = 65536;
// Most spill files in one page of a SpillFilesRequest (each names a path of up to 4 KiB).
inline constexpr uint32_t kMaxSpillFilesPage = 4096;

// $STORE_SOCKET if set (the server's --socket default too, so that one variable points a
// server, its clients and the tools at one socket), else $XDG_RUNTIME_DIR/store.sock if
// XDG_RUNTIME_DIR is set, else /tmp/store-$UID.sock.
inline std::string DefaultSocketPath() {
  const char* env = std::getenv("STORE_SOCKET");
  if (env && *env) return env;
  const char* xdg = std::getenv("XDG_RUNTIME_DIR");
  if (xdg && *xdg) return std::string(xdg) + "/store.sock";
  return "/tmp/store-" + std::to_string(getuid()) + ".sock";
}

// Verifies a whole size-prefixed message (prefix included). Returns the root or nullptr.
inline const Message* VerifyMessage(const uint8_t* buf, size_t len) {
  flatbuffers::Verifier::Options o;
  o.max_depth = 16;
  o.max_tables = 4u << 20;  // ListReply holds structs, not tables; requests have few tables
  flatbuffers::Verifier v(buf, len, o);
  if (!VerifySizePrefixedMessageBuffer(v)) return nullptr;
  const Message* m = GetSizePrefixedMessage(buf);
  // A body type without a body passes the verifier; no message of ours is like that.
  if (m->body_type() != Body::NONE && m->body() == nullptr) return nullptr;
  // The 2.0.8 verifier checks a vector's length field but not that its elements are aligned
  // for their type: check the vectors of 8-byte elements here.
  auto aligned = [buf](const void* data) {
    return (static_cast<const uint8_t*>(data) - buf) % 8 == 0;
  };
  switch (m->body_type()) {
    case Body::ReleaseRequest:
      if (!aligned(m->body_as_ReleaseRequest()->uids()->Data())) return nullptr;
      break;
    case Body::GetReply:
      if (!aligned(m->body_as_GetReply()->objects()->Data())) return nullptr;
      break;
    case Body::ListReply:
      if (!aligned(m->body_as_ListReply()->objects()->Data())) return nullptr;
      break;
    case Body::ObjectsReply:
      if (!aligned(m->body_as_ObjectsReply()->objects()->Data())) return nullptr;
      break;
    case Body::StatsReply: {
      auto gpus = m->body_as_StatsReply()->gpus();
      if (gpus && !aligned(gpus->Data())) return nullptr;
      break;
    }
    default:
      break;
  }
  return m;
}

// A growable byte buffer whose storage is 8-aligned; holds the unread part of a stream.
// While it is empty it may borrow its storage (Lend): a server reads every connection into one
// buffer and keeps memory of a connection's own only for a message not yet complete.
class FrameBuffer {
 public:
  explicit FrameBuffer(uint32_t max_message) : max_(max_message) {}
  ~FrameBuffer() {
    if (!lent_) std::free(data_);
    std::free(scratch_);
  }
  FrameBuffer(const FrameBuffer&) = delete;
  FrameBuffer& operator=(const FrameBuffer&) = delete;

  // Space to receive at least want bytes; returns the write pointer. nullptr on ENOMEM.
  uint8_t* Reserve(size_t want, size_t* avail) {
    if (lent_ && !EndLoan()) return nullptr;
    Compact();
    if (cap_ - end_ < want) {
      size_t ncap = GrownCapacity(want);
      void* p = std::aligned_alloc(8, (ncap + 7) & ~size_t{7});
      if (!p) return nullptr;
      if (end_ > begin_) std::memcpy(p, data_ + begin_, end_ - begin_);
      end_ -= begin_;
      begin_ = 0;
      std::free(data_);
      data_ = static_cast<uint8_t*>(p);
      cap_ = ncap;
    }
    *avail = cap_ - end_;
    return data_ + end_;
  }
  void Commit(size_t n) { end_ += n; }

  // The storage Reserve(want) would leave this buffer with (its own; lent storage counts 0).
  size_t CapacityFor(size_t want) const {
    if (lent_) return GrownCapacity(want + (end_ - begin_));
    size_t live = end_ - begin_;
    if (cap_ - (begin_ > cap_ / 2 || begin_ == end_ ? live : end_) >= want) return cap_;
    return GrownCapacity(want);
  }
  // Bytes of storage this buffer owns (its scratch space included).
  size_t held() const { return (lent_ ? 0 : cap_) + scratch_cap_; }
  bool lent() const { return lent_; }

  // Receives into buf (8-aligned, cap bytes, owned by the caller) until EndLoan; the storage
  // of its own is freed. Returns the write pointer. REQUIRES: size() == 0, nothing lent.
  uint8_t* Lend(uint8_t* buf, size_t cap, size_t* avail) {
    if (data_) std::free(data_);
    data_ = buf;
    cap_ = cap;
    begin_ = end_ = 0;
    lent_ = true;
    *avail = cap;
    return buf;
  }
  // Gives the lent storage back: the bytes not popped yet (part of a message) move to storage
  // of this buffer's own, just large enough. false on ENOMEM (it stays lent then).
  bool EndLoan() {
    if (!lent_) return true;
    if (begin_ == end_) {  // the common case: every message was whole
      lent_ = false;
      data_ = nullptr;
      cap_ = begin_ = end_ = 0;
      return true;
    }
    const size_t live = end_ - begin_;
    uint8_t* from = data_ + begin_;
    size_t ncap = (live + 4095) & ~size_t{4095};
    void* p = std::aligned_alloc(8, ncap);
    if (!p) return false;  // still lent, the bytes where they were
    lent_ = false;
    cap_ = begin_ = end_ = 0;
    std::memcpy(p, from, live);
    data_ = static_cast<uint8_t*>(p);
    cap_ = ncap;
    end_ = live;
    return true;
  }
  // Frees the storage of an empty buffer, and scratch space larger than keep: a connection that
  // sent one large message does not keep its size.
  void Trim(size_t keep) {
    if (!lent_ && begin_ == end_ && data_) {
      std::free(data_);
      data_ = nullptr;
      cap_ = begin_ = end_ = 0;
    }
    if (scratch_cap_ > keep) {
      std::free(scratch_);
      scratch_ = nullptr;
      scratch_cap_ = 0;
    }
  }
  // Drops every byte and frees all storage of its own.
  void Release() {
    if (!lent_) std::free(data_);
    std::free(scratch_);
    data_ = scratch_ = nullptr;
    cap_ = begin_ = end_ = scratch_cap_ = 0;
    lent_ = false;
  }

  enum class Next { kNone, kMessage, kTooLarge };
  // If a whole message is buffered, points *msg/*len at it (8-aligned) and returns kMessage;
  // the message stays valid until the next call. kTooLarge if the length exceeds the cap.
  Next Pop(const uint8_t** msg, size_t* len) {
    size_t have = end_ - begin_;
    if (have < 4) return Next::kNone;
    uint32_t l;
    std::memcpy(&l, data_ + begin_, 4);
    l = flatbuffers::EndianScalar(l);
    if (l > max_ || l < 8) return Next::kTooLarge;
    if (have < 4 + size_t{l}) return Next::kNone;
    *len = 4 + size_t{l};
    if ((begin_ & 7) == 0) {
      *msg = data_ + begin_;
    } else {  // unaligned: copy this one message to aligned scratch space
      if (scratch_cap_ < *len) {
        size_t ncap = (*len + 4095) & ~size_t{4095};
        void* p = std::aligned_alloc(8, ncap);
        if (!p) return Next::kTooLarge;
        std::free(scratch_);
        scratch_ = static_cast<uint8_t*>(p);
        scratch_cap_ = ncap;
      }
      std::memcpy(scratch_, data_ + begin_, *len);
      *msg = scratch_;
    }
    begin_ += *len;
    return Next::kMessage;
  }
  // Puts back the message the last Pop returned: the next Pop returns it again.
  void Unpop(size_t len) { begin_ -= len; }
  // Bytes a partially received message still needs (0 if unknown); lets readers size recvs.
  size_t Pending() const {
    size_t have = end_ - begin_;
    if (have < 4) return 0;
    uint32_t l;
    std::memcpy(&l, data_ + begin_, 4);
    l = flatbuffers::EndianScalar(l);
    return have < 4 + size_t{l} ? 4 + size_t{l} - have : 0;
  }
  size_t size() const { return end_ - begin_; }

 private:
  // The capacity a buffer holding end_ - begin_ bytes (moved to the front) grows to for want
  // more: twice what it has (so that growing by small steps copies little), or what it needs
  // in whole pages if that is more (a large message takes its own size, not the next power of
  // two).
  size_t GrownCapacity(size_t want) const {
    const size_t live = lent_ ? 0 : end_ - begin_;
    const size_t need = live + want;
    size_t ncap = lent_ || cap_ == 0 ? 4096 : 2 * cap_;
    if (ncap < need) ncap = (need + 4095) & ~size_t{4095};
    return ncap;
  }
  void Compact() {
    if (begin_ == end_) {
      begin_ = end_ = 0;
    } else if (begin_ > cap_ / 2) {
      std::memmove(data_, data_ + begin_, end_ - begin_);
      end_ -= begin_;
      begin_ = 0;
    }
  }
  uint8_t* data_ = nullptr;
  size_t cap_ = 0, begin_ = 0, end_ = 0;
  uint8_t* scratch_ = nullptr;
  size_t scratch_cap_ = 0;
  uint32_t max_;
  bool lent_ = false;  // data_ is borrowed (Lend)
};

inline ObjectId ToProto(const uint8_t* id20) {
  return ObjectId(flatbuffers::span<const uint8_t, 20>(id20, 20));
}

}  // namespace store::proto
