#include "common/threading.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <ctime>
#include <memory>
#include <mutex>
#include <pthread.h>
#include <sched.h>
#include <system_error>
#include <thread>
#include <unistd.h>
#include <vector>
#ifdef FUSEDRNN_OPENMP
#include <omp.h>
#endif

namespace fusedrnn {
namespace {
int default_threads() {
#ifdef FUSEDRNN_OPENMP
  return omp_get_max_threads();  // honours OMP_NUM_THREADS
#else
  return 1;
#endif
}
std::atomic<int> g_threads{0};
}  // namespace

int get_num_threads() {
  int n = g_threads.load(std::memory_order_relaxed);
  if (n <= 0) {
    n = default_threads();
    g_threads.store(n, std::memory_order_relaxed);
  }
  return n;
}

void set_num_threads(int n) { g_threads.store(n < 1 ? 1 : n, std::memory_order_relaxed); }

bool& inside_team() {
  thread_local bool inside = false;
  return inside;
}

TeamThresholds& team_thresholds() {
  static TeamThresholds limits;
  return limits;
}

SpinBarrier*& current_barrier() {
  thread_local SpinBarrier* barrier = nullptr;
  return barrier;
}

StopState*& current_stop() {
  thread_local StopState* stop = nullptr;
  return stop;
}

StopScope::StopScope(StopPoll poll) : enclosing_(current_stop()) {
  state_.poll = poll;
  state_.owner = &current_stop();
  current_stop() = &state_;
}

StopScope::~StopScope() { current_stop() = enclosing_; }

TeamMember::TeamMember(SpinBarrier* barrier, StopState* stop, int member)
    : enclosing_stop_(current_stop()) {
  barrier->clocks().register_member(member);
  inside_team() = true;
  current_barrier() = barrier;
  current_stop() = stop;
}

TeamMember::~TeamMember() {
  current_stop() = enclosing_stop_;
  current_barrier() = nullptr;
  inside_team() = false;
  restore_blas_threads_after_team();
}

namespace {
inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}
// Rounds of pure spinning before a waiter starts yielding: some microseconds.
constexpr int kSpinRounds = 2000;
}  // namespace

void SpinBarrier::wait() {
  const int generation = generation_.load(std::memory_order_acquire);
  // The last to arrive resets the count and opens the barrier; its release (and the acq_rel
  // chain of the arrivals) publishes every member's writes before the barrier to every member.
  if (arrived_.fetch_add(1, std::memory_order_acq_rel) == clocks_.members() - 1) {
    arrived_.store(0, std::memory_order_relaxed);
    generation_.store(generation + 1, std::memory_order_release);
    return;
  }
  StallClock stall;  // started when the spinning ends
  for (int round = 0; generation_.load(std::memory_order_acquire) == generation; ++round) {
    if (stop_ && stop_->stopped.load(std::memory_order_relaxed)) break;
    if (round < kSpinRounds) {
      cpu_relax();
    } else {
      if (round == kSpinRounds) stall.start(clocks_);
      sched_yield();
    }
  }
  if (const int64_t stalled = stall.stalled_ns(clocks_))
    stalled_ns_.fetch_add(stalled, std::memory_order_relaxed);
}

int64_t steady_nanoseconds() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

namespace {
constexpr int64_t kNotStarted = -1;
// (A system call: only once a wait is long.)
int64_t clock_nanoseconds(clockid_t clock) {
  timespec now{};
  if (clock_gettime(clock, &now) != 0) return kNotStarted;
  return int64_t(now.tv_sec) * 1'000'000'000 + now.tv_nsec;
}
}  // namespace

void MemberClocks::resize(int members) {
  members_ = members;
  clocks_ = std::make_unique<std::atomic<int64_t>[]>(static_cast<size_t>(members));
  for (int m = 0; m < members; ++m) clocks_[m].store(kNotStarted, std::memory_order_relaxed);
}

void MemberClocks::register_member(int member) {
  clockid_t clock;
  if (member < 0 || member >= members_ || pthread_getcpuclockid(pthread_self(), &clock) != 0)
    return;
  clocks_[member].store(static_cast<int64_t>(clock), std::memory_order_release);
}

int64_t MemberClocks::cpu_ns(int m) const {
  const int64_t clock = clocks_[m].load(std::memory_order_acquire);
  return clock == kNotStarted ? kNotStarted : clock_nanoseconds(static_cast<clockid_t>(clock));
}

void StallClock::start(const MemberClocks& clocks) {
  wall_ns_ = steady_nanoseconds();
  cpu_ns_.resize(static_cast<size_t>(clocks.members()));
  for (int m = 0; m < clocks.members(); ++m) cpu_ns_[m] = clocks.cpu_ns(m);
}

int64_t StallClock::stalled_ns(const MemberClocks& clocks) const {
  if (wall_ns_ == 0) return 0;
  const int64_t wall = steady_nanoseconds() - wall_ns_;
  int64_t stalled = 0;
  for (int m = 0; m < static_cast<int>(cpu_ns_.size()); ++m) {
    const int64_t now = cpu_ns_[m] == kNotStarted ? kNotStarted : clocks.cpu_ns(m);
    const int64_t ran = now == kNotStarted ? 0 : now - cpu_ns_[m];
    stalled += std::max<int64_t>(0, wall - ran);
  }
  return stalled;
}

