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
    EvictKey k{o->importance, o->access_ns, o->uid, o};
    if (sign > 0) {
      evictable_.insert(k);
    } else {
      evictable_.erase(k);
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

Object* ObjectTable::Insert(const Object& proto) {
  Object* o = pool_.New(proto);
  o->uid = next_uid_++;
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
