// connections.cpp - the server's clients: accept, read, framing, dispatch, replies, closing.
//
// A connection is accepted (its peer's credentials checked), read into the shared read buffer,
// cut into frames, and each verified message goes to Dispatch, which calls its Handle* method.
// Replies to the requests of one read are held back and written together (Send, Flush). A
// client is closed at once (CloseClient) or, when a failure is found while replying, from the
// loop's check phase (DeferClose); either way what it held is released (ReleaseClientState).
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cinttypes>
#include <cstring>

#include "server/log.h"
#include "server/server.h"
#include "server/server_internal.h"
#include "server/util.h"
#include "storeclient.h"

namespace store {

using proto::Body;

namespace {

// The held-back buffer a client keeps between reads; a larger one is given back.
constexpr size_t kKeepCorkBytes = 64u << 10;

struct WriteReq {
  uv_write_t req;
  flatbuffers::DetachedBuffer data;  // one reply (Send) ...
  std::vector<uint8_t> bytes;        // ... or the replies of a read (Flush)
  uv_pipe_t* fd_wrap = nullptr;
};

}  // namespace

// Written, or cancelled by the connection's close: the bytes leave the client's backlog and a
// descriptor sent along is closed.
void Server::OnWritten(uv_write_t* req, int /*status*/) {
  auto* w = reinterpret_cast<WriteReq*>(req);
  auto* c = static_cast<Client*>(req->handle->data);
  Server* s = c->server;
  if (w->fd_wrap) {
    uv_close(reinterpret_cast<uv_handle_t*>(w->fd_wrap),
             [](uv_handle_t* h) { delete reinterpret_cast<uv_pipe_t*>(h); });
    c->pending_fds--;
    s->pending_fds_--;
  }
  delete w;
  s->NoteBacklog(c);
}

// ------------------------------------------------------------------------------------------
// Connections.

void Server::OnConnection(uv_stream_t* listener, int status) {
  auto* s = static_cast<Server*>(listener->data);
  if (status < 0) {
    if (s->LimitHit(kLimitAccept)) {
      s->LogLimit(kLimitAccept, nullptr,
                  std::string("a connection was dropped: accept failed: ") +
                      uv_strerror(status) + " (" + std::to_string(s->clients_.size()) +
                      " clients connected)");
    }
    return;
  }
  auto* c = new Client;
  c->server = s;
  uv_pipe_init(&s->loop_, &c->pipe, 1);  // ipc: lets uv_write2 send the region fd
  c->pipe.data = c;
  if (uv_accept(listener, reinterpret_cast<uv_stream_t*>(&c->pipe)) != 0) {
    uv_close(reinterpret_cast<uv_handle_t*>(&c->pipe),
             [](uv_handle_t* h) { delete static_cast<Client*>(h->data); });
    return;
  }
  c->id = s->next_client_id_++;
  c->connect_ns = RealtimeNs();
  s->clients_.emplace(c->id, c);

  uv_os_fd_t fd;
  uv_fileno(reinterpret_cast<uv_handle_t*>(&c->pipe), &fd);
  ucred cred{};
  socklen_t len = sizeof cred;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) {
    c->pid = cred.pid;
    c->uid = cred.uid;
    if (cred.uid != geteuid() && cred.uid != 0) {
      LOG_WARN("refusing a client of uid %u (pid %d): only uid %u may connect",
               static_cast<unsigned>(cred.uid), static_cast<int>(cred.pid),
               static_cast<unsigned>(geteuid()));
      s->SendError(c, 0, STORE_EPERM, "this store accepts only clients of its own user");
      s->CloseClient(c, "permission denied");
      return;
    }
  }
  if (!s->AdmitClient(c)) return;
  uv_read_start(reinterpret_cast<uv_stream_t*>(&c->pipe), OnAlloc, OnRead);
  LOG_DEBUG("client %" PRIu64 " connected (pid %d)", c->id, static_cast<int>(c->pid));
}

