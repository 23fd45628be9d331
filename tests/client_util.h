// client_util.h - helpers the integration tests share: owning handles for the C API's objects,
// connecting with a name, ids from strings and back to hex. Include after <doctest.h>.
#pragma once

#include <memory>
#include <string>

#include "storeclient.h"

namespace test {

struct ClientDeleter {
  void operator()(store_client* c) const { store_client_free(c); }
};
struct ReaderDeleter {
  void operator()(store_reader* r) const { store_reader_close(r); }
};
struct WriterDeleter {
  void operator()(store_writer* w) const { store_writer_abort(w); }
};
using ClientPtr = std::unique_ptr<store_client, ClientDeleter>;
using ReaderPtr = std::unique_ptr<store_reader, ReaderDeleter>;
using WriterPtr = std::unique_ptr<store_writer, WriterDeleter>;

// Connects to the store at socket under `name`; the test stops if it cannot.
inline ClientPtr Connect(const std::string& socket, const char* name) {
  store_connect_options o = STORE_CONNECT_OPTIONS_INIT;
  o.client_name = name;
  store_client* c = nullptr;
  int rc = store_client_connect(&c, socket.c_str(), &o);
  const std::string err = store_last_error_message();
  INFO(err);
  REQUIRE(rc == STORE_OK);
  REQUIRE(c != nullptr);
  return ClientPtr(c);
}

// The id store_object_id_from_string derives from s.
inline store_object_id IdOf(const std::string& s) {
  store_object_id id{};
  REQUIRE(store_object_id_from_string(s.data(), s.size(), &id) == STORE_OK);
  return id;
}

inline std::string HexOf(const store_object_id& id) {
  char hex[2 * STORE_OBJECT_ID_SIZE + 1];
  REQUIRE(store_object_id_to_hex(&id, hex, sizeof hex) == STORE_OK);
  return hex;
}

}  // namespace test
