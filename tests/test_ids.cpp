// test_ids.cpp - one rule for object ids in every binding: a key (any bytes, of any length) is
// always hashed by store_object_id_from_string; a raw id is given as 20 bytes or 40 hex digits,
// never as a key. The shared vectors in tests/id_vectors.txt (also read by the Rust and Python
// tests) pin the hash down, for the C functions and the C++ layer.
#include <doctest.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "storeclient.h"
#include "storeclient.hpp"

namespace {

struct Vector {
  std::string key;  // the key's bytes
  std::string hex;  // its id
  std::string note;
};

std::string Unhex(const std::string& h) {
  std::string out;
  for (size_t i = 0; i + 1 < h.size(); i += 2) {
    out.push_back(static_cast<char>(std::stoi(h.substr(i, 2), nullptr, 16)));
  }
  return out;
}

std::vector<Vector> LoadVectors() {
  const char* path = std::getenv("STORE_ID_VECTORS");
  REQUIRE_MESSAGE(path, "set STORE_ID_VECTORS to tests/id_vectors.txt");
  std::ifstream f(path);
  REQUIRE_MESSAGE(f.good(), "cannot read " << path);
  std::vector<Vector> out;
  std::string line;
  while (std::getline(f, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::vector<std::string> cols;
    std::stringstream ss(line);
    std::string col;
    while (std::getline(ss, col, '\t')) cols.push_back(col);
    REQUIRE_MESSAGE(cols.size() == 3, "bad line: " << line);
    REQUIRE(cols[0].size() % 2 == 0);
    REQUIRE(cols[1].size() == 40);
    out.push_back({Unhex(cols[0]), cols[1], cols[2]});
  }
  return out;
}

}  // namespace

TEST_CASE("keys hash to the shared vectors, whatever their length") {
  auto vectors = LoadVectors();
  REQUIRE(vectors.size() >= 8);
  bool saw_empty = false, saw_20 = false, saw_non_ascii = false;
  for (const auto& v : vectors) {
    INFO(v.note);
    saw_empty |= v.key.empty();
    saw_20 |= v.key.size() == STORE_OBJECT_ID_SIZE;
    saw_non_ascii |= std::any_of(v.key.begin(), v.key.end(), [](char ch) { return ch & 0x80; });
    store_object_id id;
    REQUIRE(store_object_id_from_string(v.key.data(), v.key.size(), &id) == STORE_OK);
    char hex[41];
    REQUIRE(store_object_id_to_hex(&id, hex, sizeof hex) == STORE_OK);
    CHECK(std::string(hex) == v.hex);
    // The hex form parses back to the same raw id.
    store_object_id back;
    REQUIRE(store_object_id_from_hex(v.hex.c_str(), &back) == STORE_OK);
    CHECK(std::memcmp(back.bytes, id.bytes, STORE_OBJECT_ID_SIZE) == 0);
    // The C++ layer: FromString hashes, FromHex and FromBytes take a raw id.
    CHECK(store::ObjectId::FromString(v.key).hex() == v.hex);
    CHECK(store::ObjectId::FromHex(v.hex) == store::ObjectId(id));
    CHECK(store::ObjectId::FromBytes(id.bytes, sizeof id.bytes) == store::ObjectId(id));
    // A 20-byte key is hashed, not used as the id.
    if (v.key.size() == STORE_OBJECT_ID_SIZE) {
      CHECK(std::memcmp(id.bytes, v.key.data(), STORE_OBJECT_ID_SIZE) != 0);
    }
  }
  CHECK(saw_empty);
  CHECK(saw_20);
  CHECK(saw_non_ascii);
  // The empty key: a NULL pointer with length 0 is the same key.
  store_object_id a, b;
  REQUIRE(store_object_id_from_string(nullptr, 0, &a) == STORE_OK);
  REQUIRE(store_object_id_from_string("", 0, &b) == STORE_OK);
  CHECK(std::memcmp(a.bytes, b.bytes, STORE_OBJECT_ID_SIZE) == 0);
}