void Server::OnAlloc(uv_handle_t* h, size_t /*suggested*/, uv_buf_t* buf) {
  auto* c = static_cast<Client*>(h->data);
  Server* s = c->server;
  size_t avail = 0;
  uint8_t* p;
  if (c->in.size() == 0) {
    // The common case: no part of a message is waiting for the rest. The read goes to the
    // server's buffer; KeepInput keeps what is left of it once its requests are handled.
    p = c->in.Lend(reinterpret_cast<uint8_t*>(s->read_buf_.get()), 64 * 1024, &avail);
  } else {
    size_t want = std::max<size_t>(c->in.Pending(), 64 * 1024);
    size_t grown = c->in.CapacityFor(want);
    if (c->input_refused || (grown > c->in.held() && !s->HoldInput(c, grown))) {
      c->input_refused = true;  // OnRead gets UV_ENOBUFS and closes it
      *buf = uv_buf_init(nullptr, 0);
      return;
    }
    p = c->in.Reserve(want, &avail);
    s->NoteInput(c);
  }
  *buf = uv_buf_init(reinterpret_cast<char*>(p), p ? static_cast<unsigned>(avail) : 0);
}

void Server::OnRead(uv_stream_t* stream, ssize_t nread, const uv_buf_t* /*buf*/) {
  auto* c = static_cast<Client*>(stream->data);
  Server* s = c->server;
  auto* pipe = reinterpret_cast<uv_pipe_t*>(stream);
  // A client has no business sending descriptors: accept and close any, so they cannot pile up.
  while (uv_pipe_pending_count(pipe) > 0) {
    auto* tmp = new uv_pipe_t;
    uv_pipe_init(&s->loop_, tmp, 0);
    if (uv_accept(stream, reinterpret_cast<uv_stream_t*>(tmp)) != 0) {
      delete tmp;
      break;
    }
    uv_close(reinterpret_cast<uv_handle_t*>(tmp),
             [](uv_handle_t* h) { delete reinterpret_cast<uv_pipe_t*>(h); });
  }
  if (nread < 0) {
    s->CloseClient(c, nread == UV_EOF         ? "disconnected"
                      : c->input_refused      ? "over --max-partial-bytes"
                                              : uv_strerror(static_cast<int>(nread)));
    return;
  }
  if (nread > 0 && !c->closing && !c->doomed) {
    c->in.Commit(static_cast<size_t>(nread));
    s->ProcessInput(c);
  }
  // The common case, inline: every request was whole and nothing is kept.
  if (!c->closing && c->input_held == 0 && c->in.size() == 0 && c->in.EndLoan() &&
      c->in.held() == 0) {
    return;
  }
  s->KeepInput(c);
}

void Server::ProcessInput(Client* c) {
  // The replies to all the requests of this read leave in one write.
  c->corked = true;
  while (!c->closing && !c->doomed && !c->deferred) {
    const uint8_t* msg;
    size_t len;
    auto next = c->in.Pop(&msg, &len);
    if (next == proto::FrameBuffer::Next::kNone) break;
    if (next == proto::FrameBuffer::Next::kTooLarge) {
      ProtocolError(c, 0,
                    "message length is out of bounds (at most " +
                        std::to_string(proto::kMaxRequestBytes) + " bytes per request)");
      break;
    }
    const proto::Message* m = proto::VerifyMessage(msg, len);
    if (!m) {
      ProtocolError(c, 0, "malformed message (it failed verification)");
      break;
    }
    if (m->body_type() == proto::Body::ObjectsRequest) {
      if (scanned_) {  // one pass over the table per turn: this one waits for the next
        c->in.Unpop(len);
        Defer(c);
        break;
      }
      scanned_ = true;
      scanner_ = c->id;
      uv_idle_start(&turn_, OnTurn);  // the next turn clears it
    }
    Dispatch(c, m);
  }
  c->corked = false;
  Flush(c);
}

