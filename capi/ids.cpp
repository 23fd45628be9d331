// ids.cpp - object ids: derived from a string (SHA-1), and as 40 hex digits.
//
// Owns: nothing.
// Called by: applications, and the library's own messages (store_object_id_to_hex).
// Threads: any; the functions keep no state.
#include "client_internal.h"
#include "hex.h"
#include "sha1.h"

using namespace storeclient::internal;

extern "C" {

// ---- helpers -------------------------------------------------------------------------------

int store_object_id_from_string(const char* str, size_t len, store_object_id* out) {
  if (!out || (!str && len)) return Fail(STORE_EINVAL, "str or out is NULL");
  store::Sha1(str, len, out->bytes);
  return STORE_OK;
}

int store_object_id_to_hex(const store_object_id* id, char* hex, size_t hex_size) {
  if (!id || !hex) return Fail(STORE_EINVAL, "id or hex is NULL");
  if (hex_size < 2 * STORE_OBJECT_ID_SIZE + 1) {
    return Fail(STORE_EINVAL, "hex needs %d bytes, got %zu", 2 * STORE_OBJECT_ID_SIZE + 1,
                hex_size);
  }
  store::hex::Encode(id->bytes, STORE_OBJECT_ID_SIZE, hex);
  hex[2 * STORE_OBJECT_ID_SIZE] = '\0';
  return STORE_OK;
}

int store_object_id_from_hex(const char* hex, store_object_id* out) {
  if (!hex || !out) return Fail(STORE_EINVAL, "hex or out is NULL");
  auto val = [](char ch) -> int {
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
  };
  store_object_id id;
  for (int i = 0; i < STORE_OBJECT_ID_SIZE; i++) {
    int hi = val(hex[2 * i]);
    int lo = hi < 0 ? -1 : val(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return Fail(STORE_EINVAL, "not 40 hex digits: '%.41s'", hex);
    id.bytes[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  if (hex[2 * STORE_OBJECT_ID_SIZE] != '\0') {
    return Fail(STORE_EINVAL, "more than 40 hex digits: '%.48s'", hex);
  }
  *out = id;
  return STORE_OK;
}

}  // extern "C"
