// Thread count of the kernels, and the one way they split work across threads.
#pragma once
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>
#ifdef FUSEDRNN_OPENMP
#include <omp.h>
#endif

#include "common/blas.h"

namespace fusedrnn {

int get_num_threads();
// How long an idle worker thread of the kernels keeps its core (spinning, then yielding it to
// anyone who needs it between checks) before it sleeps until the next team.
int64_t worker_idle_microseconds();
void set_num_threads(int n);  // n >= 1
bool have_openmp();

// True on the members of a running team: work they start runs on them alone (no nested teams).
bool& inside_team();

// Stopping a call early (Ctrl-C). The caller of a kernel may install, for its thread, a function
// that says whether to stop (StopScope); the kernels ask at step and tile boundaries
// (stop_requested()) and, once told, skip the rest of the call: its outputs are then undefined
// (the memory is still all the caller's). Only the installing thread calls the function; the
// members of its teams see the answer through the shared flag.
using StopPoll = bool (*)();
struct StopState {
  StopPoll poll = nullptr;
  const void* owner = nullptr;  // the installing thread's identity (its current_stop() slot)
  std::atomic<bool> stopped{false};
};
// The stop state of the call the calling thread works for (null: nobody asks to stop).
StopState*& current_stop();

class StopScope {
 public:
  explicit StopScope(StopPoll poll);
  ~StopScope();
  StopScope(const StopScope&) = delete;
  StopScope& operator=(const StopScope&) = delete;
  bool stopped() const { return state_.stopped.load(std::memory_order_acquire); }

 private:
  StopState state_;
  StopState* enclosing_;
};

// True once the call should stop (sticky for the rest of the call).
inline bool stop_requested() {
  StopState* const state = current_stop();
  if (!state) return false;
  if (state->stopped.load(std::memory_order_relaxed)) return true;
  if (state->poll && state->owner == &current_stop() && state->poll()) {
    state->stopped.store(true, std::memory_order_release);
    return true;
  }
  return false;
}

// The CPU-time clocks of a team's members (their threads'), so that a member waiting for the
// others can tell whether they ran meanwhile. Each member registers its own as it starts.
class MemberClocks {
 public:
  void resize(int members);          // before any member registers
  void register_member(int member);  // by the calling thread, member `member` of the team
  int members() const { return members_; }
  // The CPU nanoseconds member m has used so far, or -1 if it has not registered yet.
  int64_t cpu_ns(int m) const;

 private:
  int members_ = 0;
  std::unique_ptr<std::atomic<int64_t>[]> clocks_;  // clockid_t, or -1: not registered yet
};

// A wait past spinning: from start() on, how long the members of a team (the waiter included)
// were not running: the wait's length less the CPU time each used meanwhile, by their own
// threads' clocks. A member that is merely behind runs and does not count; one whose core another
// thread holds does, whether that thread is another program's, another library's in this process
// (spinning after its call), or the team's own (two members on one core: the waiter yields its
// core to the other). A member not yet started counts as not running. The clocks are read
// (system calls) only in start() and stalled_ns(): only once a wait is long.
class StallClock {
 public:
  void start(const MemberClocks& clocks);
  int64_t stalled_ns(const MemberClocks& clocks) const;

 private:
  int64_t wall_ns_ = 0;
  std::vector<int64_t> cpu_ns_;  // each member's at start (-1: not started)
};

// The barrier of a team's time loop, met every step. A waiter spins briefly (a step's partner is
// microseconds away on a quiet machine), then keeps checking with sched_yield between checks, so
// that on a busy machine it hands its core to whoever needs it (its partner, or another program)
// and never sleeps in the kernel: waking a sleeping thread costs tens to hundreds of microseconds
// on a virtual machine, more than a whole step. Once the call is stopped (`stop`), every wait
// returns at once: a member that stopped never comes again, and the others must not wait for it.
class SpinBarrier {
 public:
  SpinBarrier(int members, const StopState* stop) : stop_(stop) { clocks_.resize(members); }
  void wait();
  // Before any wait and any member's start: OpenMP may give a team fewer threads than asked.
  void set_members(int members) { clocks_.resize(members); }
  MemberClocks& clocks() { return clocks_; }
  // Nanoseconds the members did not run while members waited here past their spinning, summed
  // (see TeamStalls).
  int64_t stalled_ns() const { return stalled_ns_.load(std::memory_order_relaxed); }