namespace {
// TeamStalls' policy. The teams are judged together, over windows of at least kWindowNs of
// their time, so that one short unlucky team (a member preempted once) does not count alone. A
// window is stalled when its teams' stalled waits add up to kStalledShareInverse-th of its
// time or more.
constexpr int64_t kWindowNs = 20'000'000;
constexpr int64_t kStalledShareInverse = 4;  // a quarter
constexpr int64_t kFirstPauseNs = 20'000'000;
constexpr int64_t kLongestPauseNs = 1'000'000'000;
struct TeamStallState {
  TeamStalls counts;
  int64_t window_ns = 0, window_stalled_ns = 0;  // the teams' time so far in this window
  int64_t pause_ns = 0;                          // the pause after the next stall (0: the first)
  int64_t paused_until = 0;  // steady_nanoseconds; teams before it run on one thread
};
TeamStallState& team_stall_state() {
  thread_local TeamStallState state;
  return state;
}
}  // namespace

TeamStalls team_stalls() {
  const TeamStallState& state = team_stall_state();
  TeamStalls counts = state.counts;
  counts.paused = state.paused_until > steady_nanoseconds();
  return counts;
}

bool take_team_pause() {
  if (!team_thresholds().pause_stalled_teams) return false;
  TeamStallState& state = team_stall_state();
  if (state.paused_until == 0 || steady_nanoseconds() >= state.paused_until) return false;
  ++state.counts.calls_alone;
  return true;
}

void note_team_waits(int64_t wall_ns, int64_t stalled_ns) {
  TeamStallState& state = team_stall_state();
  state.window_ns += wall_ns;
  state.window_stalled_ns += stalled_ns;
  if (state.window_ns < kWindowNs) return;
  const bool stalled = state.window_stalled_ns * kStalledShareInverse >= state.window_ns;
  ++state.counts.windows_judged;
  state.window_ns = state.window_stalled_ns = 0;
  if (!stalled) {
    // A good window: the pause after the next stall starts short again.
    state.pause_ns = 0;
    return;
  }
  ++state.counts.teams_stalled;
  state.pause_ns = state.pause_ns ? std::min(2 * state.pause_ns, kLongestPauseNs) : kFirstPauseNs;
  state.counts.pause_us = state.pause_ns / 1000;
  state.paused_until = steady_nanoseconds() + state.pause_ns;
}

int current_cpu() {
#ifdef __linux__
  return sched_getcpu();
#else
  return -1;
#endif
}

void leave_cpu(int cpu) {
#ifdef __linux__
  if (cpu < 0 || sched_getcpu() != cpu) return;
  // The CPUs the process may use, as its main thread's mask says (never narrowed here); not this
  // thread's own, which an earlier move narrowed: the caller may since have moved to where this
  // thread was sent.
  cpu_set_t allowed;
  if (sched_getaffinity(getpid(), sizeof(allowed), &allowed) != 0 || !CPU_ISSET(cpu, &allowed))
    return;
  if (CPU_COUNT(&allowed) < 2) return;
  CPU_CLR(cpu, &allowed);
  // This thread only (libgomp's pool thread): the caller's thread is never bound.
  pthread_setaffinity_np(pthread_self(), sizeof(allowed), &allowed);
#else
  (void)cpu;
#endif
}

