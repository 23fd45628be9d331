// secondly_log.cpp - log lines written at most once a second (see secondly_log.h).
#include "server/secondly_log.h"

#include <cinttypes>
#include <utility>

#include "server/util.h"

namespace store {

void SecondlyLog::Init(uv_loop_t* loop, std::function<void()> flush) {
  flush_ = std::move(flush);
  uv_timer_init(loop, &timer_);
  timer_.data = this;
}

void SecondlyLog::Close() {
  uv_timer_stop(&timer_);
  uv_close(reinterpret_cast<uv_handle_t*>(&timer_), nullptr);
  timer_on_ = false;
  flush_();
}

bool SecondlyLog::NowOrLater(bool stopping) {
  const int64_t now = MonotonicNs();
  if (now >= until_) {
    until_ = now + 1000000000;
    return true;
  }
  if (!timer_on_ && !stopping) {
    timer_on_ = true;
    uv_timer_start(
        &timer_,
        [](uv_timer_t* t) {
          auto* l = static_cast<SecondlyLog*>(t->data);
          l->timer_on_ = false;
          l->flush_();
          l->until_ = MonotonicNs() + 1000000000;
        },
        static_cast<uint64_t>((until_ - now) / 1000000 + 1), 0);
  }
  return false;
}

void CountedLog::Init(uv_loop_t* loop, LogLevel level, std::string what) {
  level_ = level;
  what_ = std::move(what);
  log_.Init(loop, [this] { Flush(); });
}

bool CountedLog::Now(bool stopping) {
  if (log_.NowOrLater(stopping)) {
    Flush();
    return true;
  }
  quiet_++;
  return false;
}

void CountedLog::Flush() {
  if (quiet_ == 0) return;
  STORE_LOG(level_, "%" PRIu64 " more %s in the last second (not logged one by one)", quiet_,
            what_.c_str());
  quiet_ = 0;
}

}  // namespace store
