// test_protocol.cpp - unit tests for the wire protocol: the generated flatbuffers code for
// protocol.fbs, VerifyMessage, FrameBuffer and ToProto (store/common/protocol/framing.h).
#include <doctest.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "framing.h"

namespace {

namespace P = store::proto;
using flatbuffers::FlatBufferBuilder;
using flatbuffers::Offset;

// Owned bytes whose first byte is 8-aligned.
class Bytes {
 public:
  Bytes() = default;
  explicit Bytes(size_t n) : words_(n / 8 + 2, 0), size_(n) {}
  Bytes(const uint8_t* p, size_t n) : Bytes(n) {
    if (n) std::memcpy(data(), p, n);
  }
  uint8_t* data() { return reinterpret_cast<uint8_t*>(words_.data()); }
  const uint8_t* data() const { return reinterpret_cast<const uint8_t*>(words_.data()); }
  size_t size() const { return size_; }
  uint8_t& operator[](size_t i) { return data()[i]; }
  uint8_t operator[](size_t i) const { return data()[i]; }
  std::vector<uint8_t> Vec() const { return std::vector<uint8_t>(data(), data() + size_); }
  bool operator==(const Bytes& o) const {
    return size_ == o.size_ && (size_ == 0 || std::memcmp(data(), o.data(), size_) == 0);
  }

 private:
  std::vector<uint64_t> words_;
  size_t size_ = 0;
};

uint32_t Prefix(const uint8_t* p) {
  uint32_t l;
  std::memcpy(&l, p, 4);
  return flatbuffers::EndianScalar(l);
}
void SetPrefix(uint8_t* p, uint32_t l) {
  l = flatbuffers::EndianScalar(l);
  std::memcpy(p, &l, 4);
}
bool Aligned8(const void* p) { return reinterpret_cast<uintptr_t>(p) % 8 == 0; }

template <class T>
Bytes Wrap(FlatBufferBuilder& fbb, uint64_t seq, P::Body type, Offset<T> body, int32_t status = 0,
           const char* error = nullptr, uint32_t num_fds = 0) {
  auto err = error ? fbb.CreateString(error) : Offset<flatbuffers::String>();
  auto m = P::CreateMessage(fbb, seq, status, err, num_fds, type, body.Union());
  fbb.FinishSizePrefixed(m, P::MessageIdentifier());
  return Bytes(fbb.GetBufferPointer(), fbb.GetSize());
}

P::ObjectId Id(uint32_t n) {
  uint8_t b[20];
  for (int i = 0; i < 20; i++) b[i] = static_cast<uint8_t>(n * 31 + i * 17 + (n >> 8) + (i == 19 ? 0xF0 : 0));
  return P::ToProto(b);
}

std::string Hex(const P::ObjectId& id) {
  static const char* d = "0123456789abcdef";
  std::string s;
  for (int i = 0; i < 20; i++) {
    uint8_t b = id.bytes()->Get(i);
    s += d[b >> 4];
    s += d[b & 15];
  }
  return s;
}

bool SameId(const P::ObjectId* a, const P::ObjectId& b) {
  return a != nullptr && std::memcmp(a, &b, 20) == 0;
}

// Reads every field of a verified message through the generated accessors and renders it as
// text. Counts pointers that fall outside [buf, buf+len), misaligned 8-byte data, and required
// fields that are missing: all three must stay 0 for anything VerifyMessage accepted.
class Reader {
 public:
  Reader(const uint8_t* buf, size_t len) : buf_(buf), len_(len) {}
  int out_of_bounds = 0, misaligned = 0, missing_required = 0;

  std::string Dump(const P::Message* m) {
    out_.str("");
    if (!In(m, 4)) return "";
    out_ << "seq=" << m->seq() << " status=" << m->status() << " num_fds=" << m->num_fds() << " ";
    Str("error", m->error());
    out_ << "body_type=" << static_cast<int>(m->body_type()) << " ";
    switch (m->body_type()) {
      case P::Body::ConnectRequest:
        if (auto b = Body(m->body_as_ConnectRequest())) {
          out_ << "pv=" << b->protocol_version() << " pid=" << b->pid() << " ";
          Str("client_name", b->client_name());
        }
        break;
      case P::Body::ConnectReply:
        if (auto b = Body(m->body_as_ConnectReply())) {
          out_ << "pv=" << b->protocol_version() << " client_id=" << b->client_id()
               << " capacity=" << b->capacity()
               << " gpu_backend=" << static_cast<int>(b->gpu_backend()) << " ";
          Str("server_version", b->server_version());
          auto r = b->region();
          if (Required(r) && In(r, 4)) out_ << "region=" << r->region_id() << "/" << r->size() << " ";
        }
        break;
      case P::Body::CreateRequest:
        if (auto b = Body(m->body_as_CreateRequest())) {
          IdField("id", b->id());
          out_ << "data_size=" << b->data_size() << " importance=" << b->importance()
               << " device=" << b->device() << " timeout_ms=" << b->timeout_ms() << " ";
          Scalars("metadata", b->metadata(), false);
          Scalars("data", b->data(), false);
        }
        break;
      case P::Body::CreateReply:
        if (auto b = Body(m->body_as_CreateReply())) {
          out_ << "uid=" << b->uid() << " region_id=" << b->region_id() << " offset=" << b->offset()
               << " data_size=" << b->data_size() << " metadata_size=" << b->metadata_size()
               << " device=" << b->device() << " chunk=" << b->chunk()
               << " chunk_offset=" << b->chunk_offset() << " ";
        }
        break;
      case P::Body::SealRequest:
        if (auto b = Body(m->body_as_SealRequest())) {
          IdField("id", b->id());
          out_ << "uid=" << b->uid() << " ";
        }
        break;
      case P::Body::AbortRequest:
        if (auto b = Body(m->body_as_AbortRequest())) {
          IdField("id", b->id());
          out_ << "uid=" << b->uid() << " ";
        }
        break;
      case P::Body::GetRequest:
        if (auto b = Body(m->body_as_GetRequest())) {
          Ids("ids", b->ids());
          out_ << "timeout_ms=" << b->timeout_ms() << " ";
        }
        break;
      case P::Body::GetReply:
        if (auto b = Body(m->body_as_GetReply())) {
          auto v = b->objects();
          if (Required(v) && VectorIn(v, sizeof(P::ObjectLocation))) {
            out_ << "objects=[";
            for (uint32_t i = 0; i < v->size(); i++) {
              const P::ObjectLocation* l = v->Get(i);
              Align8(l);
              out_ << l->uid() << "," << l->region_id() << "," << l->offset() << "," << l->data_size()
                   << "," << l->metadata_size() << "," << l->status() << "," << l->device() << ","
                   << l->chunk_offset() << "," << l->chunk() << ";";
            }
            out_ << "] ";
          }
        }
        break;
      case P::Body::ReleaseRequest:
        if (auto b = Body(m->body_as_ReleaseRequest())) Scalars("uids", b->uids(), true);
        break;
      case P::Body::ContainsRequest:
        if (auto b = Body(m->body_as_ContainsRequest())) Ids("ids", b->ids());
        break;
      case P::Body::ContainsReply:
        if (auto b = Body(m->body_as_ContainsReply())) Scalars("present", b->present(), true);
        break;
      case P::Body::DeleteRequest:
        if (auto b = Body(m->body_as_DeleteRequest())) Ids("ids", b->ids());
        break;
      case P::Body::DeleteReply:
        if (auto b = Body(m->body_as_DeleteReply())) Scalars("statuses", b->statuses(), true);
        break;
      case P::Body::InfoRequest:
        if (auto b = Body(m->body_as_InfoRequest())) IdField("id", b->id());
        break;
      case P::Body::InfoReply:
        if (auto b = Body(m->body_as_InfoReply())) {
          auto i = b->info();
          if (Required(i) && In(i, sizeof(P::ObjectInfo))) Info(*i);
        }
        break;
      case P::Body::ListReply:
        if (auto b = Body(m->body_as_ListReply())) {
          auto v = b->objects();
          if (Required(v) && VectorIn(v, sizeof(P::ObjectInfo))) {
            out_ << "objects=[";
            for (uint32_t i = 0; i < v->size(); i++) Info(*v->Get(i));
            out_ << "] ";
          }
        }
        break;
      case P::Body::PinRequest:
        if (auto b = Body(m->body_as_PinRequest())) IdField("id", b->id());
        break;
      case P::Body::UnpinRequest:
        if (auto b = Body(m->body_as_UnpinRequest())) IdField("id", b->id());
        break;
      case P::Body::StatsReply:
        if (auto b = Body(m->body_as_StatsReply())) {
          out_ << b->capacity_bytes() << "," << b->used_bytes() << "," << b->object_count() << ","
               << b->client_count() << "," << b->created_count() << "," << b->sealed_count() << ","
               << b->created_bytes() << "," << b->sealed_bytes() << "," << b->pinned_count() << ","
               << b->pinned_bytes() << "," << b->open_count() << "," << b->open_bytes() << ","
               << b->deleted_pending_count() << "," << b->deleted_pending_bytes() << ","
               << b->waiting_gets() << "," << b->waiting_creates() << "," << b->total_creates() << ","
               << b->total_seals() << "," << b->total_gets() << "," << b->total_releases() << ","
               << b->total_deletes() << "," << b->total_aborts() << "," << b->total_full() << ","
               << b->uptime_ns() << "," << b->server_pid() << " ";
          out_ << "gpu_backend=" << static_cast<int>(b->gpu_backend()) << " ";
          auto g = b->gpus();
          if (g && VectorIn(g, sizeof(P::GpuDeviceStats))) {
            out_ << "gpus=[";
            for (uint32_t i = 0; i < g->size(); i++) {
              const P::GpuDeviceStats* d = g->Get(i);
              Align8(d);
              out_ << d->device() << "," << d->chunks() << "," << d->capacity_bytes() << ","
                   << d->used_bytes() << "," << d->object_count() << "," << d->chunk_size() << ","
                   << d->largest_free_bytes() << ";";
            }
            out_ << "] ";
          }
        }
        break;
      case P::Body::GpuChunkRequest:
        if (auto b = Body(m->body_as_GpuChunkRequest())) {
          out_ << "device=" << b->device() << " chunk=" << b->chunk() << " ";
        }
        break;
      case P::Body::GpuChunkReply:
        if (auto b = Body(m->body_as_GpuChunkReply())) {
          out_ << "device=" << b->device() << " chunk=" << b->chunk()
               << " chunk_uid=" << b->chunk_uid() << " size=" << b->size() << " ";
          Scalars("uuid", b->uuid(), false);
        }
        break;
      case P::Body::SealReply:
        Body(m->body_as_SealReply());
        break;
      case P::Body::AbortReply:
        Body(m->body_as_AbortReply());
        break;
      case P::Body::ListRequest:
        Body(m->body_as_ListRequest());
        break;
      case P::Body::PinReply:
        Body(m->body_as_PinReply());
        break;
      case P::Body::UnpinReply:
        Body(m->body_as_UnpinReply());
        break;
      case P::Body::StatsRequest:
        Body(m->body_as_StatsRequest());
        break;
      case P::Body::DisconnectRequest:
        Body(m->body_as_DisconnectRequest());
        break;
      default:  // NONE or a type this version does not know: nothing to read
        break;
    }
    return out_.str();
  }