 private:
  const StopState* stop_;
  MemberClocks clocks_;  // one per member: their count is the team's
  alignas(64) std::atomic<int> arrived_{0};
  alignas(64) std::atomic<int> generation_{0};
  alignas(64) std::atomic<int64_t> stalled_ns_{0};
};

// Teams on a shared machine. A member that another thread has taken the core from holds up
// every barrier of its team until the scheduler gives it back (milliseconds), and a per-step
// barrier then makes a call slower than on one thread. Measured on this 2-core Zen 3: with one
// busy-looping process beside, GRU B=1 fwd+bwd 8.0 ms on 2 threads against 4.7 on one, RNN 8.0
// against 1.5; with numpy's OpenBLAS threads spinning after a matmul in the same process, GRU
// B=1 inference 3.7 ms against 1.8, LSTM B=16 34 against 21. So each calling thread watches its
// teams: a wait that outlasts its spinning (about 55 us here) counts as stalled for the time the
// members did not run (StallClock: their threads' CPU clocks; a member that is merely behind, or
// has more of a dynamic share, runs and does not count). The teams are judged over
// windows of 20 ms of their time; after a window stalled for a quarter of its time or more, that
// thread's next calls run on one thread for a pause, then the team is tried again; the pause
// doubles while the tries stall too and starts again short after a good window. Results do not
// change: they never depend on the thread count.
struct TeamStalls {
  int64_t windows_judged = 0;  // windows of teams judged so far
  int64_t teams_stalled = 0;   // windows of teams judged stalled so far
  int64_t calls_alone = 0;     // teams that ran on one thread because of a pause
  int64_t pause_us = 0;        // the current (or last) pause
  bool paused = false;         // the calling thread's teams are paused now
};
TeamStalls team_stalls();  // of the calling thread
// Whether the calling thread's next team is to run on one thread (and counts it as such).
bool take_team_pause();
// After a team of the calling thread: its wall time and its members' stalled waits (summed).
void note_team_waits(int64_t wall_ns, int64_t stalled_ns);
int64_t steady_nanoseconds();

// The barrier of the team the calling thread is a member of (null outside a team).
SpinBarrier*& current_barrier();

// The CPU the calling thread runs on (-1 if unknown).
int current_cpu();
// Called by a team member other than the first, with the CPU the first (the caller of run_team)
// runs on: if this thread woke up on that same CPU, it moves off it. The scheduler tends to wake
// a pool thread on its waker's CPU; two members sharing a core for a call take twice as long,
// and on this machine a third of small calls did.
void leave_cpu(int cpu);

// What a team member runs: body(member, members), type-erased for the thread pool.
using TeamMemberFn = void (*)(void* body, int member, int members);

// Makes the calling thread's pool of worker threads ready for a team of `threads` (the caller
// and threads-1 workers); returns the team size it can run: fewer only if the system refused
// new threads.
int reserve_team(int threads);
// Runs fn(body, m, members) for m = 1 .. members-1 on the pool's workers and fn(body, 0, members)
// on the calling thread, and returns when all are done. members: at most reserve_team's answer.
// Returns the nanoseconds the workers did not run while the calling thread waited past its
// spinning for them (StallClock), or -1 when it had to wake a sleeping worker (then the wait is
// the wake-up's).
// `clocks`: the team's, which its members register as they start.
int64_t run_on_pool(int members, TeamMemberFn fn, void* body, const MemberClocks& clocks);

// Whose threads run the teams: fusedrnn's own pool (the default), or OpenMP's, which a process
// that also runs PyTorch should use (fusedrnn.torch asks for it): PyTorch's OpenMP threads spin
// after each of its operations and take the cores from a second set of threads (a 2-layer LSTM
// step of fusedrnn.torch on 2 cores: 24 ms on OpenMP's threads, 40 ms on the pool). A forked
// child always uses the pool: OpenMP's threads do not survive fork (the child would hang).
void set_openmp_teams(bool on);
bool openmp_teams();  // in force: asked for, built with OpenMP, and not in a forked child

// The members' side of run_team: the thread-local state of a team member around body.
struct TeamMember {
  TeamMember(SpinBarrier* barrier, StopState* stop, int member);
  ~TeamMember();
  TeamMember(const TeamMember&) = delete;
  TeamMember& operator=(const TeamMember&) = delete;