// ---------------------------------------------------------------- the worker threads
namespace {
// How long an idle worker waits for its next team before it sleeps: it spins kSpinRounds, then
// yields its core between checks (so others run) until kIdleYield has passed since its last team.
// A call's teams follow each other within microseconds and a training loop's calls within tens of
// them, so a busy worker never sleeps; an idle one stops using its core within a millisecond
// (libgomp's threads spin GOMP_SPINCOUNT rounds, 300,000 by default: measured 10 ms of CPU per
// call on this 2-core Zen 3 with PyTorch's libgomp).
constexpr auto kIdleYield = std::chrono::microseconds(500);

// The worker threads of one calling thread. Each worker has its own job slot: the caller writes
// a member's job and then bumps `posted`; the worker runs it and counts it in `finished_`.
class WorkerPool {
 public:
  ~WorkerPool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      quit_.store(true);
    }
    wake_.notify_all();
    for (auto& w : workers_) w->thread.join();
  }

  int reserve(int members) {
    while (static_cast<int>(workers_.size()) < members - 1) {
      auto worker = std::make_unique<Worker>();
      try {
        worker->thread = std::thread(&WorkerPool::work, this, worker.get());
      } catch (const std::system_error&) {
        break;  // no more threads: a smaller team
      }
      workers_.push_back(std::move(worker));
    }
    return std::min<int>(members, static_cast<int>(workers_.size()) + 1);
  }

  int64_t run(int members, TeamMemberFn fn, void* body, const MemberClocks& clocks) {
    finished_.store(0, std::memory_order_relaxed);
    const int caller_cpu = current_cpu();
    bool sleeper = false;
    for (int m = 1; m < members; ++m) {
      Worker& w = *workers_[m - 1];
      w.fn = fn;
      w.body = body;
      w.member = m;
      w.members = members;
      w.caller_cpu = caller_cpu;
      w.posted.fetch_add(1, std::memory_order_seq_cst);
      sleeper = sleeper || w.sleeping.load(std::memory_order_seq_cst);
    }
    // (A worker marks itself sleeping and then reads `posted` under the mutex; taking the mutex
    // here means it is either waiting, and notified, or has not yet read `posted`.)
    if (sleeper) {
      { std::lock_guard<std::mutex> lock(mutex_); }
      wake_.notify_all();
    }
    fn(body, 0, members);
    StallClock stall;  // (as in SpinBarrier::wait)
    for (int round = 0; finished_.load(std::memory_order_acquire) != members - 1; ++round) {
      if (round < kSpinRounds) {
        cpu_relax();
      } else {
        if (round == kSpinRounds) stall.start(clocks);
        sched_yield();
      }
    }
    // A team that had to wake a sleeping worker waited for the wake-up, not for a taken core:
    // not judged (-1).
    return sleeper ? -1 : stall.stalled_ns(clocks);
  }

 private:
  struct alignas(64) Worker {
    std::atomic<uint64_t> posted{0};
    std::atomic<bool> sleeping{false};
    TeamMemberFn fn = nullptr;
    void* body = nullptr;
    int member = 0, members = 0, caller_cpu = -1;
    std::thread thread;
  };

  void work(Worker* w) {
    for (uint64_t done = 0;; ++done) {
      if (!wait_for_job(*w, done)) return;
      leave_cpu(w->caller_cpu);
      w->fn(w->body, w->member, w->members);
      finished_.fetch_add(1, std::memory_order_acq_rel);
    }
  }

  // Waits until the worker's job number done+1 is posted (true) or the pool quits (false).
  bool wait_for_job(Worker& w, uint64_t done) {
    const auto idle_since = std::chrono::steady_clock::now();
    for (int round = 0;; ++round) {
      if (w.posted.load(std::memory_order_acquire) != done) return true;
      if (quit_.load(std::memory_order_relaxed)) return false;
      if (round < kSpinRounds) {
        cpu_relax();
      } else if (round % 16 != 0 || std::chrono::steady_clock::now() - idle_since < kIdleYield) {
        sched_yield();
      } else {
        std::unique_lock<std::mutex> lock(mutex_);
        w.sleeping.store(true, std::memory_order_seq_cst);
        wake_.wait(
            lock, [&] { return w.posted.load(std::memory_order_seq_cst) != done || quit_.load(); });
        w.sleeping.store(false, std::memory_order_relaxed);
      }
    }
  }

  std::vector<std::unique_ptr<Worker>> workers_;
  alignas(64) std::atomic<int> finished_{0};
  std::atomic<bool> quit_{false};
  std::mutex mutex_;
  std::condition_variable wake_;
};

// The calling thread's pool, made at its first team and joined when the thread ends.
std::unique_ptr<WorkerPool>& thread_pool() {
  thread_local std::unique_ptr<WorkerPool> pool;
  return pool;
}

// In a forked child only the forking thread exists: its pool's workers are gone, so the pool is
// dropped, unjoined (its memory is left: its mutex may be held by a worker that no longer exists),
// and the child's next team starts a pool of its own.
void forget_pool_after_fork() { (void)thread_pool().release(); }

std::atomic<bool> openmp_teams_asked{false};
std::atomic<bool> forked_child{false};
void mark_forked_child() { forked_child.store(true, std::memory_order_relaxed); }
// Registered when the extension loads, before any team: every fork's child is marked.
[[maybe_unused]] const int fork_marker_registered =
    pthread_atfork(nullptr, nullptr, mark_forked_child);
}  // namespace

int reserve_team(int threads) {
  static const int atfork_registered = pthread_atfork(nullptr, nullptr, forget_pool_after_fork);
  (void)atfork_registered;
  std::unique_ptr<WorkerPool>& pool = thread_pool();
  if (!pool) pool = std::make_unique<WorkerPool>();
  return pool->reserve(threads);
}

int64_t run_on_pool(int members, TeamMemberFn fn, void* body, const MemberClocks& clocks) {
  return thread_pool()->run(members, fn, body, clocks);
}

int64_t worker_idle_microseconds() { return kIdleYield.count(); }

bool have_openmp() {
#ifdef FUSEDRNN_OPENMP
  return true;
#else
  return false;
#endif
}

void set_openmp_teams(bool on) { openmp_teams_asked.store(on, std::memory_order_relaxed); }

bool openmp_teams() {
#ifdef FUSEDRNN_OPENMP
  return openmp_teams_asked.load(std::memory_order_relaxed) &&
         !forked_child.load(std::memory_order_relaxed);
#else
  return false;
#endif
}

}  // namespace fusedrnn