 private:
  bool In(const void* p, size_t n) {
    auto q = static_cast<const uint8_t*>(p);
    bool ok = q >= buf_ && q <= buf_ + len_ && n <= static_cast<size_t>(buf_ + len_ - q);
    if (!ok) out_of_bounds++;
    return ok;
  }
  void Align8(const void* p) {
    if (!Aligned8(p)) misaligned++;
  }
  template <class T>
  bool Required(const T* p) {
    if (p == nullptr) {
      missing_required++;
      out_ << "MISSING ";
      return false;
    }
    return true;
  }
  template <class T>
  const T* Body(const T* b) {
    if (b == nullptr) {
      out_ << "body=null ";
      return nullptr;
    }
    return In(b, 4) ? b : nullptr;
  }
  void Str(const char* name, const flatbuffers::String* s) {
    out_ << name << "=";
    if (s == nullptr) {
      out_ << "null ";
      return;
    }
    if (!In(s, 4) || !In(s->data(), size_t{s->size()} + 1)) return;
    if (s->c_str()[s->size()] != 0) out_ << "UNTERMINATED";
    out_ << "\"" << std::string(s->c_str(), s->size()) << "\" ";
  }
  template <class V>
  bool VectorIn(const V* v, size_t elem) {
    if (!In(v, 4)) return false;
    if (!In(v->Data(), size_t{v->size()} * elem)) return false;
    if (elem == 8) Align8(v->Data());
    return true;
  }
  template <class T>
  void Scalars(const char* name, const flatbuffers::Vector<T>* v, bool required) {
    out_ << name << "=";
    if (v == nullptr) {
      if (required) Required(v);
      out_ << "null ";
      return;
    }
    if (!VectorIn(v, sizeof(T))) return;
    out_ << "[";
    for (uint32_t i = 0; i < v->size(); i++) out_ << +v->Get(i) << ",";
    out_ << "] ";
  }
  void IdField(const char* name, const P::ObjectId* id) {
    out_ << name << "=";
    if (Required(id) && In(id, 20)) out_ << Hex(*id) << " ";
  }
  void Ids(const char* name, const flatbuffers::Vector<const P::ObjectId*>* v) {
    out_ << name << "=";
    if (!Required(v) || !VectorIn(v, sizeof(P::ObjectId))) return;
    out_ << "[";
    for (uint32_t i = 0; i < v->size(); i++) out_ << Hex(*v->Get(i)) << ",";
    out_ << "] ";
  }
  void Info(const P::ObjectInfo& i) {
    Align8(&i);
    out_ << "{" << Hex(i.id()) << "," << i.data_size() << "," << i.metadata_size() << "," << i.state()
         << "," << i.level() << "," << i.device() << "," << i.importance() << "," << i.pin_count()
         << "," << i.reader_count() << "," << i.create_time_ns() << "," << i.last_access_ns() << ","
         << i.creator_pid() << "}";
  }

  const uint8_t* buf_;
  size_t len_;
  std::ostringstream out_;
};

// Verifies and reads a message; the reader must find nothing wrong.
std::string CheckedDump(const Bytes& b) {
  const P::Message* m = P::VerifyMessage(b.data(), b.size());
  REQUIRE(m != nullptr);
  Reader r(b.data(), b.size());
  std::string s = r.Dump(m);
  CHECK(r.out_of_bounds == 0);
  CHECK(r.misaligned == 0);
  CHECK(r.missing_required == 0);
  return s;
}

const P::Message* Decode(const Bytes& b) {
  REQUIRE(b.size() >= 12);
  CHECK(Prefix(b.data()) == b.size() - 4);
  CHECK(std::memcmp(b.data() + 8, "STOR", 4) == 0);
  CHECK(P::SizePrefixedMessageBufferHasIdentifier(b.data()));
  const P::Message* m = P::VerifyMessage(b.data(), b.size());
  REQUIRE(m != nullptr);
  return m;
}

P::ObjectInfo MakeInfo(uint32_t n) {
  return P::ObjectInfo(Id(n), 1000 + n, 10 + n, n % 5, n % 3, static_cast<int32_t>(n % 4) - 1,
                       -static_cast<int32_t>(n), n * 2, n * 3, 1700000000000000000ll + n,
                       1700000000000000000ll + 2 * n, 4000 + static_cast<int32_t>(n), n);
}

// One small message of each kind with non-default content in every field.
std::vector<Bytes> Corpus() {
  std::vector<Bytes> c;
  uint64_t seq = 1;
  {
    FlatBufferBuilder f;
    c.push_back(Wrap(f, seq++, P::Body::ConnectRequest,
                     P::CreateConnectRequestDirect(f, P::kProtocolVersion, "client-a", 4242)));
  }
  {
    FlatBufferBuilder f;
    auto region = P::CreateRegion(f, 7, 1ull << 33);
    c.push_back(Wrap(f, seq++, P::Body::ConnectReply,
                     P::CreateConnectReplyDirect(f, 1, "store 1.0", 99, region, 1ull << 32), 0,
                     nullptr, 1));
  }
  {
    FlatBufferBuilder f;
    P::ObjectId id = Id(1);
    std::vector<uint8_t> meta = {1, 2, 3, 4, 5};
    std::vector<uint8_t> data = {9, 8, 7};
    c.push_back(Wrap(f, seq++, P::Body::CreateRequest,
                     P::CreateCreateRequestDirect(f, &id, 3, &meta, 5, 1, 250, &data)));
  }
  {
    FlatBufferBuilder f;
    c.push_back(
        Wrap(f, seq++, P::Body::CreateReply, P::CreateCreateReply(f, 12, 1, 4096, 3, 5)));
  }
  {
    FlatBufferBuilder f;
    P::ObjectId id = Id(2);
    c.push_back(Wrap(f, seq++, P::Body::SealRequest, P::CreateSealRequest(f, &id, 12)));
  }
  {
    FlatBufferBuilder f;
    c.push_back(Wrap(f, seq++, P::Body::SealReply, P::CreateSealReply(f)));
  }
  {
    FlatBufferBuilder f;
    P::ObjectId id = Id(3);
    c.push_back(Wrap(f, seq++, P::Body::AbortRequest, P::CreateAbortRequest(f, &id, 13)));
  }
  {
    FlatBufferBuilder f;
    c.push_back(Wrap(f, seq++, P::Body::AbortReply, P::CreateAbortReply(f)));
  }
  {
    FlatBufferBuilder f;
    std::vector<P::ObjectId> ids = {Id(4), Id(5), Id(6)};
    c.push_back(Wrap(f, seq++, P::Body::GetRequest, P::CreateGetRequestDirect(f, &ids, -1)));
  }
  {
    FlatBufferBuilder f;
    std::vector<P::ObjectLocation> locs = {P::ObjectLocation(21, 1, 64, 100, 8, 0, -1, 0, 0),
                                           P::ObjectLocation(0, 0, 0, 0, 0, -3, 0, 0, 0),
                                           P::ObjectLocation(23, 1, 128, 4096, 0, 0, 1, 1u << 30, 7)};
    c.push_back(Wrap(f, seq++, P::Body::GetReply, P::CreateGetReplyDirect(f, &locs)));
  }
  {
    FlatBufferBuilder f;
    std::vector<uint64_t> uids = {21, 22, 21};
    c.push_back(Wrap(f, seq++, P::Body::ReleaseRequest, P::CreateReleaseRequestDirect(f, &uids)));
  }
  {
    FlatBufferBuilder f;
    std::vector<P::ObjectId> ids = {Id(7), Id(8)};
    c.push_back(
        Wrap(f, seq++, P::Body::ContainsRequest, P::CreateContainsRequestDirect(f, &ids)));
  }
  {
    FlatBufferBuilder f;
    std::vector<uint8_t> present = {1, 0, 1};
    c.push_back(
        Wrap(f, seq++, P::Body::ContainsReply, P::CreateContainsReplyDirect(f, &present)));
  }
  {
    FlatBufferBuilder f;
    std::vector<P::ObjectId> ids = {Id(9)};
    c.push_back(Wrap(f, seq++, P::Body::DeleteRequest, P::CreateDeleteRequestDirect(f, &ids)));
  }
  {
    FlatBufferBuilder f;
    std::vector<int32_t> st = {0, -2};
    c.push_back(Wrap(f, seq++, P::Body::DeleteReply, P::CreateDeleteReplyDirect(f, &st)));
  }
  {
    FlatBufferBuilder f;
    P::ObjectId id = Id(10);
    c.push_back(Wrap(f, seq++, P::Body::InfoRequest, P::CreateInfoRequest(f, &id)));
  }
  {
    FlatBufferBuilder f;
    P::ObjectInfo info = MakeInfo(11);
    c.push_back(Wrap(f, seq++, P::Body::InfoReply, P::CreateInfoReply(f, &info)));
  }
  {
    FlatBufferBuilder f;
    c.push_back(Wrap(f, seq++, P::Body::ListRequest, P::CreateListRequest(f)));
  }
  {
    FlatBufferBuilder f;
    std::vector<P::ObjectInfo> infos = {MakeInfo(12), MakeInfo(13)};
    c.push_back(Wrap(f, seq++, P::Body::ListReply, P::CreateListReplyDirect(f, &infos)));
  }
  {
    FlatBufferBuilder f;
    P::ObjectId id = Id(14);
    c.push_back(Wrap(f, seq++, P::Body::PinRequest, P::CreatePinRequest(f, &id)));
  }
  {
    FlatBufferBuilder f;
    P::ObjectId id = Id(15);
    c.push_back(Wrap(f, seq++, P::Body::UnpinRequest, P::CreateUnpinRequest(f, &id)));
  }
  {
    FlatBufferBuilder f;
    c.push_back(Wrap(f, seq++, P::Body::StatsRequest, P::CreateStatsRequest(f)));
  }
  {
    FlatBufferBuilder f;
    c.push_back(Wrap(f, seq++, P::Body::StatsReply,
                     P::CreateStatsReply(f, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
                                         17, 18, 19, 20, 21, 22, 23, 24, 25)));
  }
  {
    FlatBufferBuilder f;
    std::vector<P::GpuDeviceStats> gpus = {P::GpuDeviceStats(0, 2, 1u << 30, 4096, 3, 256u << 20, 1u << 28),
                                           P::GpuDeviceStats(1, 0, 1u << 30, 0, 0, 256u << 20, 0)};
    auto v = f.CreateVectorOfStructs(gpus);
    P::StatsReplyBuilder sb(f);
    sb.add_capacity_bytes(64u << 20);
    sb.add_gpu_backend(P::GpuBackend::Cuda);
    sb.add_gpus(v);
    c.push_back(Wrap(f, seq++, P::Body::StatsReply, sb.Finish()));
  }
  {
    FlatBufferBuilder f;
    c.push_back(Wrap(f, seq++, P::Body::GpuChunkRequest, P::CreateGpuChunkRequest(f, 0, 3)));
  }
  {
    FlatBufferBuilder f;
    std::vector<uint8_t> uuid(16, 0xAB);
    c.push_back(Wrap(f, seq++, P::Body::GpuChunkReply,
                     P::CreateGpuChunkReplyDirect(f, 0, 3, 0x0123456789ABCDEFull, 256u << 20, &uuid),
                     0, nullptr, 1));
  }
  {
    FlatBufferBuilder f;
    c.push_back(Wrap(f, seq++, P::Body::DisconnectRequest, P::CreateDisconnectRequest(f)));
  }
  {
    FlatBufferBuilder f;
    c.push_back(Wrap(f, seq++, P::Body::NONE, Offset<void>(), -5, "object not found"));
  }
  {
    FlatBufferBuilder f;
    c.push_back(Wrap(f, seq++, P::Body::PinReply, P::CreatePinReply(f)));
  }
  {
    FlatBufferBuilder f;
    c.push_back(Wrap(f, seq++, P::Body::UnpinReply, P::CreateUnpinReply(f)));
  }
  return c;
}

// An error reply (no 8-byte fields) whose total size is 4 mod 8: following messages in a stream
// then start at addresses that are not 8-aligned.
Bytes OddSizedReply() {
  for (int k = 0; k < 16; k++) {
    FlatBufferBuilder f;
    std::string err(static_cast<size_t>(k), 'e');
    Bytes b = Wrap(f, 0, P::Body::NONE, Offset<void>(), -1, err.c_str());
    if (b.size() % 8 == 4) return b;
  }
  return Bytes();
}

// Writes count elements of elem_size bytes (a multiple of 4) as a vector whose length prefix is
// 4-aligned, preceded by a filler string of filler_len bytes; the builder only aligns such a
// vector to 4, so depending on filler_len its element data ends up 8-aligned or not.
Offset<void> RawVector(FlatBufferBuilder& f, const void* elems, size_t elem_size, size_t count,
                       size_t filler_len) {
  std::string filler(filler_len, 'f');
  f.CreateString(filler);
  const size_t words = elem_size * count / 4;
  f.StartVector(words, sizeof(uint32_t));
  auto p = static_cast<const uint8_t*>(elems);
  for (size_t i = words; i-- > 0;) {
    uint32_t w;
    std::memcpy(&w, p + 4 * i, 4);
    f.PushElement(flatbuffers::EndianScalar(w));
  }
  return Offset<void>(f.EndVector(count));
}

// A message whose 8-byte-element vector (uids, or GetReply/ListReply objects) is at an
// 8-aligned or a 4-mod-8 position; returns an empty Bytes if no filler gives that alignment.
enum class VecKind { kReleaseUids, kGetReplyObjects, kListReplyObjects };
Bytes WithVectorAlignment(VecKind kind, bool aligned) {
  std::vector<uint64_t> uids = {0x1111111122222222ull, 0x3333333344444444ull, 5};
  std::vector<P::ObjectLocation> locs = {P::ObjectLocation(1, 2, 3, 4, 5, 6, 7, 8, 9),
                                         P::ObjectLocation(8, 9, 10, 11, 12, -13, -1, 0, 0)};
  std::vector<P::ObjectInfo> infos = {MakeInfo(1), MakeInfo(2)};
  for (size_t filler = 0; filler < 16; filler++) {
    FlatBufferBuilder f;
    Bytes b;
    const void* data = nullptr;
    if (kind == VecKind::kReleaseUids) {
      auto v = RawVector(f, uids.data(), 8, uids.size(), filler);
      auto body = P::CreateReleaseRequest(f, Offset<flatbuffers::Vector<uint64_t>>(v.o));
      b = Wrap(f, 1, P::Body::ReleaseRequest, body);
      data = P::GetSizePrefixedMessage(b.data())->body_as_ReleaseRequest()->uids()->Data();
    } else if (kind == VecKind::kGetReplyObjects) {
      auto v = RawVector(f, locs.data(), sizeof(P::ObjectLocation), locs.size(), filler);
      auto body = P::CreateGetReply(
          f, Offset<flatbuffers::Vector<const P::ObjectLocation*>>(v.o));
      b = Wrap(f, 1, P::Body::GetReply, body);
      data = P::GetSizePrefixedMessage(b.data())->body_as_GetReply()->objects()->Data();
    } else {
      auto v = RawVector(f, infos.data(), sizeof(P::ObjectInfo), infos.size(), filler);
      auto body = P::CreateListReply(f, Offset<flatbuffers::Vector<const P::ObjectInfo*>>(v.o));
      b = Wrap(f, 1, P::Body::ListReply, body);
      data = P::GetSizePrefixedMessage(b.data())->body_as_ListReply()->objects()->Data();
    }
    if (Aligned8(data) == aligned) return b;
  }
  return Bytes();
}

// Pops every whole message buffered in fb, copying each; checks alignment and verification.
int PopAll(P::FrameBuffer& fb, std::vector<Bytes>* out, int* misaligned, int* unverified) {
  int n = 0;
  for (;;) {
    const uint8_t* msg = nullptr;
    size_t len = 0;
    auto r = fb.Pop(&msg, &len);
    if (r == P::FrameBuffer::Next::kNone) return n;
    if (r != P::FrameBuffer::Next::kMessage) return -1;
    if (!Aligned8(msg)) (*misaligned)++;
    if (P::VerifyMessage(msg, len) == nullptr) (*unverified)++;
    out->push_back(Bytes(msg, len));
    n++;
  }
}

void Feed(P::FrameBuffer& fb, const uint8_t* p, size_t n) {
  size_t avail = 0;
  uint8_t* w = fb.Reserve(n, &avail);
  REQUIRE(w != nullptr);
  REQUIRE(avail >= n);
  std::memcpy(w, p, n);
  fb.Commit(n);
}

}  // namespace

