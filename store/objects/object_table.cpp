#include "objects/object_table.h"

namespace store {

void ObjectPool::AddChunk() {
  // Slots stay below Object::kNoSlot.
  if ((chunks_.size() + 1) * kChunk >= Object::kNoSlot) throw std::bad_alloc();
  chunks_.reserve(chunks_.size() + 1);
  by_address_.reserve(by_address_.size() + 1);
  chunks_.emplace_back(new unsigned char[kChunk * kStride]);
  unsigned char* mem = chunks_.back().get();
  ChunkAt at{mem, static_cast<uint32_t>(chunks_.size() - 1)};
  by_address_.insert(std::upper_bound(by_address_.begin(), by_address_.end(), at,
                                      [](const ChunkAt& x, const ChunkAt& c) {
                                        return x.base < c.base;
                                      }),
                     at);
  for (size_t i = kChunk; i-- > 0;) {
    free_ = new (mem + i * kStride) FreeEntry{free_};
    Poison(mem + i * kStride);
  }
}

namespace {
inline void Bump(uint64_t& count, uint64_t& bytes, uint64_t size, int sign) {
  if (sign > 0) {
    count += 1;
    bytes += size;
  } else {
    count -= 1;
    bytes -= size;
  }
}
}  // namespace

void ObjectTable::CountState(Object* o, int sign) {
  uint64_t b = o->bytes();
  if (o->evictable()) {
    Bump(c_.evictable_count, c_.evictable_bytes, b, sign);
    if (sign > 0) {
      evictable_joins_++;
      evict_root_ = EvictInsert(evict_root_, o);
    } else {
      evict_root_ = EvictErase(evict_root_, o);
    }
  }
  if (o->deleted) {
    Bump(c_.deleted_pending_count, c_.deleted_pending_bytes, b, sign);
    return;
  }
  switch (o->state) {
    case ObjectState::kCreated: Bump(c_.created_count, c_.created_bytes, b, sign); break;
    case ObjectState::kSealed: Bump(c_.sealed_count, c_.sealed_bytes, b, sign); break;
    case ObjectState::kSpilling: Bump(c_.spilling_count, c_.spilling_bytes, b, sign); break;
    case ObjectState::kSpilled: Bump(c_.spilled_count, c_.spilled_bytes, b, sign); break;
    case ObjectState::kRestoring: Bump(c_.restoring_count, c_.restoring_bytes, b, sign); break;
  }
  if (o->pins > 0) Bump(c_.pinned_count, c_.pinned_bytes, b, sign);
  if (o->lease_kept) Bump(c_.lease_kept_count, c_.lease_kept_bytes, b, sign);
  if (o->readers > 0) Bump(c_.open_count, c_.open_bytes, b, sign);
}

// Splits the treap at key: *left gets the objects before it, *right the others.
void ObjectTable::EvictSplit(uint32_t root, const Object* key, uint32_t* left, uint32_t* right) {
  while (root != Object::kNoSlot) {
    Object* r = pool_.At(root);
    if (EvictLess(r, key)) {
      *left = root;
      left = &r->evict_right;
      root = r->evict_right;
    } else {
      *right = root;
      right = &r->evict_left;
      root = r->evict_left;
    }
  }
  *left = Object::kNoSlot;
  *right = Object::kNoSlot;
}

// Joins two treaps, every object of left before every object of right.
uint32_t ObjectTable::EvictMerge(uint32_t left, uint32_t right) {
  uint32_t root = Object::kNoSlot;
  uint32_t* link = &root;
  while (left != Object::kNoSlot && right != Object::kNoSlot) {
    Object* l = pool_.At(left);
    Object* r = pool_.At(right);
    if (EvictPriority(l) > EvictPriority(r)) {
      *link = left;
      link = &l->evict_right;
      left = l->evict_right;
    } else {
      *link = right;
      link = &r->evict_left;
      right = r->evict_left;
    }
  }
  *link = left != Object::kNoSlot ? left : right;
  return root;
}

uint32_t ObjectTable::EvictInsert(uint32_t root, Object* o) {
  const uint64_t pri = EvictPriority(o);
  uint32_t* link = &root;
  while (*link != Object::kNoSlot) {
    Object* n = pool_.At(*link);
    if (EvictPriority(n) <= pri) break;
    link = EvictLess(o, n) ? &n->evict_left : &n->evict_right;
  }
  EvictSplit(*link, o, &o->evict_left, &o->evict_right);
  *link = pool_.SlotOf(o);
  return root;
}

uint32_t ObjectTable::EvictErase(uint32_t root, Object* o) {
  const uint32_t slot = pool_.SlotOf(o);
  uint32_t* link = &root;
  while (*link != Object::kNoSlot && *link != slot) {
    Object* n = pool_.At(*link);
    link = EvictLess(o, n) ? &n->evict_left : &n->evict_right;
  }
  if (*link == slot) {
    *link = EvictMerge(o->evict_left, o->evict_right);
    o->evict_left = Object::kNoSlot;
    o->evict_right = Object::kNoSlot;
  }
  return root;
}

size_t ObjectTable::EvictHeight() const {
  size_t height = 0;
  std::vector<std::pair<uint32_t, size_t>> stack;  // (slot, its depth)
  if (evict_root_ != Object::kNoSlot) stack.emplace_back(evict_root_, 1);
  while (!stack.empty()) {
    auto [slot, depth] = stack.back();
    stack.pop_back();
    height = std::max(height, depth);
    const Object* n = pool_.At(slot);
    if (n->evict_left != Object::kNoSlot) stack.emplace_back(n->evict_left, depth + 1);
    if (n->evict_right != Object::kNoSlot) stack.emplace_back(n->evict_right, depth + 1);
  }
  return height;
}

Object* ObjectTable::Insert(const Object& proto) {
  Object* o = pool_.New(proto);
  o->uid = next_uid_++;
  o->evict_left = Object::kNoSlot;
  o->evict_right = Object::kNoSlot;
  o->state = ObjectState::kCreated;
  o->deleted = false;
  o->readers = 0;
  o->pins = 0;
  by_uid_.Insert(o);
  by_id_.Insert(o);
  DenseAdd(o);
  c_.objects = by_id_.size();
  CountState(o, +1);
  return o;
}

void ObjectTable::Seal(Object* o) {
  CountState(o, -1);
  o->state = ObjectState::kSealed;
  CountState(o, +1);
}

bool ObjectTable::AddReader(Object* o) {
  if (o->readers == UINT32_MAX) return false;
  CountState(o, -1);
  o->readers++;
  CountState(o, +1);
  return true;
}

void ObjectTable::RemoveReader(Object* o, uint32_t n) {
  CountState(o, -1);
  o->readers -= n;
  CountState(o, +1);
}

bool ObjectTable::AddPin(Object* o) {
  if (o->pins == UINT32_MAX) return false;
  CountState(o, -1);
  o->pins++;
  CountState(o, +1);
  return true;
}

void ObjectTable::RemovePin(Object* o, uint32_t n) {
  CountState(o, -1);
  o->pins -= n;
  CountState(o, +1);
}

void ObjectTable::Unlink(Object* o) {
  if (o->deleted) return;
  CountState(o, -1);
  by_id_.Erase(o);
  DenseRemove(o);
  o->deleted = true;
  c_.objects = by_id_.size();
  CountState(o, +1);
}

void ObjectTable::Erase(Object* o) {
  CountState(o, -1);
  if (!o->deleted) {
    by_id_.Erase(o);
    DenseRemove(o);
  }
  c_.objects = by_id_.size();
  by_uid_.Erase(o);
  pool_.Delete(o);
}

void ObjectTable::DenseAdd(Object* o) {
  o->dense_index = static_cast<uint32_t>(order_.size());
  order_.push_back(reinterpret_cast<uintptr_t>(o));
}

void ObjectTable::DenseRemove(Object* o) {
  order_[o->dense_index] = static_cast<uintptr_t>(o->uid << 1 | 1);
  order_gaps_++;
  if (order_gaps_ >= 64 && order_gaps_ * 2 >= order_.size()) CompactOrder();
}

void ObjectTable::CompactOrder() {
  size_t n = 0;
  for (uintptr_t e : order_) {
    if (e & 1) continue;
    reinterpret_cast<Object*>(e)->dense_index = static_cast<uint32_t>(n);
    order_[n++] = e;
  }
  order_.resize(n);
  order_gaps_ = 0;
  // After a mass delete, give the memory back.
  if (order_.capacity() > 4 * n + 1024) order_.shrink_to_fit();
}

}  // namespace store