void Server::Defer(Client* c) {
  c->deferred = true;
  uv_read_stop(reinterpret_cast<uv_stream_t*>(&c->pipe));
  deferred_.push_back(c->id);
}

void Server::OnTurn(uv_idle_t* h) {
  auto* s = static_cast<Server*>(h->data);
  s->scanned_ = false;
  std::vector<uint64_t> ids;
  ids.swap(s->deferred_);
  for (uint64_t id : ids) {
    auto it = s->clients_.find(id);
    if (it != s->clients_.end()) s->ResumeInput(it->second);
  }
  // Round robin: the one that made its page waits behind the others that wait.
  auto& d = s->deferred_;
  if (s->scanned_) {
    auto it = std::find(d.begin(), d.end(), s->scanner_);
    if (it != d.end()) std::rotate(it, it + 1, d.end());
  }
  if (d.empty() && !s->scanned_) uv_idle_stop(h);
}

void Server::ResumeInput(Client* c) {
  c->deferred = false;
  if (c->closing || c->doomed) return;
  ProcessInput(c);
  if (c->closing) return;
  if (!c->deferred && !c->doomed) {
    uv_read_start(reinterpret_cast<uv_stream_t*>(&c->pipe), OnAlloc, OnRead);
  }
  KeepInput(c);
}

void Server::DeferClose(Client* c, const char* why) {
  if (c->closing || c->doomed) return;
  Flush(c);  // the replies held back still go out
  if (c->doomed) return;  // writing them failed
  c->doomed = true;
  c->doom_reason = why;
  NoteBacklog(c);  // its queued replies go with it
  uv_read_stop(reinterpret_cast<uv_stream_t*>(&c->pipe));
  doomed_.push_back(c->id);
  uv_check_start(&closer_, [](uv_check_t* h) {
    auto* s = static_cast<Server*>(h->data);
    uv_check_stop(h);
    std::vector<uint64_t> ids;
    ids.swap(s->doomed_);
    for (uint64_t id : ids) {
      auto it = s->clients_.find(id);
      if (it != s->clients_.end()) s->CloseClient(it->second, it->second->doom_reason);
    }
  });
}

void Server::CloseClient(Client* c, const char* why) {
  if (c->closing) return;
  Flush(c);  // the replies held back still go out, such as the error that closes it
  c->closing = true;
  NoteBacklog(c);
  NoteInput(c);
  LOG_DEBUG("client %" PRIu64 " (%s, pid %d) closing: %s", c->id, c->name.c_str(),
            static_cast<int>(c->pid), why);
  ReleaseClientState(c);
  clients_.erase(c->id);
  uv_close(reinterpret_cast<uv_handle_t*>(&c->pipe),
           [](uv_handle_t* h) { delete static_cast<Client*>(h->data); });
}

void Server::ReleaseClientState(Client* c) {
  // Waiting gets and creates are cancelled: nobody is left to answer.
  for (WaitingGet* g : std::vector<WaitingGet*>(c->gets.begin(), c->gets.end())) CancelGet(g);
  bool freed = !c->creates.empty();  // the creates behind its waiting ones may fit now
  for (WaitingCreate* w : std::vector<WaitingCreate*>(c->creates.begin(), c->creates.end())) {
    FinishCreateWait(w, STORE_ECONN, "");
  }
  // Readers.
  for (auto& [uid, count] : c->readers) {
    Object* o = table_.FindUid(uid);
    if (!o) continue;
    table_.RemoveReader(o, count);
    totals_.releases += count;
    // Freed, or unread now: what waits for memory may spill or drop it.
    freed |= MaybeFree(o) || o->evictable();
  }
  c->readers.clear();
  // Pins.
  for (auto& [uid, count] : c->pins) {
    Object* o = table_.FindUid(uid);
    if (!o) continue;
    table_.RemovePin(o, count);
    freed = true;  // it may be evictable now
  }
  c->pins.clear();
  // Leases: an object created leased goes with its last one.
  for (auto& [uid, held] : c->leases) freed |= DropLeases(uid, held.n);
  c->leases.clear();
  // Evicts: their spill jobs go on, and end them with nobody to answer.
  for (EvictWaiter* ew : c->evicts) {
    EndWaiting(c, ew->held);
    ew->client = nullptr;
  }
  c->evicts.clear();
  // Objects it was still writing are aborted.
  for (uint64_t uid : c->creating) {
    Object* o = table_.FindUid(uid);
    if (!o || o->state != ObjectState::kCreated) continue;
    totals_.aborts++;
    FreeObject(o);
    freed = true;
  }
  c->creating.clear();
  c->readers_held = c->pins_held = c->bytes_held = 0;
  if (freed) Pump();
}