TEST_SUITE("unit") {

// ---- encode / verify / decode of every message kind ------------------------------------------

TEST_CASE("MessageIdentifier and limits") {
  CHECK(std::string(P::MessageIdentifier()) == "STOR");
  CHECK(P::kProtocolVersion == 3);
  CHECK(sizeof(P::ObjectId) == 20);
  CHECK(sizeof(P::ObjectLocation) == 64);
  CHECK(sizeof(P::GpuDeviceStats) == 48);
  CHECK(sizeof(P::ObjectInfo) == 88);
  CHECK(P::kMaxRequestBytes == 4u << 20);
  CHECK(P::kMaxReplyBytes == 64u << 20);
  CHECK(P::kMaxListPage * sizeof(P::ObjectInfo) < P::kMaxReplyBytes / 2);
  CHECK(P::kMaxPageObjects * sizeof(P::ObjectInfo) < P::kMaxReplyBytes / 2);
  CHECK(P::kMaxSpillFilesPage * 4200 < P::kMaxReplyBytes / 2);
}

TEST_CASE("ConnectRequest and ConnectReply round-trip") {
  {
    FlatBufferBuilder f;
    Bytes b = Wrap(f, 1, P::Body::ConnectRequest,
                   P::CreateConnectRequestDirect(f, P::kProtocolVersion, "trainer-\xc3\xa9-7", -12345));
    const P::Message* m = Decode(b);
    CHECK(m->seq() == 1);
    CHECK(m->status() == 0);
    CHECK(m->error() == nullptr);
    CHECK(m->num_fds() == 0);
    CHECK(m->body_type() == P::Body::ConnectRequest);
    CHECK(m->body_as_ConnectReply() == nullptr);
    auto r = m->body_as_ConnectRequest();
    REQUIRE(r != nullptr);
    CHECK(r->protocol_version() == P::kProtocolVersion);
    REQUIRE(r->client_name() != nullptr);
    CHECK(r->client_name()->str() == "trainer-\xc3\xa9-7");
    CHECK(r->pid() == -12345);
  }
  {
    FlatBufferBuilder f;
    auto region = P::CreateRegion(f, 0xABCDEF0123456789ull, 1ull << 40);
    Bytes b = Wrap(f, 0xFFFFFFFFFFFFFFFFull, P::Body::ConnectReply,
                   P::CreateConnectReplyDirect(f, 1, "store 0.3.1", 0xDEADBEEFCAFEF00Dull, region,
                                               (1ull << 40) - 4096),
                   0, nullptr, 1);
    const P::Message* m = Decode(b);
    CHECK(m->seq() == 0xFFFFFFFFFFFFFFFFull);
    CHECK(m->num_fds() == 1);
    CHECK(m->body_type() == P::Body::ConnectReply);
    auto r = m->body_as_ConnectReply();
    REQUIRE(r != nullptr);
    CHECK(r->protocol_version() == 1);
    REQUIRE(r->server_version() != nullptr);
    CHECK(r->server_version()->str() == "store 0.3.1");
    CHECK(r->client_id() == 0xDEADBEEFCAFEF00Dull);
    REQUIRE(r->region() != nullptr);
    CHECK(r->region()->region_id() == 0xABCDEF0123456789ull);
    CHECK(r->region()->size() == 1ull << 40);
    CHECK(r->capacity() == (1ull << 40) - 4096);
  }
}

TEST_CASE("CreateRequest round-trips id, sizes, metadata, inline data and device") {
  std::vector<uint8_t> meta(1000), data(777);
  for (size_t i = 0; i < meta.size(); i++) meta[i] = static_cast<uint8_t>(i * 13 + 5);
  for (size_t i = 0; i < data.size(); i++) data[i] = static_cast<uint8_t>(255 - i * 7);
  P::ObjectId id = Id(42);
  FlatBufferBuilder f;
  Bytes b = Wrap(f, 77, P::Body::CreateRequest,
                 P::CreateCreateRequestDirect(f, &id, data.size(), &meta, -3, 5, -1, &data));
  const P::Message* m = Decode(b);
  CHECK(m->seq() == 77);
  auto r = m->body_as_CreateRequest();
  REQUIRE(r != nullptr);
  CHECK(SameId(r->id(), id));
  CHECK(r->data_size() == 777);
  REQUIRE(r->metadata() != nullptr);
  CHECK(std::vector<uint8_t>(r->metadata()->begin(), r->metadata()->end()) == meta);
  CHECK(r->importance() == -3);
  CHECK(r->device() == 5);
  CHECK(r->timeout_ms() == -1);
  REQUIRE(r->data() != nullptr);
  CHECK(std::vector<uint8_t>(r->data()->begin(), r->data()->end()) == data);

  SUBCASE("device defaults to -1 (host); 0 is a real device and is kept") {
    FlatBufferBuilder f1;
    P::ObjectId id1 = Id(1);
    Bytes b1 = Wrap(f1, 1, P::Body::CreateRequest, P::CreateCreateRequest(f1, &id1, 10));
    auto r1 = Decode(b1)->body_as_CreateRequest();
    REQUIRE(r1 != nullptr);
    CHECK(r1->device() == -1);
    CHECK(r1->metadata() == nullptr);
    CHECK(r1->data() == nullptr);
    CHECK(r1->importance() == 0);
    CHECK(r1->timeout_ms() == 0);
    CHECK(r1->data_size() == 10);

    FlatBufferBuilder f2;
    Bytes b2 = Wrap(f2, 2, P::Body::CreateRequest,
                    P::CreateCreateRequest(f2, &id1, 10, 0, 0, /*device=*/0));
    auto r2 = Decode(b2)->body_as_CreateRequest();
    REQUIRE(r2 != nullptr);
    CHECK(r2->device() == 0);

    FlatBufferBuilder f3;
    Bytes b3 = Wrap(f3, 3, P::Body::CreateRequest,
                    P::CreateCreateRequest(f3, &id1, 10, 0, 0, std::numeric_limits<int32_t>::max()));
    CHECK(Decode(b3)->body_as_CreateRequest()->device() == std::numeric_limits<int32_t>::max());
  }

  SUBCASE("empty metadata and empty inline data are present but empty") {
    FlatBufferBuilder f1;
    std::vector<uint8_t> none;
    Bytes b1 = Wrap(f1, 1, P::Body::CreateRequest,
                    P::CreateCreateRequestDirect(f1, &id, 0, &none, 0, -1, 0, &none));
    auto r1 = Decode(b1)->body_as_CreateRequest();
    REQUIRE(r1->metadata() != nullptr);
    REQUIRE(r1->data() != nullptr);
    CHECK(r1->metadata()->size() == 0);
    CHECK(r1->data()->size() == 0);
  }

  SUBCASE("the biggest legal create fits under kMaxRequestBytes") {
    FlatBufferBuilder f1;
    std::vector<uint8_t> big_meta(1u << 20, 0x5A), inline_data(P::kInlinePutMax, 0xA5);
    Bytes b1 = Wrap(f1, 1, P::Body::CreateRequest,
                    P::CreateCreateRequestDirect(f1, &id, inline_data.size(), &big_meta, 0, -1, 0,
                                                 &inline_data));
    CHECK(b1.size() - 4 <= P::kMaxRequestBytes);
    auto r1 = Decode(b1)->body_as_CreateRequest();
    REQUIRE(r1 != nullptr);
    CHECK(r1->metadata()->size() == 1u << 20);
    CHECK(r1->data()->size() == P::kInlinePutMax);
    CHECK(r1->metadata()->Get(12345) == 0x5A);
    CHECK(r1->data()->Get(P::kInlinePutMax - 1) == 0xA5);
  }
}

TEST_CASE("CreateReply round-trip") {
  FlatBufferBuilder f;
  Bytes b = Wrap(f, 5, P::Body::CreateReply,
                 P::CreateCreateReply(f, 123456789, 2, (1ull << 35) + 64, 0xFFFFFFFFFFFFFFFFull, 1u << 20));
  auto r = Decode(b)->body_as_CreateReply();
  REQUIRE(r != nullptr);
  CHECK(r->uid() == 123456789);
  CHECK(r->region_id() == 2);
  CHECK(r->offset() == (1ull << 35) + 64);
  CHECK(r->data_size() == 0xFFFFFFFFFFFFFFFFull);
  CHECK(r->metadata_size() == 1u << 20);
}

TEST_CASE("CreateReply round-trips the device fields of a GPU object") {
  FlatBufferBuilder f;
  Bytes b = Wrap(f, 6, P::Body::CreateReply,
                 P::CreateCreateReply(f, 77, 1, 4096, 1000, 16, 3, 5, (512ull << 20) - 256));
  auto r = Decode(b)->body_as_CreateReply();
  REQUIRE(r != nullptr);
  CHECK(r->device() == 3);
  CHECK(r->chunk() == 5);
  CHECK(r->chunk_offset() == (512ull << 20) - 256);
  // A host object's reply leaves device at its default, -1.
  FlatBufferBuilder f2;
  Bytes b2 = Wrap(f2, 7, P::Body::CreateReply, P::CreateCreateReply(f2, 78, 1, 0, 10, 0));
  CHECK(Decode(b2)->body_as_CreateReply()->device() == -1);
}

TEST_CASE("GPU chunk request and reply, and per-device stats, round-trip") {
  {
    FlatBufferBuilder f;
    Bytes b = Wrap(f, 9, P::Body::GpuChunkRequest, P::CreateGpuChunkRequest(f, 2, 7));
    auto r = Decode(b)->body_as_GpuChunkRequest();
    REQUIRE(r != nullptr);
    CHECK(r->device() == 2);
    CHECK(r->chunk() == 7);
  }
  {
    FlatBufferBuilder f;
    std::vector<uint8_t> uuid(16);
    for (int i = 0; i < 16; i++) uuid[i] = static_cast<uint8_t>(i * 7);
    Bytes b = Wrap(f, 10, P::Body::GpuChunkReply,
                   P::CreateGpuChunkReplyDirect(f, 2, 7, 0xFEDCBA9876543210ull, 1ull << 30, &uuid),
                   0, nullptr, 1);
    auto m = Decode(b);
    CHECK(m->num_fds() == 1);
    auto r = m->body_as_GpuChunkReply();
    REQUIRE(r != nullptr);
    CHECK(r->device() == 2);
    CHECK(r->chunk() == 7);
    CHECK(r->chunk_uid() == 0xFEDCBA9876543210ull);
    CHECK(r->size() == 1ull << 30);
    REQUIRE(r->uuid() != nullptr);
    REQUIRE(r->uuid()->size() == 16);
    CHECK(r->uuid()->Get(15) == 105);
  }
  {
    FlatBufferBuilder f;
    std::vector<P::GpuDeviceStats> gpus;
    for (int i = 0; i < 4; i++) {
      gpus.emplace_back(i, i + 1, (1ull << 30) * (i + 1), 256u * i, i * 10, 256u << 20, 1000u + i);
    }
    auto v = f.CreateVectorOfStructs(gpus);
    P::StatsReplyBuilder sb(f);
    sb.add_gpu_backend(P::GpuBackend::MemfdStandIn);
    sb.add_gpus(v);
    Bytes b = Wrap(f, 11, P::Body::StatsReply, sb.Finish());
    auto r = Decode(b)->body_as_StatsReply();
    REQUIRE(r != nullptr);
    CHECK(r->gpu_backend() == P::GpuBackend::MemfdStandIn);
    REQUIRE(r->gpus() != nullptr);
    REQUIRE(r->gpus()->size() == 4);
    for (uint32_t i = 0; i < 4; i++) {
      const P::GpuDeviceStats* d = r->gpus()->Get(i);
      CAPTURE(i);
      CHECK(Aligned8(d));
      CHECK(d->device() == static_cast<int32_t>(i));
      CHECK(d->chunks() == i + 1);
      CHECK(d->capacity_bytes() == (1ull << 30) * (i + 1));
      CHECK(d->used_bytes() == 256u * i);
      CHECK(d->object_count() == i * 10);
      CHECK(d->chunk_size() == 256u << 20);
      CHECK(d->largest_free_bytes() == 1000u + i);
    }
  }
  {
    // An older StatsReply without the GPU fields reads as no backend and no devices.
    FlatBufferBuilder f;
    P::StatsReplyBuilder sb(f);
    sb.add_capacity_bytes(1);
    Bytes b = Wrap(f, 12, P::Body::StatsReply, sb.Finish());
    auto r = Decode(b)->body_as_StatsReply();
    CHECK(r->gpu_backend() == P::GpuBackend::None);
    CHECK(r->gpus() == nullptr);
  }
}

TEST_CASE("Seal and Abort requests and replies round-trip") {
  P::ObjectId id = Id(9);
  {
    FlatBufferBuilder f;
    Bytes b = Wrap(f, 10, P::Body::SealRequest, P::CreateSealRequest(f, &id, 555));
    const P::Message* m = Decode(b);
    CHECK(m->body_type() == P::Body::SealRequest);
    auto r = m->body_as_SealRequest();
    REQUIRE(r != nullptr);
    CHECK(SameId(r->id(), id));
    CHECK(r->uid() == 555);
    CHECK(m->body_as_AbortRequest() == nullptr);
  }
  {
    FlatBufferBuilder f;
    Bytes b = Wrap(f, 10, P::Body::SealReply, P::CreateSealReply(f));
    const P::Message* m = Decode(b);
    CHECK(m->seq() == 10);
    CHECK(m->body_type() == P::Body::SealReply);
    CHECK(m->body_as_SealReply() != nullptr);
  }
  {
    FlatBufferBuilder f;
    Bytes b = Wrap(f, 11, P::Body::AbortRequest, P::CreateAbortRequest(f, &id, 556));
    const P::Message* m = Decode(b);
    auto r = m->body_as_AbortRequest();
    REQUIRE(r != nullptr);
    CHECK(SameId(r->id(), id));
    CHECK(r->uid() == 556);
    CHECK(m->body_as_SealRequest() == nullptr);
  }
  {
    FlatBufferBuilder f;
    Bytes b = Wrap(f, 11, P::Body::AbortReply, P::CreateAbortReply(f));
    const P::Message* m = Decode(b);
    CHECK(m->seq() == 11);
    CHECK(m->body_type() == P::Body::AbortReply);
    CHECK(m->body_as_AbortReply() != nullptr);
  }
}

TEST_CASE("GetRequest with kMaxIdsPerRequest ids round-trips and fits the request cap") {
  std::vector<P::ObjectId> ids;
  for (uint32_t i = 0; i < P::kMaxIdsPerRequest; i++) ids.push_back(Id(i));
  FlatBufferBuilder f;
  Bytes b = Wrap(f, 3, P::Body::GetRequest, P::CreateGetRequestDirect(f, &ids, 2500));
  CHECK(b.size() - 4 <= P::kMaxRequestBytes);
  auto r = Decode(b)->body_as_GetRequest();
  REQUIRE(r != nullptr);
  CHECK(r->timeout_ms() == 2500);
  REQUIRE(r->ids() != nullptr);
  REQUIRE(r->ids()->size() == P::kMaxIdsPerRequest);
  int wrong = 0;
  for (uint32_t i = 0; i < P::kMaxIdsPerRequest; i++) {
    if (!SameId(r->ids()->Get(i), ids[i])) wrong++;
  }
  CHECK(wrong == 0);

  FlatBufferBuilder f2;
  std::vector<P::ObjectId> none;
  Bytes b2 = Wrap(f2, 4, P::Body::GetRequest, P::CreateGetRequestDirect(f2, &none, 0));
  auto r2 = Decode(b2)->body_as_GetRequest();
  REQUIRE(r2->ids() != nullptr);
  CHECK(r2->ids()->size() == 0);
  CHECK(r2->timeout_ms() == 0);
}

TEST_CASE("GetReply round-trips ObjectLocation structs, device included") {
  std::vector<P::ObjectLocation> locs;
  for (uint32_t i = 0; i < 100; i++) {
    if (i % 10 == 3) {
      locs.emplace_back(0, 0, 0, 0, 0, -4 - static_cast<int32_t>(i % 2), 0, 0, 0);
    } else {
      int32_t device = static_cast<int32_t>(i % 5) - 1;
      locs.emplace_back(1000 + i, i % 3, 4096ull * i, 100 + i, i, 0, device,
                        device >= 0 ? (256ull << 20) + 256 * i : 0, device >= 0 ? i % 4 : 0);
    }
  }
  FlatBufferBuilder f;
  Bytes b = Wrap(f, 8, P::Body::GetReply, P::CreateGetReplyDirect(f, &locs));
  auto r = Decode(b)->body_as_GetReply();
  REQUIRE(r != nullptr);
  REQUIRE(r->objects() != nullptr);
  REQUIRE(r->objects()->size() == 100);
  for (uint32_t i = 0; i < 100; i++) {
    const P::ObjectLocation* l = r->objects()->Get(i);
    CAPTURE(i);
    CHECK(Aligned8(l));
    CHECK(l->uid() == locs[i].uid());
    CHECK(l->region_id() == locs[i].region_id());
    CHECK(l->offset() == locs[i].offset());
    CHECK(l->data_size() == locs[i].data_size());
    CHECK(l->metadata_size() == locs[i].metadata_size());
    CHECK(l->status() == locs[i].status());
    CHECK(l->device() == locs[i].device());
    CHECK(l->chunk_offset() == locs[i].chunk_offset());
    CHECK(l->chunk() == locs[i].chunk());
  }
  // Spot-check the values themselves, not just equality with the source structs.
  CHECK(r->objects()->Get(1)->device() == 0);
  CHECK(r->objects()->Get(1)->chunk_offset() == (256ull << 20) + 256);
  CHECK(r->objects()->Get(1)->chunk() == 1);
  CHECK(r->objects()->Get(3)->uid() == 0);
  CHECK(r->objects()->Get(3)->status() == -5);
  CHECK(r->objects()->Get(4)->uid() == 1004);
  CHECK(r->objects()->Get(4)->offset() == 4096ull * 4);
  CHECK(r->objects()->Get(4)->device() == 3);
  CHECK(r->objects()->Get(5)->device() == -1);
}

TEST_CASE("ReleaseRequest round-trip") {
  std::vector<uint64_t> uids = {1, 0xFFFFFFFFFFFFFFFFull, 42, 42, 7};
  FlatBufferBuilder f;
  Bytes b = Wrap(f, 9, P::Body::ReleaseRequest, P::CreateReleaseRequestDirect(f, &uids));
  auto r = Decode(b)->body_as_ReleaseRequest();
  REQUIRE(r != nullptr);
  REQUIRE(r->uids() != nullptr);
  CHECK(std::vector<uint64_t>(r->uids()->begin(), r->uids()->end()) == uids);
}

TEST_CASE("Contains and Delete requests and replies round-trip") {
  std::vector<P::ObjectId> ids = {Id(1), Id(2), Id(3), Id(4)};
  {
    FlatBufferBuilder f;
    Bytes b = Wrap(f, 20, P::Body::ContainsRequest, P::CreateContainsRequestDirect(f, &ids));
    auto r = Decode(b)->body_as_ContainsRequest();
    REQUIRE(r != nullptr);
    REQUIRE(r->ids()->size() == 4);
    for (uint32_t i = 0; i < 4; i++) CHECK(SameId(r->ids()->Get(i), ids[i]));
  }
  {
    FlatBufferBuilder f;
    std::vector<uint8_t> present = {1, 0, 0, 1};
    Bytes b = Wrap(f, 20, P::Body::ContainsReply, P::CreateContainsReplyDirect(f, &present));
    auto r = Decode(b)->body_as_ContainsReply();
    REQUIRE(r != nullptr);
    REQUIRE(r->present() != nullptr);
    CHECK(std::vector<uint8_t>(r->present()->begin(), r->present()->end()) == present);
  }
  {
    FlatBufferBuilder f;
    Bytes b = Wrap(f, 21, P::Body::DeleteRequest, P::CreateDeleteRequestDirect(f, &ids));
    auto r = Decode(b)->body_as_DeleteRequest();
    REQUIRE(r != nullptr);
    REQUIRE(r->ids()->size() == 4);
    for (uint32_t i = 0; i < 4; i++) CHECK(SameId(r->ids()->Get(i), ids[i]));
  }
  {
    FlatBufferBuilder f;
    std::vector<int32_t> st = {0, -2, -9, std::numeric_limits<int32_t>::min()};
    Bytes b = Wrap(f, 21, P::Body::DeleteReply, P::CreateDeleteReplyDirect(f, &st));
    auto r = Decode(b)->body_as_DeleteReply();
    REQUIRE(r != nullptr);
    REQUIRE(r->statuses() != nullptr);
    CHECK(std::vector<int32_t>(r->statuses()->begin(), r->statuses()->end()) == st);
  }
}

void CheckInfo(const P::ObjectInfo& got, uint32_t n) {
  CAPTURE(n);
  CHECK(Aligned8(&got));
  CHECK(Hex(got.id()) == Hex(Id(n)));
  CHECK(got.data_size() == 1000 + n);
  CHECK(got.metadata_size() == 10 + n);
  CHECK(got.state() == n % 5);
  CHECK(got.level() == n % 3);
  CHECK(got.device() == static_cast<int32_t>(n % 4) - 1);
  CHECK(got.importance() == -static_cast<int32_t>(n));
  CHECK(got.pin_count() == n * 2);
  CHECK(got.reader_count() == n * 3);
  CHECK(got.create_time_ns() == 1700000000000000000ll + n);
  CHECK(got.last_access_ns() == 1700000000000000000ll + 2 * n);
  CHECK(got.creator_pid() == 4000 + static_cast<int32_t>(n));
}

TEST_CASE("Info request and reply, List request and reply round-trip") {
  {
    FlatBufferBuilder f;
    P::ObjectId id = Id(33);
    Bytes b = Wrap(f, 30, P::Body::InfoRequest, P::CreateInfoRequest(f, &id));
    auto r = Decode(b)->body_as_InfoRequest();
    REQUIRE(r != nullptr);
    CHECK(SameId(r->id(), id));
  }
  {
    FlatBufferBuilder f;
    P::ObjectInfo info = MakeInfo(33);
    Bytes b = Wrap(f, 30, P::Body::InfoReply, P::CreateInfoReply(f, &info));
    auto r = Decode(b)->body_as_InfoReply();
    REQUIRE(r != nullptr);
    REQUIRE(r->info() != nullptr);
    CheckInfo(*r->info(), 33);
  }
  {
    FlatBufferBuilder f;
    Bytes b = Wrap(f, 31, P::Body::ListRequest, P::CreateListRequest(f));
    const P::Message* m = Decode(b);
    CHECK(m->body_type() == P::Body::ListRequest);
    CHECK(m->body_as_ListRequest() != nullptr);
  }
  {
    std::vector<P::ObjectInfo> infos;
    for (uint32_t i = 0; i < 500; i++) infos.push_back(MakeInfo(i));
    FlatBufferBuilder f;
    Bytes b = Wrap(f, 31, P::Body::ListReply, P::CreateListReplyDirect(f, &infos));
    auto r = Decode(b)->body_as_ListReply();
    REQUIRE(r != nullptr);
    REQUIRE(r->objects() != nullptr);
    REQUIRE(r->objects()->size() == 500);
    for (uint32_t i = 0; i < 500; i += 37) CheckInfo(*r->objects()->Get(i), i);
    CheckInfo(*r->objects()->Get(499), 499);
  }
  {
    FlatBufferBuilder f;
    std::vector<P::ObjectInfo> none;
    Bytes b = Wrap(f, 32, P::Body::ListReply, P::CreateListReplyDirect(f, &none));
    auto r = Decode(b)->body_as_ListReply();
    REQUIRE(r->objects() != nullptr);
    CHECK(r->objects()->size() == 0);
  }
}

TEST_CASE("Pin, Unpin, Stats, Disconnect and error replies round-trip") {
  P::ObjectId id = Id(50);
  {
    FlatBufferBuilder f;
    Bytes b = Wrap(f, 40, P::Body::PinRequest, P::CreatePinRequest(f, &id));
    auto r = Decode(b)->body_as_PinRequest();
    REQUIRE(r != nullptr);
    CHECK(SameId(r->id(), id));
  }
  {
    FlatBufferBuilder f;
    Bytes b = Wrap(f, 41, P::Body::UnpinRequest, P::CreateUnpinRequest(f, &id));
    auto r = Decode(b)->body_as_UnpinRequest();
    REQUIRE(r != nullptr);
    CHECK(SameId(r->id(), id));
  }
  {
    FlatBufferBuilder f;
    Bytes b = Wrap(f, 40, P::Body::PinReply, P::CreatePinReply(f));
    CHECK(Decode(b)->body_as_PinReply() != nullptr);
    FlatBufferBuilder f2;
    Bytes b2 = Wrap(f2, 41, P::Body::UnpinReply, P::CreateUnpinReply(f2));
    CHECK(Decode(b2)->body_as_UnpinReply() != nullptr);
    FlatBufferBuilder f3;
    Bytes b3 = Wrap(f3, 42, P::Body::StatsRequest, P::CreateStatsRequest(f3));
    CHECK(Decode(b3)->body_as_StatsRequest() != nullptr);
    FlatBufferBuilder f4;
    Bytes b4 = Wrap(f4, 43, P::Body::DisconnectRequest, P::CreateDisconnectRequest(f4));
    CHECK(Decode(b4)->body_type() == P::Body::DisconnectRequest);
    CHECK(Decode(b4)->body_as_DisconnectRequest() != nullptr);
  }
  {
    FlatBufferBuilder f;
    uint64_t v[24];
    for (int i = 0; i < 24; i++) v[i] = (uint64_t{1} << (i + 20)) + static_cast<uint64_t>(i);
    Bytes b = Wrap(f, 44, P::Body::StatsReply,
                   P::CreateStatsReply(f, v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9],
                                       v[10], v[11], v[12], v[13], v[14], v[15], v[16], v[17], v[18],
                                       v[19], v[20], v[21], v[22], v[23], 31337));
    auto s = Decode(b)->body_as_StatsReply();
    REQUIRE(s != nullptr);
    CHECK(s->capacity_bytes() == v[0]);
    CHECK(s->used_bytes() == v[1]);
    CHECK(s->object_count() == v[2]);
    CHECK(s->client_count() == v[3]);
    CHECK(s->created_count() == v[4]);
    CHECK(s->sealed_count() == v[5]);
    CHECK(s->created_bytes() == v[6]);
    CHECK(s->sealed_bytes() == v[7]);
    CHECK(s->pinned_count() == v[8]);
    CHECK(s->pinned_bytes() == v[9]);
    CHECK(s->open_count() == v[10]);
    CHECK(s->open_bytes() == v[11]);
    CHECK(s->deleted_pending_count() == v[12]);
    CHECK(s->deleted_pending_bytes() == v[13]);
    CHECK(s->waiting_gets() == v[14]);
    CHECK(s->waiting_creates() == v[15]);
    CHECK(s->total_creates() == v[16]);
    CHECK(s->total_seals() == v[17]);
    CHECK(s->total_gets() == v[18]);
    CHECK(s->total_releases() == v[19]);
    CHECK(s->total_deletes() == v[20]);
    CHECK(s->total_aborts() == v[21]);
    CHECK(s->total_full() == v[22]);
    CHECK(s->uptime_ns() == v[23]);
    CHECK(s->server_pid() == 31337);
  }
  {
    FlatBufferBuilder f;
    Bytes b = Wrap(f, 45, P::Body::NONE, Offset<void>(), -7, "no such object");
    const P::Message* m = Decode(b);
    CHECK(m->seq() == 45);
    CHECK(m->status() == -7);
    REQUIRE(m->error() != nullptr);
    CHECK(m->error()->str() == "no such object");
    CHECK(m->body_type() == P::Body::NONE);
    CHECK(m->body() == nullptr);
  }
}

