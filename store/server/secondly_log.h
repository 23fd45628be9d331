// secondly_log.h - a kind of log line written at most once a second.
//
// Owns: one loop timer, which flushes what was counted when the second is over.
// Called by: Server (--when-full drops, protocol errors) and Spiller (restore failures,
// compactions and their failures).
// Threads: the loop thread only.
//
// What happens in between is counted by the caller, and its flush says it when the second is
// over (from the timer, so no line waits for the next event). The second after a timer's line is
// quiet too.
#pragma once

#include <uv.h>

#include <cstdint>
#include <functional>
#include <string>

#include "server/log.h"

namespace store {

class SecondlyLog {
 public:
  // flush writes the line of what was counted since the last line (nothing if nothing was).
  void Init(uv_loop_t* loop, std::function<void()> flush);
  // At stop: the timer goes, what is counted is said.
  void Close();
  // True if a line may be written now (a new second starts); else the timer is set to flush,
  // unless the server is stopping.
  bool NowOrLater(bool stopping);

 private:
  std::function<void()> flush_;
  uv_timer_t timer_{};
  bool timer_on_ = false;
  int64_t until_ = 0;  // monotonic ns: events before then are counted for the timer's line
};

// Events of one kind where the first of each second is logged by itself and the others are
// counted: "N more <what> in the last second (not logged one by one)" when the second is over.
class CountedLog {
 public:
  void Init(uv_loop_t* loop, LogLevel level, std::string what);
  void Close() { log_.Close(); }
  // True if this event is to be logged by itself now (what was counted is said first); else it
  // is counted.
  bool Now(bool stopping);

 private:
  void Flush();
  SecondlyLog log_;
  LogLevel level_ = LogLevel::kWarn;
  std::string what_;
  uint64_t quiet_ = 0;
};

}  // namespace store