// ------------------------------------------------------------------------------------------
// Replies.

void Server::Send(Client* c, int fd) {
  if (c->closing || c->doomed) {
    fbb_.Clear();
    return;
  }
  if (c->corked && fd < 0 && c->out.size() + fbb_.GetSize() <= kMaxCorkBytes) {
    c->out.insert(c->out.end(), fbb_.GetBufferPointer(), fbb_.GetBufferPointer() + fbb_.GetSize());
    fbb_.Clear();
    return;
  }
  Flush(c);  // what was held back goes first
  if (c->closing || c->doomed) {
    fbb_.Clear();
    return;
  }
  auto* stream = reinterpret_cast<uv_stream_t*>(&c->pipe);
  size_t skip = 0;
  if (fd < 0 && uv_stream_get_write_queue_size(stream) == 0) {
    // The common case: the socket takes the whole reply now. No request, no callback.
    uv_buf_t now = uv_buf_init(reinterpret_cast<char*>(fbb_.GetBufferPointer()), fbb_.GetSize());
    int n = uv_try_write(stream, &now, 1);
    if (n == static_cast<int>(fbb_.GetSize())) {
      fbb_.Clear();
      return;
    }
    if (n > 0) skip = static_cast<size_t>(n);
  }
  auto* w = new WriteReq;
  w->data = fbb_.Release();
  uv_buf_t buf = uv_buf_init(reinterpret_cast<char*>(w->data.data()) + skip,
                             static_cast<unsigned>(w->data.size() - skip));
  int rc;
  if (fd >= 0) {
    w->fd_wrap = new uv_pipe_t;
    uv_pipe_init(&loop_, w->fd_wrap, 0);
    int dup_fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (dup_fd < 0 || uv_pipe_open(w->fd_wrap, dup_fd) != 0) {
      if (dup_fd >= 0) close(dup_fd);
      delete w->fd_wrap;
      delete w;
      DeferClose(c, "cannot pass the region descriptor");
      return;
    }
    rc = uv_write2(&w->req, stream, &buf, 1, reinterpret_cast<uv_stream_t*>(w->fd_wrap),
                   OnWritten);
    if (rc == 0) {
      c->pending_fds++;
      pending_fds_++;
    }
  } else {
    rc = uv_write(&w->req, stream, &buf, 1, OnWritten);
  }
  if (rc != 0) {
    if (w->fd_wrap) {
      uv_close(reinterpret_cast<uv_handle_t*>(w->fd_wrap),
               [](uv_handle_t* h) { delete reinterpret_cast<uv_pipe_t*>(h); });
    }
    delete w;
    DeferClose(c, "its connection failed");
    return;
  }
  CheckBacklog(c);
}