TEST_CASE("every corpus message verifies and reads cleanly; kinds cover the whole Body union") {
  std::vector<Bytes> corpus = Corpus();
  std::set<int> kinds;
  for (const Bytes& b : corpus) {
    const P::Message* m = Decode(b);
    kinds.insert(static_cast<int>(m->body_type()));
    std::string s = CheckedDump(b);
    CHECK(s.find("MISSING") == std::string::npos);
    CHECK(s.find("body=null") == std::string::npos);
  }
  // NONE, the 26 core body types, and the two GPU chunk messages.
  CHECK(kinds.size() == 29);
  CHECK(*kinds.begin() == 0);
  CHECK(kinds.count(static_cast<int>(P::Body::DisconnectRequest)) == 1);
  CHECK(kinds.count(static_cast<int>(P::Body::GpuChunkRequest)) == 1);
  CHECK(*kinds.rbegin() == static_cast<int>(P::Body::GpuChunkReply));
}

TEST_CASE("ToProto copies all 20 id bytes") {
  uint8_t raw[20];
  for (int i = 0; i < 20; i++) raw[i] = static_cast<uint8_t>(0xFF - i * 13);
  raw[0] = 0;
  raw[19] = 0xFF;
  P::ObjectId id = P::ToProto(raw);
  for (int i = 0; i < 20; i++) {
    CAPTURE(i);
    CHECK(id.bytes()->Get(static_cast<flatbuffers::uoffset_t>(i)) == raw[i]);
  }
  CHECK(std::memcmp(&id, raw, 20) == 0);

  // Through a message and back.
  FlatBufferBuilder f;
  Bytes b = Wrap(f, 1, P::Body::InfoRequest, P::CreateInfoRequest(f, &id));
  auto r = Decode(b)->body_as_InfoRequest();
  REQUIRE(r != nullptr);
  REQUIRE(r->id() != nullptr);
  uint8_t back[20];
  for (int i = 0; i < 20; i++) back[i] = r->id()->bytes()->Get(static_cast<flatbuffers::uoffset_t>(i));
  CHECK(std::memcmp(back, raw, 20) == 0);

  // Different single bytes give different ids.
  uint8_t other[20];
  std::memcpy(other, raw, 20);
  other[19] ^= 1;
  P::ObjectId id2 = P::ToProto(other);
  CHECK(std::memcmp(&id, &id2, 20) != 0);
  CHECK(id2.bytes()->Get(19) == 0xFE);
}