 private:
  StopState* enclosing_stop_;
};

// Runs body(member, members) on a team of up to `threads` threads; each member's BLAS calls run on
// that member alone (restore_blas_threads_after_team), so the team owns the cores. body may call
// team_barrier() (all members must reach it equally often, or stop: stop_requested()). One
// thread, or called from a team (the two directions of a layer): body(0, 1) on the calling thread
// alone, whose team_barrier() then waits for nobody. A stopped call runs no more teams.
//
// The teams run on fusedrnn's own worker threads (one pool per calling thread, as libgomp keeps
// one), not OpenMP's: their idle policy is the kernels' own whatever library loaded libgomp first
// (GOMP_SPINCOUNT is read once, when libgomp loads), and a forked child starts a fresh pool
// instead of waiting forever for its parent's threads, which fork does not copy.
template <typename Body>
void run_team(int threads, Body&& body) {
  if (stop_requested()) return;
#ifdef FUSEDRNN_OPENMP  // (the pool needs no OpenMP, but a build without it runs on one thread,
                        // as documented; OpenMP gives the default count, OMP_NUM_THREADS)
  if (threads > 1 && !inside_team() && take_team_pause()) threads = 1;  // (TeamStalls)
  if (threads > 1 && !inside_team() && openmp_teams()) {
    SpinBarrier barrier(threads, current_stop());
    StopState* const stop = current_stop();
    const int caller_cpu = current_cpu();
    const int64_t start = steady_nanoseconds();
#pragma omp parallel num_threads(threads)
    {
      if (omp_get_thread_num() != 0) leave_cpu(caller_cpu);
#pragma omp single
      barrier.set_members(omp_get_num_threads());  // (single ends with OpenMP's barrier)
      const TeamMember scope(&barrier, stop, omp_get_thread_num());
      body(omp_get_thread_num(), omp_get_num_threads());
    }
    note_team_waits(steady_nanoseconds() - start, barrier.stalled_ns());
    return;
  }
  if (threads > 1 && !inside_team()) threads = reserve_team(threads);
  if (threads > 1 && !inside_team()) {
    struct Team {
      Body& body;
      SpinBarrier barrier;
      StopState* stop;
    } team{body, SpinBarrier(threads, current_stop()), current_stop()};
    const TeamMemberFn member_fn = [](void* p, int member, int members) {
      Team& t = *static_cast<Team*>(p);
      const TeamMember scope(&t.barrier, t.stop, member);
      t.body(member, members);
    };
    const int64_t start = steady_nanoseconds();
    const int64_t join_stalled_ns = run_on_pool(threads, member_fn, &team, team.barrier.clocks());
    if (join_stalled_ns >= 0)
      note_team_waits(steady_nanoseconds() - start, team.barrier.stalled_ns() + join_stalled_ns);
    return;
  }
#endif
  (void)threads;
  SpinBarrier* const enclosing = current_barrier();
  current_barrier() = nullptr;
  body(0, 1);
  current_barrier() = enclosing;
}

// Every member of the running team waits here for the others (alone: returns at once).
inline void team_barrier() {
  if (SpinBarrier* barrier = current_barrier()) barrier->wait();
}

// How many blocks of b items hold a items.
inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The share [begin, end) of n items that member m of a team of `members` takes.
inline int64_t share_begin(int64_t n, int m, int members) { return n * m / members; }

// Below this many multiply-adds per step, a barrier per step costs more than a second thread
// saves, and risks far more on a busy machine (a descheduled partner stalls the step); such
// recurrences run on one thread. Every member gets at least 16 hidden units. Tests lower both to
// run the team on tiny sizes.
struct TeamThresholds {
  int64_t min_step_work = 1 << 17;
  int64_t min_units_per_member = 16;
  bool pause_stalled_teams = true;  // TeamStalls' policy (tests that force teams turn it off)
};
TeamThresholds& team_thresholds();

// Threads for a time loop over `hidden` units, held in `panels` panels of the step GEMM (a member
// owns whole panels, common/step_gemm.h), whose recurrent GEMM does `step_work` multiply-adds per
// step.
inline int recurrent_team_size(int64_t hidden, int64_t step_work, int64_t panels) {
  if (inside_team()) return 1;
  const TeamThresholds& limits = team_thresholds();
  const int64_t threads =
      std::min<int64_t>({get_num_threads(), hidden / limits.min_units_per_member, panels});
  return step_work >= limits.min_step_work && threads > 1 ? static_cast<int>(threads) : 1;
}

// Threads for GEMMs over all steps (`work` multiply-adds, no barrier per step): every thread once
// the work reaches the same threshold as a time loop's step.
inline int gemm_team_size(int64_t work) {
  if (inside_team()) return 1;
  return work >= team_thresholds().min_step_work ? get_num_threads() : 1;
}

}  // namespace fusedrnn
