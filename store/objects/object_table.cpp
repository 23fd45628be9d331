#include "objects/object_table.h"

namespace store {

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
  if (o->readers > 0) Bump(c_.open_count, c_.open_bytes, b, sign);
}

// Splits the treap at key: *left gets the objects before it, *right the others.
void ObjectTable::EvictSplit(Object* root, const Object* key, Object** left, Object** right) {
  while (root != nullptr) {
    if (EvictLess(root, key)) {
      *left = root;
      left = &root->evict_right;
      root = root->evict_right;
    } else {
      *right = root;
      right = &root->evict_left;
      root = root->evict_left;
    }
  }
  *left = nullptr;
  *right = nullptr;
}

// Joins two treaps, every object of left before every object of right.
Object* ObjectTable::EvictMerge(Object* left, Object* right) {
  Object* root = nullptr;
  Object** link = &root;
  while (left != nullptr && right != nullptr) {
    if (EvictPriority(left) > EvictPriority(right)) {
      *link = left;
      link = &left->evict_right;
      left = left->evict_right;
    } else {
      *link = right;
      link = &right->evict_left;
      right = right->evict_left;
    }
  }
  *link = left != nullptr ? left : right;
  return root;
}

Object* ObjectTable::EvictInsert(Object* root, Object* o) {
  const uint64_t pri = EvictPriority(o);
  Object** link = &root;
  while (*link != nullptr && EvictPriority(*link) > pri) {
    link = EvictLess(o, *link) ? &(*link)->evict_left : &(*link)->evict_right;
  }
  EvictSplit(*link, o, &o->evict_left, &o->evict_right);
  *link = o;
  return root;
}

Object* ObjectTable::EvictErase(Object* root, Object* o) {
  Object** link = &root;
  while (*link != nullptr && *link != o) {
    link = EvictLess(o, *link) ? &(*link)->evict_left : &(*link)->evict_right;
  }
  if (*link == o) {
    *link = EvictMerge(o->evict_left, o->evict_right);
    o->evict_left = nullptr;
    o->evict_right = nullptr;
  }
  return root;
}

Object* ObjectTable::Insert(const Object& proto) {
  Object* o = pool_.New(proto);
  o->uid = next_uid_++;
  o->evict_left = nullptr;
  o->evict_right = nullptr;
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

void ObjectTable::AddReader(Object* o) {
  CountState(o, -1);
  o->readers++;
  CountState(o, +1);
}

void ObjectTable::RemoveReader(Object* o) {
  CountState(o, -1);
  o->readers--;
  CountState(o, +1);
}

void ObjectTable::AddPin(Object* o) {
  CountState(o, -1);
  o->pins++;
  CountState(o, +1);
}

void ObjectTable::RemovePin(Object* o) {
  CountState(o, -1);
  o->pins--;
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
  o->dense_index = static_cast<uint32_t>(dense_.size());
  dense_.push_back(o);
}

void ObjectTable::DenseRemove(Object* o) {
  Object* last = dense_.back();
  dense_[o->dense_index] = last;
  last->dense_index = o->dense_index;
  dense_.pop_back();
}

}  // namespace store