// ---- VerifyMessage rejects -------------------------------------------------------------------

TEST_CASE("VerifyMessage rejects every truncation of a valid message") {
  std::vector<Bytes> corpus = Corpus();
  {  // and one larger message
    FlatBufferBuilder f;
    std::vector<P::ObjectInfo> infos;
    for (uint32_t i = 0; i < 20; i++) infos.push_back(MakeInfo(i));
    corpus.push_back(Wrap(f, 1, P::Body::ListReply, P::CreateListReplyDirect(f, &infos), 0, "x"));
  }
  int accepted = 0, fixed_accepted = 0, fixed_changed = 0, fixed_unsafe = 0;
  for (const Bytes& b : corpus) {
    const std::string want = CheckedDump(b);
    for (size_t len = 0; len < b.size(); len++) {
      Bytes t(b.data(), len);
      if (P::VerifyMessage(t.data(), len) != nullptr) accepted++;
      if (len < 4) continue;
      // The same truncation with a length prefix that matches it.
      SetPrefix(t.data(), static_cast<uint32_t>(len - 4));
      const P::Message* m = P::VerifyMessage(t.data(), len);
      if (m != nullptr) {
        // Only padding can have been cut: the content must read exactly as before.
        fixed_accepted++;
        Reader r(t.data(), len);
        if (r.Dump(m) != want) fixed_changed++;
        if (r.out_of_bounds || r.misaligned || r.missing_required) fixed_unsafe++;
      }
    }
  }
  INFO("truncations with a matching prefix that still verified (padding only): "
       << fixed_accepted);
  CHECK(accepted == 0);
  CHECK(fixed_changed == 0);
  CHECK(fixed_unsafe == 0);
}