void Server::Flush(Client* c) {
  if (c->out.empty()) return;
  if (c->closing || c->doomed) {
    c->out.clear();
    return;
  }
  auto* stream = reinterpret_cast<uv_stream_t*>(&c->pipe);
  size_t skip = 0;
  if (uv_stream_get_write_queue_size(stream) == 0) {
    uv_buf_t now = uv_buf_init(reinterpret_cast<char*>(c->out.data()),
                               static_cast<unsigned>(c->out.size()));
    int n = uv_try_write(stream, &now, 1);
    if (n == static_cast<int>(c->out.size())) {
      if (c->out.capacity() > kKeepCorkBytes) {
        std::vector<uint8_t>().swap(c->out);
      } else {
        c->out.clear();
      }
      return;
    }
    if (n > 0) skip = static_cast<size_t>(n);
  }
  auto* w = new WriteReq;
  w->bytes.swap(c->out);
  uv_buf_t buf = uv_buf_init(reinterpret_cast<char*>(w->bytes.data()) + skip,
                             static_cast<unsigned>(w->bytes.size() - skip));
  if (uv_write(&w->req, stream, &buf, 1, OnWritten) != 0) {
    delete w;
    DeferClose(c, "its connection failed");
    return;
  }
  CheckBacklog(c);
}

void Server::SendError(Client* c, uint64_t seq, int code, const std::string& message) {
  fbb_.Clear();
  auto err = fbb_.CreateString(message);
  proto::MessageBuilder mb(fbb_);
  mb.add_seq(seq);
  mb.add_status(code);
  mb.add_error(err);
  fbb_.FinishSizePrefixed(mb.Finish(), proto::MessageIdentifier());
  Send(c);
}

void Server::SendEmpty(Client* c, uint64_t seq, Body type, flatbuffers::Offset<void> body) {
  fbb_.FinishSizePrefixed(proto::CreateMessage(fbb_, seq, 0, 0, 0, type, body),
                          proto::MessageIdentifier());
  if (fbb_.GetSize() > proto::kMaxReplyBytes) {
    // Every reply is bounded by construction (lists are paged); this one is not.
    LOG_ERROR("a reply of %u bytes to client %" PRIu64 " is over the protocol's limit of %u; "
              "sending an error instead", fbb_.GetSize(), c->id, proto::kMaxReplyBytes);
    return SendError(c, seq, STORE_ENOMEM, "the reply would be larger than the protocol allows");
  }
  Send(c);
}

void Server::ProtocolError(Client* c, uint64_t seq, const std::string& message) {
  // One a second at most: a broken client reconnecting in a loop must not flood the log.
  if (protocol_log_.Now(stopping_)) {
    LOG_WARN("client %" PRIu64 " (%s, pid %d): %s; closing its connection", c->id,
             c->name.c_str(), static_cast<int>(c->pid), message.c_str());
  }
  totals_.bad_requests++;
  SendError(c, seq, STORE_EPROTO, message);
  CloseClient(c, "protocol error");
}

// ------------------------------------------------------------------------------------------
// Dispatch.

