// server_internal.h - the server's private records: connections, waiting requests, IO jobs.
// Included by server.cpp and spiller.cpp only.
#pragma once

#include <uv.h>

#include <span>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "framing.h"
#include "objects/object_table.h"
#include "server/server.h"
#include "spill/spill_file.h"

namespace store {


struct Server::Client {
  Server* server = nullptr;
  uint64_t id = 0;
  uv_pipe_t pipe{};
  proto::FrameBuffer in{proto::kMaxRequestBytes};
  bool handshaken = false;
  bool closing = false;
  bool doomed = false;           // to be closed from the loop's check phase (see DeferClose)
  const char* doom_reason = "";
  std::string name;
  int32_t pid = 0;
  uid_t uid = 0;
  std::unordered_map<uint64_t, uint32_t> readers;  // object uid -> readers held
  std::unordered_map<uint64_t, uint32_t> pins;     // object uid -> pins held
  std::unordered_set<uint64_t> creating;           // uids of this client's CREATED objects
  std::unordered_set<WaitingGet*> gets;
  std::unordered_set<WaitingCreate*> creates;
  int64_t connect_ns = 0;
  uint64_t objects_created = 0;
  uint64_t requests = 0;
  // Replies to the requests of one read, written together when they are all handled (see
  // Server::Send and Server::Flush).
  bool corked = false;
  std::vector<uint8_t> out;
};

struct Server::GpuDevice {
  cuda::DeviceInfo info;
  std::unique_ptr<cuda::ChunkAllocator> alloc;
  struct Chunk {
    int fd;        // owned by the device backend
    uint64_t uid;  // random: the key under which client processes keep their imports
  };
  std::vector<Chunk> chunks;  // index = the allocator's chunk index
  uint64_t objects = 0;
};

struct Server::WaitingGet {
  Client* client = nullptr;
  uint64_t seq = 0;
  std::vector<ObjectKey> ids;
  std::vector<ObjectKey> waiting_on;  // distinct ids not sealed when the request came
  size_t missing = 0;
  uv_timer_t timer{};
  bool has_timer = false;
};

// A create's arguments. metadata and inline_data borrow the request's bytes while it is served
// at once; a create that waits calls Own() first, since the request's buffer is reused.
struct Server::CreateArgs {
  ObjectKey id;
  uint64_t data_size = 0;
  std::span<const uint8_t> metadata;
  std::span<const uint8_t> inline_data;
  bool inline_put = false;
  int32_t importance = 0;
  int32_t device = -1;

  CreateArgs() = default;
  CreateArgs(CreateArgs&&) = default;  // the vectors' buffers, and so the spans, move along
  CreateArgs& operator=(CreateArgs&&) = default;

  // Copies the borrowed bytes into the args, which then point at their own copies.
  void Own() {
    owned_metadata.assign(metadata.begin(), metadata.end());
    owned_inline_data.assign(inline_data.begin(), inline_data.end());
    metadata = owned_metadata;
    inline_data = owned_inline_data;
  }

 private:
  std::vector<uint8_t> owned_metadata;
  std::vector<uint8_t> owned_inline_data;
};

struct Server::WaitingCreate {
  Client* client = nullptr;
  uint64_t seq = 0;
  CreateArgs args;
  uv_timer_t timer{};
  bool has_timer = false;
};

struct Server::EvictWaiter {
  Client* client = nullptr;  // nullptr once it disconnected
  uint64_t seq = 0;
  uint64_t target = 0;
  uint64_t spilled = 0;
  int pending = 0;           // spill jobs still writing for it
};

struct Server::SpillJob {
  uv_work_t req{};
  Server* server = nullptr;
  std::string path;
  std::vector<Object*> objects;
  std::vector<spill::SpillRecord> records;
  std::vector<spill::RecordLocation> locations;
  uint64_t memory = 0;  // memory the objects hold
  uint64_t file_size = 0;
  EvictWaiter* evict = nullptr;
  int rc = 0;
  std::string error;
  int64_t ns = 0;
};

struct Server::RestoreJob {
  uv_work_t req{};
  Server* server = nullptr;
  Object* object = nullptr;
  std::string path;
  spill::RecordLocation location;
  uint8_t* dst = nullptr;
  uint64_t data_size = 0, metadata_size = 0;
  int rc = 0;
  std::string error;
  int64_t ns = 0;
};

}  // namespace store