TEST_CASE("VerifyMessage rejects trailing bytes, a wrong identifier and a wrong length prefix") {
  std::vector<Bytes> corpus = Corpus();
  int wrongly_accepted = 0;
  for (const Bytes& b : corpus) {
    REQUIRE(P::VerifyMessage(b.data(), b.size()) != nullptr);
    // Trailing bytes (the prefix still tells the old size).
    for (size_t extra = 1; extra <= 16; extra++) {
      for (uint8_t fill : {uint8_t{0}, uint8_t{0xFF}}) {
        Bytes t(b.size() + extra);
        std::memcpy(t.data(), b.data(), b.size());
        std::memset(t.data() + b.size(), fill, extra);
        if (P::VerifyMessage(t.data(), t.size()) != nullptr) wrongly_accepted++;
      }
    }
    // A wrong file identifier.
    for (int pos = 8; pos < 12; pos++) {
      for (uint8_t x : {uint8_t{1}, uint8_t{0x20}, uint8_t{0x80}, uint8_t{0xFF}}) {
        Bytes t = b;
        t[pos] ^= x;
        if (P::VerifyMessage(t.data(), t.size()) != nullptr) wrongly_accepted++;
      }
    }
    {
      Bytes t = b;
      std::memcpy(t.data() + 8, "ROTS", 4);
      if (P::VerifyMessage(t.data(), t.size()) != nullptr) wrongly_accepted++;
      std::memcpy(t.data() + 8, "\0\0\0\0", 4);
      if (P::VerifyMessage(t.data(), t.size()) != nullptr) wrongly_accepted++;
    }
    // A length prefix that disagrees with the buffer size.
    const uint32_t l = static_cast<uint32_t>(b.size() - 4);
    for (uint32_t bad : {0u, 1u, 4u, 8u, l - 8, l - 4, l - 1, l + 1, l + 4, l + 8,
                         static_cast<uint32_t>(b.size()), 0x7FFFFFFFu, 0xFFFFFFFFu, l | 0x80000000u,
                         l << 8}) {
      if (bad == l) continue;
      Bytes t = b;
      SetPrefix(t.data(), bad);
      if (P::VerifyMessage(t.data(), t.size()) != nullptr) wrongly_accepted++;
    }
    // A correct prefix but a buffer size that does not match it (the bytes exist).
    {
      Bytes t(b.size() + 8);
      std::memcpy(t.data(), b.data(), b.size());
      if (P::VerifyMessage(t.data(), b.size() - 1) != nullptr) wrongly_accepted++;
      if (P::VerifyMessage(t.data(), b.size() + 1) != nullptr) wrongly_accepted++;
      if (P::VerifyMessage(t.data(), b.size() + 8) != nullptr) wrongly_accepted++;
      CHECK(P::VerifyMessage(t.data(), b.size()) != nullptr);
    }
  }
  CHECK(wrongly_accepted == 0);

  // An unprefixed buffer (plain Finish) is not a message either.
  FlatBufferBuilder f;
  auto m = P::CreateMessage(f, 1, 0, 0, 0, P::Body::StatsRequest, P::CreateStatsRequest(f).Union());
  f.Finish(m, P::MessageIdentifier());
  Bytes plain(f.GetBufferPointer(), f.GetSize());
  CHECK(P::VerifyMessage(plain.data(), plain.size()) == nullptr);
  // Nor is a prefixed buffer without the identifier.
  FlatBufferBuilder f2;
  auto m2 = P::CreateMessage(f2, 1, 0, 0, 0, P::Body::StatsRequest, P::CreateStatsRequest(f2).Union());
  f2.FinishSizePrefixed(m2);
  Bytes noid(f2.GetBufferPointer(), f2.GetSize());
  CHECK(P::VerifyMessage(noid.data(), noid.size()) == nullptr);
  // Empty input.
  CHECK(P::VerifyMessage(nullptr, 0) == nullptr);
}