void Server::Dispatch(Client* c, const proto::Message* m) {
  uint64_t seq = m->seq();
  Body type = m->body_type();
  c->requests++;
  totals_.requests++;
  if (!c->handshaken && type != Body::ConnectRequest) {
    ProtocolError(c, seq, "the first message must be a connect request");
    return;
  }
  if (c->read_only) {
    switch (type) {
      case Body::CreateRequest:
      case Body::SealRequest:
      case Body::AbortRequest:
      case Body::DeleteRequest:
      case Body::PinRequest:
      case Body::UnpinRequest:
      case Body::LeaseRequest:
      case Body::EvictRequest:
      case Body::SetImportanceRequest:
        return SendError(c, seq, STORE_EPERM,
                         "this client connected read-only: it may read but not change the store");
      default:
        break;
    }
  }
  switch (type) {
    case Body::ConnectRequest:
      if (c->handshaken) return ProtocolError(c, seq, "already connected");
      return HandleConnect(c, seq, m->body_as_ConnectRequest());
    case Body::CreateRequest:
      return HandleCreate(c, seq, m->body_as_CreateRequest());
    case Body::SealRequest:
      return HandleSeal(c, seq, m->body_as_SealRequest());
    case Body::AbortRequest:
      return HandleAbort(c, seq, m->body_as_AbortRequest());
    case Body::GetRequest:
      return HandleGet(c, seq, m->body_as_GetRequest());
    case Body::ReleaseRequest:
      return HandleRelease(c, seq, m->body_as_ReleaseRequest());
    case Body::ContainsRequest:
      return HandleContains(c, seq, m->body_as_ContainsRequest());
    case Body::DeleteRequest:
      return HandleDelete(c, seq, m->body_as_DeleteRequest());
    case Body::InfoRequest:
      return HandleInfo(c, seq, m->body_as_InfoRequest());
    case Body::ListRequest:
      return HandleList(c, seq, m->body_as_ListRequest());
    case Body::PinRequest:
      return HandlePin(c, seq, m->body_as_PinRequest());
    case Body::UnpinRequest:
      return HandleUnpin(c, seq, m->body_as_UnpinRequest());
    case Body::StatsRequest:
      return HandleStats(c, seq);
    case Body::ClientsRequest:
      return HandleClients(c, seq);
    case Body::ObjectsRequest:
      return HandleObjects(c, seq, m->body_as_ObjectsRequest());
    case Body::PrefetchRequest:
      return HandlePrefetch(c, seq, m->body_as_PrefetchRequest());
    case Body::EvictRequest:
      return HandleEvict(c, seq, m->body_as_EvictRequest());
    case Body::SetImportanceRequest:
      return HandleSetImportance(c, seq, m->body_as_SetImportanceRequest());
    case Body::SpillFilesRequest:
      return HandleSpillFiles(c, seq, m->body_as_SpillFilesRequest());
    case Body::LeaseRequest:
      return HandleLease(c, seq, m->body_as_LeaseRequest());
    case Body::GpuChunkRequest:
      return HandleGpuChunk(c, seq, m->body_as_GpuChunkRequest());
    case Body::DisconnectRequest:
      return CloseClient(c, "said goodbye");
    default:
      return ProtocolError(c, seq,
                           "unexpected message type " + std::to_string(static_cast<int>(type)));
  }
}

// ------------------------------------------------------------------------------------------
// Connect.

void Server::HandleConnect(Client* c, uint64_t seq, const proto::ConnectRequest* r) {
  if (r->protocol_version() != proto::kProtocolVersion) {
    return ProtocolError(c, seq,
                         "protocol version " + std::to_string(r->protocol_version()) +
                             " is not supported; this server speaks version " +
                             std::to_string(proto::kProtocolVersion));
  }
  if (r->client_name()) {
    if (r->client_name()->size() > proto::kMaxClientName) {
      return ProtocolError(c, seq, "client name is longer than " +
                                       std::to_string(proto::kMaxClientName) + " bytes");
    }
    // Kept printable: the name goes into log lines and store-top's table.
    c->name = Printable(r->client_name()->c_str(), r->client_name()->size());
  }
  c->handshaken = true;
  c->read_only = r->read_only();
  fbb_.Clear();
  auto version = fbb_.CreateString(STORE_VERSION_STRING);
  auto region = proto::CreateRegion(fbb_, region_->id(), region_->capacity());
  auto body = proto::CreateConnectReply(fbb_, proto::kProtocolVersion, version, c->id, region,
                                        region_->capacity(), GpuBackendKind(), c->read_only);
  fbb_.FinishSizePrefixed(
      proto::CreateMessage(fbb_, seq, 0, 0, 1, Body::ConnectReply, body.Union()),
      proto::MessageIdentifier());
  // A read-only client gets a descriptor that cannot be mapped writable.
  Send(c, c->read_only ? region_->read_only_fd() : region_->fd());
  LOG_DEBUG("client %" PRIu64 " is '%s' (pid %d)", c->id, c->name.c_str(),
            static_cast<int>(c->pid));
}

}  // namespace store