TEST_CASE("VerifyMessage rejects vectors of 8-byte elements that are not 8-aligned") {
  // uids (uint64), GetReply.objects (ObjectLocation) and ListReply.objects (ObjectInfo) are
  // read with 8-byte loads; a message placing them at a 4-mod-8 offset must not verify.
  for (VecKind kind : {VecKind::kReleaseUids, VecKind::kGetReplyObjects, VecKind::kListReplyObjects}) {
    CAPTURE(static_cast<int>(kind));
    Bytes good = WithVectorAlignment(kind, true);
    Bytes bad = WithVectorAlignment(kind, false);
    REQUIRE(good.size() > 0);
    REQUIRE(bad.size() > 0);
    // The well-aligned variant is a normal message with the same content.
    const P::Message* m = P::VerifyMessage(good.data(), good.size());
    REQUIRE(m != nullptr);
    if (kind == VecKind::kReleaseUids) {
      REQUIRE(m->body_as_ReleaseRequest() != nullptr);
      auto u = m->body_as_ReleaseRequest()->uids();
      REQUIRE(u->size() == 3);
      CHECK(u->Get(0) == 0x1111111122222222ull);
      CHECK(u->Get(1) == 0x3333333344444444ull);
      CHECK(u->Get(2) == 5);
    } else if (kind == VecKind::kGetReplyObjects) {
      REQUIRE(m->body_as_GetReply() != nullptr);
      auto o = m->body_as_GetReply()->objects();
      REQUIRE(o->size() == 2);
      CHECK(o->Get(1)->uid() == 8);
      CHECK(o->Get(1)->status() == -13);
      CHECK(o->Get(1)->device() == -1);
    } else {
      REQUIRE(m->body_as_ListReply() != nullptr);
      auto o = m->body_as_ListReply()->objects();
      REQUIRE(o->size() == 2);
      CheckInfo(*o->Get(0), 1);
      CheckInfo(*o->Get(1), 2);
    }
    // The misaligned variant.
    CHECK(P::VerifyMessage(bad.data(), bad.size()) == nullptr);
  }
}

TEST_CASE("VerifyMessage rejects random garbage") {
  std::mt19937_64 rng(0x5EED0001);
  int accepted = 0;
  for (int iter = 0; iter < 20000; iter++) {
    size_t len = rng() % 600;
    Bytes g(len);
    for (size_t i = 0; i < len; i++) g[i] = static_cast<uint8_t>(rng());
    if (P::VerifyMessage(g.data(), len) != nullptr) accepted++;
  }
  CHECK(accepted == 0);

  // Garbage that gets past the first checks (right prefix, right identifier), and valid
  // messages with a run of bytes overwritten: whatever is accepted must be safely readable.
  std::vector<Bytes> corpus = Corpus();
  int deep_accepted = 0, run_accepted = 0, unsafe = 0, misaligned = 0;
  for (int iter = 0; iter < 100000; iter++) {
    Bytes g;
    bool run = iter % 2 == 1;
    if (!run) {
      size_t len = 12 + 4 * (rng() % 64);
      g = Bytes(len);
      for (size_t i = 0; i < len; i++) {
        // Mostly small values, so offsets often land inside the buffer.
        uint64_t r = rng();
        g[i] = static_cast<uint8_t>(r % 4 == 0 ? r >> 8 : (r >> 8) % 24);
      }
      SetPrefix(g.data(), static_cast<uint32_t>(len - 4));
      std::memcpy(g.data() + 8, "STOR", 4);
    } else {
      g = corpus[rng() % corpus.size()];
      size_t at = 12 + rng() % (g.size() - 12);
      size_t n = std::min<size_t>(1 + rng() % 16, g.size() - at);
      for (size_t i = 0; i < n; i++) g[at + i] = static_cast<uint8_t>(rng());
    }
    const P::Message* m = P::VerifyMessage(g.data(), g.size());
    if (m != nullptr) {
      (run ? run_accepted : deep_accepted)++;
      Reader r(g.data(), g.size());
      r.Dump(m);
      if (r.out_of_bounds || r.missing_required) unsafe++;
      if (r.misaligned) misaligned++;
    }
  }
  INFO("garbage accepted: structured " << deep_accepted << " of 50000, overwritten runs "
                                       << run_accepted << " of 50000");
  CHECK(unsafe == 0);
  CHECK(misaligned == 0);
  CHECK(run_accepted > 1000);
}

TEST_CASE("bit flips: VerifyMessage never misbehaves and what it accepts reads safely") {
  std::vector<Bytes> corpus = Corpus();
  std::vector<std::string> want;
  for (const Bytes& b : corpus) want.push_back(CheckedDump(b));
  std::mt19937_64 rng(0xB17F11B5);
  int accepted = 0, rejected = 0, unsafe = 0, misaligned = 0, header_accepted = 0,
      unchanged_accepted = 0;
  for (int iter = 0; iter < 100000; iter++) {
    const size_t which = rng() % corpus.size();
    Bytes b = corpus[which];
    size_t nbits = 1 + rng() % 4;
    std::set<size_t> bits;
    while (bits.size() < nbits) bits.insert(rng() % (b.size() * 8));
    bool header = false;  // the length prefix or the file identifier
    for (size_t bit : bits) {
      b[bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));
      size_t byte = bit / 8;
      if (byte < 4 || (byte >= 8 && byte < 12)) header = true;
    }
    const P::Message* m = P::VerifyMessage(b.data(), b.size());
    if (m == nullptr) {
      rejected++;
      continue;
    }
    accepted++;
    if (header) header_accepted++;
    Reader r(b.data(), b.size());
    std::string s = r.Dump(m);
    if (r.out_of_bounds || r.missing_required) {
      unsafe++;
      if (unsafe <= 3) MESSAGE("unsafe accept: " << s);
    }
    if (r.misaligned) {
      misaligned++;
      if (misaligned <= 3) MESSAGE("accepted with misaligned 8-byte data: " << s);
    }
    if (s == want[which]) unchanged_accepted++;
  }
  INFO("bit flips accepted " << accepted << ", rejected " << rejected
                             << ", accepted with identical content " << unchanged_accepted);
  CHECK(unsafe == 0);
  CHECK(misaligned == 0);
  CHECK(header_accepted == 0);
  // Both paths were exercised many times.
  CHECK(accepted > 1000);
  CHECK(rejected > 1000);
}

// ---- FrameBuffer -----------------------------------------------------------------------------

TEST_CASE("a message at an odd address comes out of FrameBuffer 8-aligned and verifies") {
  std::vector<Bytes> corpus = Corpus();
  for (size_t shift = 1; shift < 8; shift++) {
    for (const Bytes& b : corpus) {
      Bytes holder(b.size() + shift);
      std::memcpy(holder.data() + shift, b.data(), b.size());
      const uint8_t* odd = holder.data() + shift;
      REQUIRE(!Aligned8(odd));
      P::FrameBuffer fb(P::kMaxRequestBytes);
      Feed(fb, odd, b.size());
      const uint8_t* msg = nullptr;
      size_t len = 0;
      REQUIRE(fb.Pop(&msg, &len) == P::FrameBuffer::Next::kMessage);
      CHECK(Aligned8(msg));
      REQUIRE(len == b.size());
      CHECK(std::memcmp(msg, b.data(), len) == 0);
      const P::Message* m = P::VerifyMessage(msg, len);
      REQUIRE(m != nullptr);
      Reader r(msg, len);
      CHECK(r.Dump(m) == CheckedDump(b));
      CHECK(r.out_of_bounds == 0);
      CHECK(r.misaligned == 0);
      CHECK(fb.Pop(&msg, &len) == P::FrameBuffer::Next::kNone);
      CHECK(fb.size() == 0);
    }
  }
}

// A stream of messages, some with sizes 4 mod 8 so later ones start unaligned, one large.
struct Stream {
  std::vector<Bytes> msgs;
  std::vector<size_t> starts;
  Bytes bytes;
  int unaligned_starts = 0;
};

Stream MakeStream(bool with_large) {
  Stream s;
  std::vector<Bytes> corpus = Corpus();
  Bytes odd = OddSizedReply();
  REQUIRE(odd.size() % 8 == 4);
  for (size_t i = 0; i < corpus.size(); i++) {
    s.msgs.push_back(corpus[i]);
    if (i % 3 == 0) s.msgs.push_back(odd);
  }
  if (with_large) {
    FlatBufferBuilder f;
    P::ObjectId id = Id(77);
    std::vector<uint8_t> meta(3000, 0x11), data(P::kInlinePutMax, 0x22);
    s.msgs.push_back(Wrap(f, 999, P::Body::CreateRequest,
                          P::CreateCreateRequestDirect(f, &id, data.size(), &meta, 0, -1, 0, &data)));
    s.msgs.push_back(odd);
    s.msgs.push_back(corpus[0]);
  }
  size_t total = 0;
  for (auto& m : s.msgs) {
    s.starts.push_back(total);
    if (total % 8 != 0) s.unaligned_starts++;
    total += m.size();
  }
  s.bytes = Bytes(total);
  for (size_t i = 0; i < s.msgs.size(); i++) {
    std::memcpy(s.bytes.data() + s.starts[i], s.msgs[i].data(), s.msgs[i].size());
  }
  return s;
}

TEST_CASE("FrameBuffer: all at once, messages come out in order, aligned, unaligned ones copied") {
  Stream s = MakeStream(true);
  CHECK(s.unaligned_starts > 5);
  P::FrameBuffer fb(P::kMaxRequestBytes);
  Feed(fb, s.bytes.data(), s.bytes.size());
  CHECK(fb.size() == s.bytes.size());
  std::vector<Bytes> out;
  int misaligned = 0, unverified = 0;
  CHECK(PopAll(fb, &out, &misaligned, &unverified) == static_cast<int>(s.msgs.size()));
  CHECK(misaligned == 0);
  CHECK(unverified == 0);
  REQUIRE(out.size() == s.msgs.size());
  for (size_t i = 0; i < out.size(); i++) {
    CAPTURE(i);
    CHECK(out[i] == s.msgs[i]);
  }
  CHECK(fb.size() == 0);
  CHECK(fb.Pending() == 0);
}

TEST_CASE("FrameBuffer: byte by byte, with Pending exact at every step") {
  Stream s = MakeStream(true);
  P::FrameBuffer fb(P::kMaxRequestBytes);
  std::vector<Bytes> out;
  int misaligned = 0, unverified = 0, pending_wrong = 0, size_wrong = 0, early = 0;
  size_t next = 0;  // index of the message being received
  for (size_t pos = 0; pos < s.bytes.size(); pos++) {
    Feed(fb, s.bytes.data() + pos, 1);
    size_t fed = pos + 1;
    int n = PopAll(fb, &out, &misaligned, &unverified);
    REQUIRE(n >= 0);
    // Exactly the message that just completed, if any, came out.
    size_t end_of_next = s.starts[next] + s.msgs[next].size();
    if (fed == end_of_next) {
      if (n != 1) early++;
      next++;
    } else if (n != 0) {
      early++;
    }
    size_t have = next < s.msgs.size() ? fed - s.starts[next] : 0;
    if (fb.size() != have) size_wrong++;
    size_t want_pending = have < 4 ? 0 : s.msgs[next].size() - have;
    if (fb.Pending() != want_pending) pending_wrong++;
  }
  CHECK(early == 0);
  CHECK(pending_wrong == 0);
  CHECK(size_wrong == 0);
  CHECK(misaligned == 0);
  CHECK(unverified == 0);
  REQUIRE(out.size() == s.msgs.size());
  for (size_t i = 0; i < out.size(); i++) CHECK(out[i] == s.msgs[i]);
}

TEST_CASE("FrameBuffer: random chunk sizes give the same messages in order") {
  Stream s = MakeStream(true);
  for (uint64_t seed : {1ull, 2ull, 3ull, 0xC0FFEEull, 123456789ull}) {
    CAPTURE(seed);
    std::mt19937_64 rng(seed);
    P::FrameBuffer fb(P::kMaxRequestBytes);
    std::vector<Bytes> out;
    int misaligned = 0, unverified = 0, bad = 0;
    size_t pos = 0;
    while (pos < s.bytes.size()) {
      // Small chunks mostly, sometimes big ones; sometimes reserve more than is received.
      size_t chunk = rng() % 4 == 0 ? 1 + rng() % 100000 : 1 + rng() % 97;
      chunk = std::min(chunk, s.bytes.size() - pos);
      size_t want = rng() % 2 ? chunk : chunk + rng() % 5000;
      size_t avail = 0;
      uint8_t* w = fb.Reserve(want, &avail);
      REQUIRE(w != nullptr);
      REQUIRE(avail >= want);
      std::memcpy(w, s.bytes.data() + pos, chunk);
      fb.Commit(chunk);
      pos += chunk;
      if (PopAll(fb, &out, &misaligned, &unverified) < 0) bad++;
    }
    CHECK(bad == 0);
    CHECK(misaligned == 0);
    CHECK(unverified == 0);
    CHECK(fb.size() == 0);
    REQUIRE(out.size() == s.msgs.size());
    int different = 0;
    for (size_t i = 0; i < out.size(); i++) different += !(out[i] == s.msgs[i]);
    CHECK(different == 0);
  }
}

TEST_CASE("FrameBuffer: a length above the cap is kTooLarge as soon as the prefix is in") {
  const uint32_t cap = 1000;
  {
    P::FrameBuffer fb(cap);
    uint8_t p[4];
    SetPrefix(p, cap + 1);
    Feed(fb, p, 3);
    const uint8_t* msg = nullptr;
    size_t len = 0;
    CHECK(fb.Pop(&msg, &len) == P::FrameBuffer::Next::kNone);  // length not known yet
    CHECK(fb.Pending() == 0);
    Feed(fb, p + 3, 1);
    CHECK(fb.Pop(&msg, &len) == P::FrameBuffer::Next::kTooLarge);
    CHECK(fb.Pop(&msg, &len) == P::FrameBuffer::Next::kTooLarge);  // and stays so
  }
  for (uint32_t l : {cap + 1, 2 * cap, 0x7FFFFFFFu, 0xFFFFFFFFu}) {
    P::FrameBuffer fb(cap);
    uint8_t p[4];
    SetPrefix(p, l);
    Feed(fb, p, 4);
    const uint8_t* msg = nullptr;
    size_t len = 0;
    CAPTURE(l);
    CHECK(fb.Pop(&msg, &len) == P::FrameBuffer::Next::kTooLarge);
  }
  {  // exactly the cap is fine: it waits for the body
    P::FrameBuffer fb(cap);
    Bytes m(4 + cap);
    SetPrefix(m.data(), cap);
    for (uint32_t i = 4; i < 4 + cap; i++) m[i] = static_cast<uint8_t>(i);
    Feed(fb, m.data(), 4);
    const uint8_t* msg = nullptr;
    size_t len = 0;
    CHECK(fb.Pop(&msg, &len) == P::FrameBuffer::Next::kNone);
    CHECK(fb.Pending() == cap);
    Feed(fb, m.data() + 4, cap - 1);
    CHECK(fb.Pop(&msg, &len) == P::FrameBuffer::Next::kNone);
    CHECK(fb.Pending() == 1);
    Feed(fb, m.data() + 4 + cap - 1, 1);
    CHECK(fb.Pending() == 0);
    REQUIRE(fb.Pop(&msg, &len) == P::FrameBuffer::Next::kMessage);
    CHECK(len == 4 + cap);
    CHECK(std::memcmp(msg, m.data(), len) == 0);
  }
  {  // the server's cap
    P::FrameBuffer fb(P::kMaxRequestBytes);
    uint8_t p[4];
    SetPrefix(p, P::kMaxRequestBytes + 1);
    Feed(fb, p, 4);
    const uint8_t* msg = nullptr;
    size_t len = 0;
    CHECK(fb.Pop(&msg, &len) == P::FrameBuffer::Next::kTooLarge);
    P::FrameBuffer fb2(P::kMaxRequestBytes);
    SetPrefix(p, P::kMaxRequestBytes);
    Feed(fb2, p, 4);
    CHECK(fb2.Pop(&msg, &len) == P::FrameBuffer::Next::kNone);
    CHECK(fb2.Pending() == P::kMaxRequestBytes);
  }
  {  // a too-large length after a good message: the good one still comes out first
    Bytes good = Corpus()[0];
    P::FrameBuffer fb(cap);
    Feed(fb, good.data(), good.size());
    uint8_t p[4];
    SetPrefix(p, cap + 1);
    Feed(fb, p, 4);
    const uint8_t* msg = nullptr;
    size_t len = 0;
    REQUIRE(fb.Pop(&msg, &len) == P::FrameBuffer::Next::kMessage);
    CHECK(len == good.size());
    CHECK(std::memcmp(msg, good.data(), len) == 0);
    CHECK(fb.Pop(&msg, &len) == P::FrameBuffer::Next::kTooLarge);
  }
}

TEST_CASE("FrameBuffer: a length below 8 is kTooLarge; 8 is the smallest frame") {
  for (uint32_t l = 0; l < 8; l++) {
    CAPTURE(l);
    P::FrameBuffer fb(P::kMaxRequestBytes);
    uint8_t m[12] = {};
    SetPrefix(m, l);
    Feed(fb, m, 4);
    const uint8_t* msg = nullptr;
    size_t len = 0;
    CHECK(fb.Pop(&msg, &len) == P::FrameBuffer::Next::kTooLarge);
    Feed(fb, m + 4, 8);
    CHECK(fb.Pop(&msg, &len) == P::FrameBuffer::Next::kTooLarge);
  }
  P::FrameBuffer fb(P::kMaxRequestBytes);
  uint8_t m[12];
  SetPrefix(m, 8);
  for (int i = 4; i < 12; i++) m[i] = static_cast<uint8_t>(0xA0 + i);
  Feed(fb, m, 11);
  const uint8_t* msg = nullptr;
  size_t len = 0;
  CHECK(fb.Pop(&msg, &len) == P::FrameBuffer::Next::kNone);
  CHECK(fb.Pending() == 1);
  Feed(fb, m + 11, 1);
  REQUIRE(fb.Pop(&msg, &len) == P::FrameBuffer::Next::kMessage);
  CHECK(len == 12);
  CHECK(std::memcmp(msg, m, 12) == 0);
  CHECK(P::VerifyMessage(msg, len) == nullptr);  // framed, but not a valid message
}

TEST_CASE("FrameBuffer: Pending and size report exactly what is buffered and missing") {
  P::FrameBuffer fb(P::kMaxRequestBytes);
  CHECK(fb.size() == 0);
  CHECK(fb.Pending() == 0);
  Bytes m(4 + 100);
  SetPrefix(m.data(), 100);
  Feed(fb, m.data(), 2);
  CHECK(fb.size() == 2);
  CHECK(fb.Pending() == 0);  // length not known yet
  Feed(fb, m.data() + 2, 2);
  CHECK(fb.size() == 4);
  CHECK(fb.Pending() == 100);
  Feed(fb, m.data() + 4, 30);
  CHECK(fb.size() == 34);
  CHECK(fb.Pending() == 70);
  Feed(fb, m.data() + 34, 70);
  CHECK(fb.size() == 104);
  CHECK(fb.Pending() == 0);
  const uint8_t* msg = nullptr;
  size_t len = 0;
  REQUIRE(fb.Pop(&msg, &len) == P::FrameBuffer::Next::kMessage);
  CHECK(len == 104);
  CHECK(fb.size() == 0);
  CHECK(fb.Pending() == 0);
  // A second, partial message behind a whole one.
  Feed(fb, m.data(), 104);
  Feed(fb, m.data(), 10);
  CHECK(fb.Pending() == 0);  // the first is whole
  REQUIRE(fb.Pop(&msg, &len) == P::FrameBuffer::Next::kMessage);
  CHECK(fb.size() == 10);
  CHECK(fb.Pending() == 94);
  CHECK(fb.Pop(&msg, &len) == P::FrameBuffer::Next::kNone);
}

TEST_CASE("FrameBuffer: Reserve hands out at least what was asked, growing as needed") {
  P::FrameBuffer fb(P::kMaxReplyBytes);
  size_t avail = 0;
  uint8_t* w = fb.Reserve(1, &avail);
  REQUIRE(w != nullptr);
  CHECK(avail >= 1);
  CHECK(Aligned8(w));
  w = fb.Reserve(10u << 20, &avail);
  REQUIRE(w != nullptr);
  CHECK(avail >= (10u << 20));
  // A big message written straight into the reserved space.
  std::vector<P::ObjectInfo> infos;
  for (uint32_t i = 0; i < 50000; i++) infos.push_back(MakeInfo(i));
  FlatBufferBuilder f;
  Bytes b = Wrap(f, 1, P::Body::ListReply, P::CreateListReplyDirect(f, &infos));
  REQUIRE(b.size() <= (10u << 20));
  std::memcpy(w, b.data(), b.size());
  fb.Commit(b.size());
  const uint8_t* msg = nullptr;
  size_t len = 0;
  REQUIRE(fb.Pop(&msg, &len) == P::FrameBuffer::Next::kMessage);
  CHECK(len == b.size());
  CHECK(Aligned8(msg));
  const P::Message* m = P::VerifyMessage(msg, len);
  REQUIRE(m != nullptr);
  REQUIRE(m->body_as_ListReply() != nullptr);
  CHECK(m->body_as_ListReply()->objects()->size() == 50000);
  CheckInfo(*m->body_as_ListReply()->objects()->Get(49999), 49999);
}

}  // TEST_SUITE
