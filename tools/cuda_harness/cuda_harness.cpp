// swin_harness runtime: fibers, the per-block scheduler, warp operations,
// launches.  See cuda_harness.h for what it provides and the modes.
//
// A block runs on one OS thread.  Each of its CUDA threads is a fiber with
// its own stack; the scheduler resumes ready fibers one at a time (thread
// order, or a seeded random order in shuffle mode) and a fiber runs until it
// reaches __syncthreads, a warp operation or its end:
//   * __syncthreads suspends the thread; when no thread is ready and every
//     live thread waits at a barrier, the barrier opens if they all wait at
//     the same one (same call site), otherwise the launch fails.
//   * a warp operation suspends the lane until every live lane named in the
//     mask has arrived at the same operation (same call site and mask);
//     lanes that have exited (or do not exist in a partial warp) are not
//     waited for, and reading their value yields poison (0xFF bytes).  When
//     no thread is ready and a warp operation is still waiting, its missing
//     lanes are at a barrier, at another warp operation, or it is a deadlock:
//     the launch fails and the message says where every missing lane is.
#include "cuda_harness.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <new>
#include <sstream>
#include <thread>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define SWIN_HARNESS_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SWIN_HARNESS_ASAN 1
#endif
#endif
#ifndef SWIN_HARNESS_ASAN
#define SWIN_HARNESS_ASAN 0
#endif
#if SWIN_HARNESS_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#if defined(__x86_64__) && !defined(SWIN_HARNESS_UCONTEXT)
#define SWIN_HARNESS_ASM_SWITCH 1
#else
#define SWIN_HARNESS_ASM_SWITCH 0
#include <ucontext.h>
#endif

#if SWIN_HARNESS_ASM_SWITCH
// x86-64 System V context switch: saves the callee-saved registers, MXCSR and
// the x87 control word on the current stack, stores the stack pointer in
// *save_sp and resumes the context whose stack pointer is new_sp.  Unlike
// swapcontext it makes no system call (the signal mask is not switched).
extern "C" void swin_harness_ctx_switch(void** save_sp, void* new_sp);
extern "C" void swin_harness_fiber_trampoline();
asm(R"(
  .text
  .p2align 4
  .globl swin_harness_ctx_switch
  .hidden swin_harness_ctx_switch
  .type swin_harness_ctx_switch, @function
swin_harness_ctx_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size swin_harness_ctx_switch, .-swin_harness_ctx_switch

  .p2align 4
  .globl swin_harness_fiber_trampoline
  .hidden swin_harness_fiber_trampoline
  .type swin_harness_fiber_trampoline, @function
swin_harness_fiber_trampoline:
  .cfi_startproc
  .cfi_undefined rip
  movq %r12, %rdi
  callq *%r13
  ud2
  .cfi_endproc
  .size swin_harness_fiber_trampoline, .-swin_harness_fiber_trampoline
)");
#endif

namespace swin_harness {
namespace detail {
namespace {

// ---------------------------------------------------------------------------
// Options.
std::mutex g_opt_mu;
bool g_opt_override = false;
Options g_opt;
std::atomic<uint64_t> g_launches{0};
std::mutex g_log_mu;
bool g_log_on = false;
std::vector<LaunchRecord> g_log;

long env_long(const char* name, long dflt) {
  const char* v = std::getenv(name);
  if (!v || !*v) return dflt;
  char* end = nullptr;
  const long r = std::strtol(v, &end, 0);
  return (end && *end == '\0') ? r : dflt;
}

Options read_options() {
  std::lock_guard<std::mutex> lk(g_opt_mu);
  if (g_opt_override) return g_opt;
  Options o;
  o.shuffle_seed = static_cast<uint64_t>(env_long("SWIN_HARNESS_SHUFFLE", 0));
  o.workers = static_cast<int>(env_long("SWIN_HARNESS_WORKERS", 0));
  o.stack_kb = static_cast<int>(env_long("SWIN_HARNESS_STACK_KB", SWIN_HARNESS_ASAN ? 512 : 256));
  o.arch = static_cast<int>(env_long("SWIN_HARNESS_ARCH", 90));
  o.timeout_s = static_cast<int>(env_long("SWIN_HARNESS_TIMEOUT", 600));
  return o;
}

// ---------------------------------------------------------------------------
// Emulated device limits.
struct DeviceLimits {
  int arch, sms, smem_optin, smem_per_sm, threads_per_sm;
  const char* name;
};
DeviceLimits limits_for(int arch) {
  switch (arch) {
    case 80: return {80, 108, 166912, 167936, 2048, "sm_80 (A100)"};
    case 86: return {86, 84, 101376, 102400, 1536, "sm_86"};
    case 89: return {89, 128, 101376, 102400, 1536, "sm_89"};
    default: return {90, 132, 232448, 233472, 2048, "sm_90 (H100)"};
  }
}
constexpr size_t kDefaultSmemLimit = 48 * 1024;

std::mutex g_attr_mu;
std::map<const void*, int> g_max_dyn_smem;
std::atomic<int> g_attr_failures{0};

// ---------------------------------------------------------------------------
// Fiber stacks: mmap'ed with a guard page below, pooled across blocks.
struct Stack {
  char* map = nullptr;
  size_t map_size = 0;
  char* base = nullptr;  // usable [base, base + size)
  size_t size = 0;
};
std::mutex g_stack_mu;
std::vector<Stack> g_stack_pool;

Stack stack_acquire(size_t size) {
  {
    std::lock_guard<std::mutex> lk(g_stack_mu);
    for (size_t i = g_stack_pool.size(); i-- > 0;) {
      if (g_stack_pool[i].size == size) {
        Stack s = g_stack_pool[i];
        g_stack_pool[i] = g_stack_pool.back();
        g_stack_pool.pop_back();
        return s;
      }
    }
  }
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  Stack s;
  s.map_size = size + page;
  void* m = mmap(nullptr, s.map_size, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED) throw Error("swin_harness: cannot allocate a fiber stack (mmap failed)");
  s.map = static_cast<char*>(m);
  mprotect(s.map, page, PROT_NONE);  // guard page: a stack overflow faults
  s.base = s.map + page;
  s.size = size;
  return s;
}
void stack_release(std::vector<Stack>& stacks) {
  std::lock_guard<std::mutex> lk(g_stack_mu);
  for (auto& s : stacks) g_stack_pool.push_back(s);
  stacks.clear();
}

// ---------------------------------------------------------------------------
enum class TS : uint8_t { Ready, Running, Barrier, Warp, Done, Failed };

struct ThreadRec {
  void* sp = nullptr;  // saved context (asm switch)
#if !SWIN_HARNESS_ASM_SWITCH
  ucontext_t uc;
#endif
  void* asan_fake = nullptr;
  Stack stack;
  uint3 tid;
  int linear = 0, warp = 0, lane = 0;
  TS state = TS::Ready;
  // where it waits
  const char* file = "";
  int line = 0;
  const char* what = "";
  // barrier
  int bar_kind = 0, bar_pred = 0, bar_result = 0;
  // warp op
  int wkind = 0, param = 0, width = 32;
  unsigned mask = 0;
  uint64_t in = 0, out = 0;
  CollectiveFn fn = nullptr;  // kCollective
  // cp.async copies issued and not yet performed (group -1: not committed)
  struct AsyncCopy {
    void* dst;
    const void* src;
    int bytes, src_bytes;
    int64_t group;
  };
  std::vector<AsyncCopy> async;
  int64_t async_groups = 0;  // groups committed so far
};

struct LaunchState {
  const LaunchSpec* spec = nullptr;
  std::string name;
  Options opt;
  uint64_t launch_id = 0;
  unsigned nthreads = 0;
  uint64_t nblocks = 0;
  std::vector<uint64_t> order;  // block visiting order
  std::atomic<uint64_t> next{0};
  std::atomic<uint64_t> running_block{0};  // last block started (for the watchdog)
  std::atomic<bool> failed{false};
  std::mutex err_mu;
  std::string error;
  void set_error(const std::string& e) {
    std::lock_guard<std::mutex> lk(err_mu);
    if (error.empty()) error = e;
    failed.store(true);
  }
};

uint64_t splitmix64(uint64_t& s) {
  uint64_t z = (s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

std::string fmt3(unsigned x, unsigned y, unsigned z) {
  std::ostringstream os;
  os << "(" << x << "," << y << "," << z << ")";
  return os.str();
}
std::string hex(unsigned m) {
  char b[16];
  std::snprintf(b, sizeof b, "0x%08x", m);
  return b;
}
std::string site(const char* file, int line) {
  std::ostringstream os;
  os << file << ":" << line;
  return os.str();
}
// "0-15,17,20-23"
std::string ranges(const std::vector<int>& v) {
  std::ostringstream os;
  for (size_t i = 0; i < v.size();) {
    size_t j = i;
    while (j + 1 < v.size() && v[j + 1] == v[j] + 1) ++j;
    if (i) os << ",";
    os << v[i];
    if (j > i) os << "-" << v[j];
    i = j + 1;
  }
  return os.str();
}

bool is_shfl(int k) { return k == kShflIdx || k == kShflUp || k == kShflDown || k == kShflXor; }

void fiber_entry(ThreadRec* t);

struct Worker {
  LaunchState* L = nullptr;
  std::vector<ThreadRec> threads;
  std::vector<Stack> stacks;
  std::vector<int> ready;
  size_t head = 0;
  int live = 0, at_barrier = 0;
  ThreadRec* current = nullptr;
  void* sched_sp = nullptr;
#if !SWIN_HARNESS_ASM_SWITCH
  ucontext_t sched_uc;
#endif
  void* sched_fake = nullptr;
  const void* sched_bottom = nullptr;
  size_t sched_size = 0;
  unsigned char* smem = nullptr;
  uint3 block{0, 0, 0};
  uint64_t rng = 0;
  bool shuffle = false;
  std::string error;

  std::string where() const {
    const LaunchSpec& s = *L->spec;
    return "swin_harness: kernel " + L->name + " (grid " + fmt3(s.grid.x, s.grid.y, s.grid.z) +
           ", block " + fmt3(s.block.x, s.block.y, s.block.z) + "), block " +
           fmt3(block.x, block.y, block.z);
  }
  std::string thread_name(const ThreadRec& t) const {
    return "thread " + fmt3(t.tid.x, t.tid.y, t.tid.z) + " (warp " + std::to_string(t.warp) +
           " lane " + std::to_string(t.lane) + ")";
  }

  // ---- ready queue
  bool has_ready() const { return head < ready.size(); }
  void push_ready(ThreadRec& t) {
    t.state = TS::Ready;
    ready.push_back(t.linear);
  }
  int pop_ready() {
    if (shuffle) {
      const size_t n = ready.size() - head;
      const size_t k = head + static_cast<size_t>(splitmix64(rng) % n);
      std::swap(ready[k], ready[head]);
    }
    const int t = ready[head++];
    if (head == ready.size()) {
      ready.clear();
      head = 0;
    }
    return t;
  }

  // ---- fibers
  void init_fiber(ThreadRec& t) {
#if SWIN_HARNESS_ASAN
    // Stale redzones of an abandoned fiber that ran on this stack.
    __asan_unpoison_memory_region(t.stack.base, t.stack.size);
#endif
    t.asan_fake = nullptr;
#if SWIN_HARNESS_ASM_SWITCH
    char* top = reinterpret_cast<char*>(
        reinterpret_cast<uintptr_t>(t.stack.base + t.stack.size) & ~uintptr_t(15));
    void** sp = reinterpret_cast<void**>(top - 80);
    uint32_t mxcsr;
    uint16_t fpucw;
    asm volatile("stmxcsr %0" : "=m"(mxcsr));
    asm volatile("fnstcw %0" : "=m"(fpucw));
    std::memset(sp, 0, 80);
    std::memcpy(reinterpret_cast<char*>(sp), &mxcsr, 4);
    std::memcpy(reinterpret_cast<char*>(sp) + 4, &fpucw, 2);
    sp[3] = reinterpret_cast<void*>(&fiber_entry);  // r13
    sp[4] = &t;                                     // r12
    sp[7] = reinterpret_cast<void*>(&swin_harness_fiber_trampoline);
    t.sp = sp;
#else
    getcontext(&t.uc);
    t.uc.uc_stack.ss_sp = t.stack.base;
    t.uc.uc_stack.ss_size = t.stack.size;
    t.uc.uc_link = nullptr;
    const uintptr_t p = reinterpret_cast<uintptr_t>(&t);
    makecontext(&t.uc, reinterpret_cast<void (*)()>(&ucontext_entry), 2,
                static_cast<unsigned>(p & 0xffffffffu), static_cast<unsigned>(p >> 32));
#endif
  }
#if !SWIN_HARNESS_ASM_SWITCH
  static void ucontext_entry(unsigned lo, unsigned hi) {
    fiber_entry(reinterpret_cast<ThreadRec*>((static_cast<uintptr_t>(hi) << 32) | lo));
  }
#endif

  // Scheduler -> fiber.
  void resume(ThreadRec& t) {
    current = &t;
    t.state = TS::Running;
    threadIdx = t.tid;
#if SWIN_HARNESS_ASAN
    __sanitizer_start_switch_fiber(&sched_fake, t.stack.base, t.stack.size);
#endif
#if SWIN_HARNESS_ASM_SWITCH
    swin_harness_ctx_switch(&sched_sp, t.sp);
#else
    swapcontext(&sched_uc, &t.uc);
#endif
#if SWIN_HARNESS_ASAN
    __sanitizer_finish_switch_fiber(sched_fake, nullptr, nullptr);
#endif
    current = nullptr;
  }
  // Fiber -> scheduler.  Returns when the scheduler resumes this thread.
  void yield(ThreadRec& t) {
#if SWIN_HARNESS_ASAN
    const bool finished = (t.state == TS::Done || t.state == TS::Failed);
    __sanitizer_start_switch_fiber(finished ? nullptr : &t.asan_fake, sched_bottom, sched_size);
#endif
#if SWIN_HARNESS_ASM_SWITCH
    swin_harness_ctx_switch(&t.sp, sched_sp);
#else
    swapcontext(&t.uc, &sched_uc);
#endif
#if SWIN_HARNESS_ASAN
    __sanitizer_finish_switch_fiber(t.asan_fake, &sched_bottom, &sched_size);
#endif
  }

  void fail(const std::string& msg) {
    if (error.empty()) error = msg;
  }

  // ---- warp operations
  unsigned existing_lanes(int warp) const {
    const int n = static_cast<int>(threads.size()) - warp * 32;
    return n >= 32 ? 0xffffffffu : ((1u << n) - 1u);
  }
  static bool same_op(const ThreadRec& a, const ThreadRec& b) {
    return a.wkind == b.wkind && a.mask == b.mask && a.line == b.line && a.fn == b.fn &&
           (a.file == b.file || std::strcmp(a.file, b.file) == 0);
  }
  // Completes t's warp operation if every live lane named in its mask waits at it.
  // Returns true if completed (the lanes other than `self` are made ready).
  bool try_complete(ThreadRec& t, ThreadRec* self) {
    const int base = t.warp * 32;
    const unsigned exist = existing_lanes(t.warp);
    unsigned arrived = 0;
    for (int l = 0; l < 32; ++l) {
      if (!((t.mask >> l) & 1u)) continue;
      if (!((exist >> l) & 1u)) continue;  // no such thread: like an exited one
      const ThreadRec& o = threads[base + l];
      if (o.state == TS::Done) continue;
      if (o.state != TS::Warp || !same_op(o, t)) return false;
      arrived |= 1u << l;
    }
    compute(base, arrived, t);
    for (int l = 0; l < 32; ++l) {
      if (!((arrived >> l) & 1u)) continue;
      ThreadRec& o = threads[base + l];
      if (&o == self)
        o.state = TS::Running;
      else
        push_ready(o);
    }
    return true;
  }
  void compute(int base, unsigned arrived, const ThreadRec& op) {
    if (op.wkind == kCollective) {
      void* lanes[32];
      for (int l = 0; l < 32; ++l)
        lanes[l] = ((arrived >> l) & 1u) ? reinterpret_cast<void*>(static_cast<uintptr_t>(threads[base + l].in))
                                          : nullptr;
      const char* err = op.fn(lanes, arrived);
      if (err)
        fail(where() + ": " + op.what + " at " + site(op.file, op.line) + " in warp " + std::to_string(op.warp) +
             ": " + err);
      for (int l = 0; l < 32; ++l)
        if ((arrived >> l) & 1u) threads[base + l].out = 0;
      return;
    }
    uint64_t in[32];
    for (int l = 0; l < 32; ++l) in[l] = ((arrived >> l) & 1u) ? threads[base + l].in : ~0ull;
    const int kind = op.wkind;
    uint64_t common = 0;
    switch (kind) {
      case kBallot:
      case kAny:
      case kAll: {
        unsigned b = 0;
        for (int l = 0; l < 32; ++l)
          if (((arrived >> l) & 1u) && (in[l] & 1u)) b |= 1u << l;
        common = kind == kBallot ? b : kind == kAny ? (b != 0) : (b == arrived);
        break;
      }
      case kReduceAddU:
      case kReduceMinU:
      case kReduceMaxU:
      case kReduceMinS:
      case kReduceMaxS:
      case kReduceAnd:
      case kReduceOr:
      case kReduceXor: {
        bool first = true;
        uint32_t acc = 0;
        for (int l = 0; l < 32; ++l) {
          if (!((arrived >> l) & 1u)) continue;
          const uint32_t v = static_cast<uint32_t>(in[l]);
          if (first) {
            acc = v;
            first = false;
            continue;
          }
          switch (kind) {
            case kReduceAddU: acc += v; break;
            case kReduceMinU: acc = std::min(acc, v); break;
            case kReduceMaxU: acc = std::max(acc, v); break;
            case kReduceMinS:
              acc = static_cast<uint32_t>(std::min(static_cast<int32_t>(acc), static_cast<int32_t>(v)));
              break;
            case kReduceMaxS:
              acc = static_cast<uint32_t>(std::max(static_cast<int32_t>(acc), static_cast<int32_t>(v)));
              break;
            case kReduceAnd: acc &= v; break;
            case kReduceOr: acc |= v; break;
            default: acc ^= v; break;
          }
        }
        common = acc;
        break;
      }
      case kMatchAll: {
        bool eq = true;
        int first = -1;
        for (int l = 0; l < 32; ++l) {
          if (!((arrived >> l) & 1u)) continue;
          if (first < 0) first = l;
          else if (in[l] != in[first]) eq = false;
        }
        common = eq ? (static_cast<uint64_t>(arrived) | (1ull << 32)) : 0;
        break;
      }
      default: break;
    }
    for (int l = 0; l < 32; ++l) {
      if (!((arrived >> l) & 1u)) continue;
      ThreadRec& o = threads[base + l];
      switch (kind) {
        case kShflIdx:
        case kShflUp:
        case kShflDown:
        case kShflXor: {
          // PTX shfl.sync semantics, c = ((32 - width) << 8) | (up ? 0 : 0x1f).
          const int seg = (32 - o.width) & 31;
          const int b = o.param & 31;
          const int minLane = l & seg;
          const int maxLane = kind == kShflUp ? minLane : (minLane | (31 & ~seg));
          int j;
          bool pval;
          if (kind == kShflUp) {
            j = l - b;
            pval = j >= maxLane;
          } else if (kind == kShflDown) {
            j = l + b;
            pval = j <= maxLane;
          } else if (kind == kShflXor) {
            j = l ^ b;
            pval = j <= maxLane;
          } else {
            j = minLane | (b & ~seg);
            pval = j <= maxLane;
          }
          if (!pval) j = l;
          // A source lane that is not taking part: undefined value -> poison.
          o.out = (j >= 0 && j < 32 && ((arrived >> j) & 1u)) ? in[j] : ~0ull;
          break;
        }
        case kMatchAny: {
          unsigned m = 0;
          for (int k = 0; k < 32; ++k)
            if (((arrived >> k) & 1u) && in[k] == in[l]) m |= 1u << k;
          o.out = m;
          break;
        }
        case kWarpSync:
        case kWmma: o.out = 0; break;
        default: o.out = common; break;
      }
    }
  }

  // ---- stalls: no thread is ready
  void stall() {
    int n_warp = 0;
    for (auto& t : threads)
      if (t.state == TS::Warp) ++n_warp;
    if (n_warp == 0 && at_barrier == live && live > 0) {
      release_barrier();
      return;
    }
    if (n_warp > 0) {
      diagnose_warp();
      return;
    }
    fail(where() + ": internal error: no thread can run (" + std::to_string(live) + " live, " +
         std::to_string(at_barrier) + " at a barrier)");
  }

  void release_barrier() {
    const ThreadRec* first = nullptr;
    bool same = true;
    for (auto& t : threads) {
      if (t.state != TS::Barrier) continue;
      if (!first) first = &t;
      else if (t.line != first->line || t.bar_kind != first->bar_kind ||
               std::strcmp(t.file, first->file) != 0)
        same = false;
    }
    if (!same) {
      // Group the threads by where they are.
      std::vector<std::pair<std::string, std::vector<int>>> groups;
      std::vector<int> exited;
      for (auto& t : threads) {
        if (t.state == TS::Done) {
          exited.push_back(t.linear);
          continue;
        }
        const std::string s = std::string(t.what) + " at " + site(t.file, t.line);
        auto it = std::find_if(groups.begin(), groups.end(),
                               [&](const auto& g) { return g.first == s; });
        if (it == groups.end()) groups.push_back({s, {t.linear}});
        else it->second.push_back(t.linear);
      }
      std::ostringstream os;
      os << where() << ": threads wait at different barriers (a __syncthreads() in divergent "
                       "code?); on a GPU this hangs or synchronizes unrelated code:";
      for (auto& g : groups) os << "\n  threads " << ranges(g.second) << " wait at " << g.first;
      if (!exited.empty()) os << "\n  threads " << ranges(exited) << " have exited";
      os << "\n  (thread numbers are linear: x + y*blockDim.x + z*blockDim.x*blockDim.y)";
      fail(os.str());
      return;
    }
    int count = 0;
    for (auto& t : threads)
      if (t.state == TS::Barrier && t.bar_pred) ++count;
    const int kind = first->bar_kind;
    const int result = kind == kBarCount ? count
                       : kind == kBarAnd ? (count == at_barrier ? 1 : 0)
                       : kind == kBarOr  ? (count > 0 ? 1 : 0)
                                         : 0;
    at_barrier = 0;
    for (auto& t : threads) {
      if (t.state != TS::Barrier) continue;
      t.bar_result = result;
      push_ready(t);
    }
  }

  std::string describe(const ThreadRec& o, const ThreadRec& op) const {
    switch (o.state) {
      case TS::Done: return "exited";
      case TS::Barrier: return std::string("wait at ") + o.what + " at " + site(o.file, o.line);
      case TS::Warp:
        if (o.line == op.line && std::strcmp(o.file, op.file) == 0 && o.wkind == op.wkind)
          return "call it with a different mask " + hex(o.mask);
        return std::string("wait at ") + o.what + " at " + site(o.file, o.line) + " (mask " +
               hex(o.mask) + ")";
      default: return "are still running";
    }
  }

  void diagnose_warp() {
    const ThreadRec* op = nullptr;
    for (auto& t : threads)
      if (t.state == TS::Warp) {
        op = &t;
        break;
      }
    const int base = op->warp * 32;
    const unsigned exist = existing_lanes(op->warp);
    std::vector<int> waiting;
    std::vector<std::pair<std::string, std::vector<int>>> missing;
    for (int l = 0; l < 32; ++l) {
      if (!((op->mask >> l) & 1u) || !((exist >> l) & 1u)) continue;
      const ThreadRec& o = threads[base + l];
      if (o.state == TS::Warp && same_op(o, *op)) {
        waiting.push_back(l);
        continue;
      }
      if (o.state == TS::Done) continue;
      const std::string d = describe(o, *op);
      auto it = std::find_if(missing.begin(), missing.end(),
                             [&](const auto& g) { return g.first == d; });
      if (it == missing.end()) missing.push_back({d, {l}});
      else it->second.push_back(l);
    }
    std::ostringstream os;
    os << where() << ": " << op->what << " at " << site(op->file, op->line) << " with mask "
       << hex(op->mask) << " in warp " << op->warp << " can never complete: lanes "
       << ranges(waiting) << " wait there, but";
    bool firstm = true;
    for (auto& g : missing) {
      os << (firstm ? " " : "; ") << "lanes " << ranges(g.second) << " " << g.first;
      firstm = false;
    }
    os << " (lanes named in the mask must all reach the same warp operation; lane l is thread "
          "number 32*warp + l)";
    fail(os.str());
  }

  // ---- one block
  void run_block(uint64_t linear_block) {
    const LaunchSpec& s = *L->spec;
    block.x = static_cast<unsigned>(linear_block % s.grid.x);
    block.y = static_cast<unsigned>((linear_block / s.grid.x) % s.grid.y);
    block.z = static_cast<unsigned>(linear_block / (static_cast<uint64_t>(s.grid.x) * s.grid.y));
    blockIdx = block;
    blockDim = s.block;
    gridDim = s.grid;
    shuffle = L->opt.shuffle_seed != 0;
    rng = L->opt.shuffle_seed * 0x100000001B3ull ^ (L->launch_id << 32) ^ linear_block;
    error.clear();

    // Dynamic shared memory: exactly the launch's size (ASan sees overruns),
    // filled with 0xFF so that reading it before writing shows.
    smem = static_cast<unsigned char*>(::operator new(s.smem, std::align_val_t(128)));  // as SWIN_DYNAMIC_SHARED
    if (s.smem) std::memset(smem, 0xFF, s.smem);

    const unsigned n = L->nthreads;
    for (unsigned i = 0; i < n; ++i) {
      ThreadRec& t = threads[i];
      t.tid.x = i % s.block.x;
      t.tid.y = (i / s.block.x) % s.block.y;
      t.tid.z = i / (s.block.x * s.block.y);
      t.linear = static_cast<int>(i);
      t.warp = static_cast<int>(i / 32);
      t.lane = static_cast<int>(i % 32);
      t.state = TS::Ready;
      t.file = "";
      t.what = "";
      t.line = 0;
      t.fn = nullptr;
      t.async.clear();
      t.async_groups = 0;
      init_fiber(t);
    }
    ready.clear();
    head = 0;
    for (unsigned i = 0; i < n; ++i) ready.push_back(static_cast<int>(i));
    live = static_cast<int>(n);
    at_barrier = 0;

    for (;;) {
      while (error.empty() && has_ready()) resume(threads[pop_ready()]);
      if (!error.empty() || live == 0) break;
      stall();
      if (!error.empty()) break;
    }
    ::operator delete(smem, std::align_val_t(128));
    smem = nullptr;
    if (!error.empty()) L->set_error(error);
  }

  void run() {
    const unsigned n = L->nthreads;
    threads.resize(n);
    const size_t ssize = static_cast<size_t>(std::max(16, L->opt.stack_kb)) * 1024;
    stacks.reserve(n);
    for (unsigned i = 0; i < n; ++i) stacks.push_back(stack_acquire(ssize));
    for (unsigned i = 0; i < n; ++i) threads[i].stack = stacks[i];
    for (;;) {
      if (L->failed.load()) break;
      const uint64_t k = L->next.fetch_add(1);
      if (k >= L->nblocks) break;
      const uint64_t blk = L->order.empty() ? k : L->order[k];
      L->running_block.store(blk);
      run_block(blk);
    }
    stack_release(stacks);
  }
};

thread_local Worker* tls_worker = nullptr;

Worker& require_worker(const char* what) {
  Worker* w = tls_worker;
  if (!w || !w->current)
    throw Error(std::string("swin_harness: ") + what +
                " called outside a kernel launched through SWIN_LAUNCH_KERNEL");
  return *w;
}

void fiber_entry(ThreadRec* t) {
  Worker* w = tls_worker;
#if SWIN_HARNESS_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &w->sched_bottom, &w->sched_size);
#endif
  try {
    w->L->spec->invoke(w->L->spec->ctx);
    t->state = TS::Done;
  } catch (const std::exception& e) {
    w->fail(w->where() + ", " + w->thread_name(*t) + ": exception in the kernel: " + e.what());
    t->state = TS::Failed;
  } catch (...) {
    w->fail(w->where() + ", " + w->thread_name(*t) + ": unknown exception in the kernel");
    t->state = TS::Failed;
  }
  --w->live;
  if (t->state == TS::Done && w->error.empty()) {
    // Lanes of this warp may be waiting for this one only.
    const int base = t->warp * 32;
    for (int l = 0; l < 32 && base + l < static_cast<int>(w->threads.size()); ++l) {
      ThreadRec& o = w->threads[base + l];
      if (o.state == TS::Warp) w->try_complete(o, nullptr);
    }
  }
  w->yield(*t);
  std::abort();  // a finished fiber is never resumed
}

std::string clean_name(const char* name) {
  std::string s = name ? name : "<kernel>";
  while (s.size() >= 2 && s.front() == '(' && s.back() == ')') s = s.substr(1, s.size() - 2);
  return s;
}

std::mutex g_serial_mu;

#if SWIN_HARNESS_ASAN
// When AddressSanitizer reports an error inside a kernel, say which kernel,
// block and thread were running (the report's stack names the function).
void asan_death_callback() {
  Worker* w = tls_worker;
  if (w && w->current && w->L)
    std::fprintf(stderr, "%s, %s: AddressSanitizer error inside the kernel (report above)\n",
                 w->where().c_str(), w->thread_name(*w->current).c_str());
}
const int g_asan_cb = (__asan_set_death_callback(asan_death_callback), 0);
#endif

}  // namespace

// ---------------------------------------------------------------------------
// Fiber-side API.
int block_sync(int kind, int pred, const char* file, int line) {
  Worker& w = require_worker("__syncthreads");
  ThreadRec& t = *w.current;
  t.state = TS::Barrier;
  t.bar_kind = kind;
  t.bar_pred = pred;
  t.file = file;
  t.line = line;
  t.what = kind == kBarCount ? "__syncthreads_count()"
           : kind == kBarAnd ? "__syncthreads_and()"
           : kind == kBarOr  ? "__syncthreads_or()"
                             : "__syncthreads()";
  ++w.at_barrier;
  w.yield(t);
  return t.bar_result;
}

uint64_t warp_op(int kind, unsigned mask, uint64_t value, int param, int width, const char* what,
                 const char* file, int line) {
  Worker& w = require_worker(what);
  ThreadRec& t = *w.current;
  if (!((mask >> t.lane) & 1u))
    kernel_fail(std::string(what) + " at " + site(file, line) + " with mask " + hex(mask) +
                ", which does not include the calling lane " + std::to_string(t.lane) +
                " (undefined behaviour in CUDA)");
  if (is_shfl(kind) && (width < 1 || width > 32 || (width & (width - 1)) != 0))
    kernel_fail(std::string(what) + " at " + site(file, line) + ": width " +
                std::to_string(width) + " is not a power of two in [1, 32]");
  t.state = TS::Warp;
  t.wkind = kind;
  t.mask = mask;
  t.in = value;
  t.param = param;
  t.width = width;
  t.fn = nullptr;
  t.file = file;
  t.line = line;
  t.what = what;
  if (!w.try_complete(t, &t)) w.yield(t);
  return t.out;
}

void warp_collective(CollectiveFn fn, unsigned mask, void* data, const char* what, const char* file, int line) {
  Worker& w = require_worker(what);
  ThreadRec& t = *w.current;
  if (!((mask >> t.lane) & 1u))
    kernel_fail(std::string(what) + " at " + site(file, line) + " with mask " + hex(mask) +
                ", which does not include the calling lane " + std::to_string(t.lane));
  t.state = TS::Warp;
  t.wkind = kCollective;
  t.mask = mask;
  t.in = static_cast<uint64_t>(reinterpret_cast<uintptr_t>(data));
  t.param = 0;
  t.width = 32;
  t.fn = fn;
  t.file = file;
  t.line = line;
  t.what = what;
  if (!w.try_complete(t, &t)) w.yield(t);
  if (!w.error.empty()) {  // the operation failed: this lane goes no further
    t.state = TS::Failed;
    --w.live;
    w.yield(t);
    std::abort();  // never resumed
  }
}

void async_copy(void* dst, const void* src, int bytes, int src_bytes, const char* file, int line) {
  Worker& w = require_worker("cp.async");
  ThreadRec& t = *w.current;
  const std::string at = std::string("cp.async at ") + site(file, line);
  if (bytes != 4 && bytes != 8 && bytes != 16) kernel_fail(at + ": copy size " + std::to_string(bytes) + " is not 4, 8 or 16");
  if (src_bytes < 0 || src_bytes > bytes)
    kernel_fail(at + ": source size " + std::to_string(src_bytes) + " outside [0, " + std::to_string(bytes) + "]");
  if (reinterpret_cast<uintptr_t>(dst) % bytes != 0 || (src_bytes > 0 && reinterpret_cast<uintptr_t>(src) % bytes != 0))
    kernel_fail(at + ": addresses not " + std::to_string(bytes) + "-byte aligned");
  const unsigned char* lo = w.smem;
  const size_t size = w.L->spec->smem;
  const unsigned char* p = static_cast<const unsigned char*>(dst);
  if (p < lo || p + bytes > lo + size)
    kernel_fail(at + ": destination is not in the block's dynamic shared memory");
  // Until a wait retires it, the destination holds nothing a thread may read.
  std::memset(dst, 0xFF, static_cast<size_t>(bytes));
  t.async.push_back({dst, src, bytes, src_bytes, -1});
}

void async_commit() {
  Worker& w = require_worker("cp.async.commit_group");
  ThreadRec& t = *w.current;
  for (auto& c : t.async)
    if (c.group < 0) c.group = t.async_groups;
  ++t.async_groups;
}

void async_wait(int pending_groups) {
  Worker& w = require_worker("cp.async.wait_group");
  ThreadRec& t = *w.current;
  const int64_t last_done = t.async_groups - 1 - pending_groups;  // groups <= this complete
  size_t keep = 0;
  for (size_t i = 0; i < t.async.size(); ++i) {
    const auto& c = t.async[i];
    if (c.group >= 0 && c.group <= last_done) {
      if (c.src_bytes > 0) std::memcpy(c.dst, c.src, static_cast<size_t>(c.src_bytes));
      if (c.src_bytes < c.bytes)
        std::memset(static_cast<unsigned char*>(c.dst) + c.src_bytes, 0, static_cast<size_t>(c.bytes - c.src_bytes));
    } else {
      t.async[keep++] = c;
    }
  }
  t.async.resize(keep);
}

unsigned active_mask() {
  Worker& w = require_worker("__activemask");
  const ThreadRec& t = *w.current;
  const int base = t.warp * 32;
  unsigned m = 0;
  for (int l = 0; l < 32 && base + l < static_cast<int>(w.threads.size()); ++l) {
    const TS s = w.threads[base + l].state;
    if (s != TS::Done && s != TS::Failed) m |= 1u << l;
  }
  return m;
}

void* dynamic_smem() { return require_worker("dynamic shared memory").smem; }
size_t dynamic_smem_size() { return require_worker("dynamic shared memory").L->spec->smem; }
int launch_arch() { return require_worker("the emulated device's arch").L->opt.arch; }

[[noreturn]] void kernel_fail(const std::string& msg) {
  Worker* w = tls_worker;
  if (!w || !w->current) throw Error("swin_harness: " + msg);
  ThreadRec& t = *w->current;
  w->fail(w->where() + ", " + w->thread_name(t) + ": " + msg);
  t.state = TS::Failed;
  --w->live;
  w->yield(t);
  std::abort();  // never resumed
}

// ---------------------------------------------------------------------------
// Launch.
void run_launch(const LaunchSpec& spec) {
  if (tls_worker && tls_worker->current)
    kernel_fail("kernel launch from inside a kernel (dynamic parallelism) is not supported");
  const Options opt = read_options();
  const DeviceLimits dev = limits_for(opt.arch);
  const std::string name = clean_name(spec.name);
  auto bad = [&](const std::string& why) {
    throw Error("swin_harness: launch of kernel " + name + " with grid " +
                fmt3(spec.grid.x, spec.grid.y, spec.grid.z) + ", block " +
                fmt3(spec.block.x, spec.block.y, spec.block.z) + ", " +
                std::to_string(spec.smem) + " bytes of dynamic shared memory fails on a GPU: " +
                why);
  };
  if (spec.grid.x == 0 || spec.grid.y == 0 || spec.grid.z == 0)
    bad("a grid dimension is 0 (cudaErrorInvalidConfiguration; skip the launch for empty "
        "tensors)");
  if (spec.grid.x > 2147483647u || spec.grid.y > 65535u || spec.grid.z > 65535u)
    bad("grid dimensions are limited to (2^31-1, 65535, 65535)");
  if (spec.block.x == 0 || spec.block.y == 0 || spec.block.z == 0)
    bad("a block dimension is 0 (cudaErrorInvalidConfiguration)");
  const uint64_t nthreads = static_cast<uint64_t>(spec.block.x) * spec.block.y * spec.block.z;
  if (spec.block.x > 1024 || spec.block.y > 1024 || spec.block.z > 64 || nthreads > 1024)
    bad("blocks are limited to 1024 threads and (1024, 1024, 64)");
  size_t smem_limit = kDefaultSmemLimit;
  {
    std::lock_guard<std::mutex> lk(g_attr_mu);
    auto it = g_max_dyn_smem.find(spec.func);
    if (it != g_max_dyn_smem.end()) smem_limit = std::max<size_t>(smem_limit, it->second);
  }
  if (spec.smem > smem_limit) {
    if (spec.smem <= static_cast<size_t>(dev.smem_optin))
      bad("more than " + std::to_string(smem_limit) +
          " bytes of dynamic shared memory needs cudaFuncSetAttribute(kernel, "
          "cudaFuncAttributeMaxDynamicSharedMemorySize, bytes) before the launch");
    bad("the " + std::string(dev.name) + " allows at most " + std::to_string(dev.smem_optin) +
        " bytes of shared memory per block");
  }

  {
    std::lock_guard<std::mutex> lk(g_log_mu);
    if (g_log_on)
      g_log.push_back(LaunchRecord{name, {spec.grid.x, spec.grid.y, spec.grid.z},
                                   {spec.block.x, spec.block.y, spec.block.z}, spec.smem});
  }
  const uint64_t nblocks = static_cast<uint64_t>(spec.grid.x) * spec.grid.y * spec.grid.z;
  LaunchState L;
  L.spec = &spec;
  L.name = name;
  L.opt = opt;
  L.launch_id = g_launches.fetch_add(1) + 1;
  L.nthreads = static_cast<unsigned>(nthreads);
  L.nblocks = nblocks;
  if (opt.shuffle_seed != 0 && nblocks > 1 && nblocks <= (1u << 24)) {
    L.order.resize(nblocks);
    for (uint64_t i = 0; i < nblocks; ++i) L.order[i] = i;
    uint64_t s = opt.shuffle_seed ^ (L.launch_id * 0x9E3779B97F4A7C15ull);
    for (uint64_t i = nblocks - 1; i > 0; --i) std::swap(L.order[i], L.order[splitmix64(s) % (i + 1)]);
  }

#if defined(SWIN_HARNESS_SERIAL_BLOCKS)
  // Static __shared__ arrays are plain statics: one block at a time, process-wide.
  std::lock_guard<std::mutex> serial(g_serial_mu);
  const int nworkers = 1;
#else
  int nworkers = opt.workers > 0 ? opt.workers
                                 : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  nworkers = static_cast<int>(std::min<uint64_t>(static_cast<uint64_t>(nworkers), nblocks));
#endif

  auto work = [&L]() {
    Worker w;
    w.L = &L;
    Worker* prev = tls_worker;
    tls_worker = &w;
    try {
      w.run();
    } catch (const std::exception& e) {
      L.set_error(e.what());
    }
    tls_worker = prev;
  };
  // Watchdog: fibers are cooperative, so a kernel that spins (waiting for
  // another block, an infinite loop) never returns; fail loudly instead.
  std::mutex wd_mu;
  std::condition_variable wd_cv;
  bool done = false;
  std::thread watchdog;
  if (opt.timeout_s > 0) {
    watchdog = std::thread([&] {
      std::unique_lock<std::mutex> lk(wd_mu);
      if (wd_cv.wait_for(lk, std::chrono::seconds(opt.timeout_s), [&] { return done; })) return;
      const uint64_t b = L.running_block.load();
      std::fprintf(stderr,
                   "swin_harness: kernel %s (grid %s, block %s) still running after %d s "
                   "(SWIN_HARNESS_TIMEOUT) in block %s: a spin-wait on another block or an "
                   "endless loop? Aborting.\n",
                   L.name.c_str(), fmt3(spec.grid.x, spec.grid.y, spec.grid.z).c_str(),
                   fmt3(spec.block.x, spec.block.y, spec.block.z).c_str(), opt.timeout_s,
                   fmt3(static_cast<unsigned>(b % spec.grid.x),
                        static_cast<unsigned>((b / spec.grid.x) % spec.grid.y),
                        static_cast<unsigned>(b / (static_cast<uint64_t>(spec.grid.x) * spec.grid.y)))
                       .c_str());
      std::fflush(stderr);
      std::abort();
    });
  }
  std::vector<std::thread> pool;
  for (int i = 1; i < nworkers; ++i) {
    try {
      pool.emplace_back(work);
    } catch (...) {
      break;  // fewer workers
    }
  }
  work();
  for (auto& th : pool) th.join();
  if (watchdog.joinable()) {
    {
      std::lock_guard<std::mutex> lk(wd_mu);
      done = true;
    }
    wd_cv.notify_all();
    watchdog.join();
  }
  if (L.failed.load()) throw Error(L.error);
}

// ---------------------------------------------------------------------------
// Emulated runtime.
int func_set_attribute(const void* func, int attr, int value) {
  for (int n = g_attr_failures.load(); n > 0;)
    if (g_attr_failures.compare_exchange_weak(n, n - 1)) return static_cast<int>(cudaErrorInvalidValue);
  const DeviceLimits dev = limits_for(read_options().arch);
  if (attr == static_cast<int>(cudaFuncAttributeMaxDynamicSharedMemorySize)) {
    if (value < 0 || value > dev.smem_optin)
      throw Error("swin_harness: cudaFuncSetAttribute(MaxDynamicSharedMemorySize, " +
                  std::to_string(value) + ") fails on the " + dev.name + ": at most " +
                  std::to_string(dev.smem_optin) + " bytes");
    std::lock_guard<std::mutex> lk(g_attr_mu);
    g_max_dyn_smem[func] = value;
  }
  return static_cast<int>(cudaSuccess);
}

int device_attribute(int* value, int attr, int device) {
  const DeviceLimits dev = limits_for(read_options().arch);
  if (device != 0) return static_cast<int>(cudaErrorInvalidDevice);
  switch (static_cast<cudaDeviceAttr>(attr)) {
    case cudaDevAttrMultiProcessorCount: *value = dev.sms; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = dev.smem_optin; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = static_cast<int>(kDefaultSmemLimit); break;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor: *value = dev.smem_per_sm; break;
    case cudaDevAttrMaxThreadsPerBlock: *value = 1024; break;
    case cudaDevAttrMaxThreadsPerMultiProcessor: *value = dev.threads_per_sm; break;
    case cudaDevAttrWarpSize: *value = 32; break;
    case cudaDevAttrComputeCapabilityMajor: *value = dev.arch / 10; break;
    case cudaDevAttrComputeCapabilityMinor: *value = dev.arch % 10; break;
    case cudaDevAttrMaxBlockDimX:
    case cudaDevAttrMaxBlockDimY: *value = 1024; break;
    case cudaDevAttrMaxBlockDimZ: *value = 64; break;
    case cudaDevAttrMaxGridDimX: *value = 2147483647; break;
    case cudaDevAttrMaxGridDimY:
    case cudaDevAttrMaxGridDimZ: *value = 65535; break;
    case cudaDevAttrMaxRegistersPerBlock: *value = 65536; break;
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
  return static_cast<int>(cudaSuccess);
}

void device_properties(cudaDeviceProp* prop) {
  const DeviceLimits dev = limits_for(read_options().arch);
  std::memset(prop, 0, sizeof(*prop));
  std::snprintf(prop->name, sizeof(prop->name), "swin_harness emulated %s", dev.name);
  prop->major = dev.arch / 10;
  prop->minor = dev.arch % 10;
  prop->multiProcessorCount = dev.sms;
  prop->sharedMemPerBlock = kDefaultSmemLimit;
  prop->sharedMemPerBlockOptin = static_cast<size_t>(dev.smem_optin);
  prop->sharedMemPerMultiprocessor = static_cast<size_t>(dev.smem_per_sm);
  prop->maxThreadsPerBlock = 1024;
  prop->maxThreadsPerMultiProcessor = dev.threads_per_sm;
  prop->warpSize = 32;
  prop->regsPerBlock = 65536;
  prop->maxThreadsDim[0] = 1024;
  prop->maxThreadsDim[1] = 1024;
  prop->maxThreadsDim[2] = 64;
  prop->maxGridSize[0] = 2147483647;
  prop->maxGridSize[1] = 65535;
  prop->maxGridSize[2] = 65535;
}

}  // namespace detail

void set_options(const Options& o) {
  std::lock_guard<std::mutex> lk(detail::g_opt_mu);
  detail::g_opt = o;
  detail::g_opt_override = true;
}
void clear_options() {
  std::lock_guard<std::mutex> lk(detail::g_opt_mu);
  detail::g_opt_override = false;
}
Options current_options() { return detail::read_options(); }
void inject_attribute_failures(int n) { detail::g_attr_failures.store(n < 0 ? 0 : n); }
uint64_t launch_count() { return detail::g_launches.load(); }

void start_launch_log() {
  std::lock_guard<std::mutex> lk(detail::g_log_mu);
  detail::g_log.clear();
  detail::g_log_on = true;
}
std::vector<LaunchRecord> stop_launch_log() {
  std::lock_guard<std::mutex> lk(detail::g_log_mu);
  detail::g_log_on = false;
  std::vector<LaunchRecord> out;
  out.swap(detail::g_log);
  return out;
}

}  // namespace swin_harness

// ---------------------------------------------------------------------------
// PTX mma.sync / ldmatrix emulation (see cuda_harness.h).
namespace swin_harness {
namespace ptx {
namespace {

struct MmaLane {
  const uint32_t* a;
  const uint32_t* b;
  const float* c;
  float* d;
};

template <MmaIn kIn>
float b16_to_float(uint16_t bits) {
  if constexpr (kIn == MmaIn::kBF16) {
    const uint32_t u = static_cast<uint32_t>(bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  } else {
    return detail::half_bits_to_float(bits);
  }
}

const char* need_full_warp(unsigned arrived) {
  if (arrived == 0xffffffffu) return nullptr;
  thread_local std::string msg;
  std::vector<int> missing;
  for (int l = 0; l < 32; ++l)
    if (!((arrived >> l) & 1u)) missing.push_back(l);
  msg = "lanes " + detail::ranges(missing) + " have exited or do not exist; the .aligned instruction needs all 32 lanes";
  return msg.c_str();
}

// ldmatrix / stmatrix: lane l's row address p must be 16-byte aligned and its
// 16 bytes inside the block's dynamic shared memory [lo, lo + size).
const char* row_address_error(const unsigned char* p, const unsigned char* lo, size_t size, int l) {
  thread_local std::string msg;
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0) {
    msg = "the row address of lane " + std::to_string(l) + " is not 16-byte aligned";
    return msg.c_str();
  }
  if (p < lo || p + 16 > lo + size) {
    msg = "the row address of lane " + std::to_string(l) + " is not in the block's dynamic shared memory";
    return msg.c_str();
  }
  return nullptr;
}

// m16n8k16, .row A / .col B, f32 accumulators (PTX ISA, "Matrix Fragments for
// mma.m16n8k16 with floating point type"), with g = lane >> 2, t = lane & 3:
//   A: a0 = (g, 2t..2t+1), a1 = (g+8, 2t..2t+1), a2 = (g, 2t+8..2t+9), a3 = (g+8, 2t+8..2t+9)
//   B: b0 = (k 2t..2t+1, n g), b1 = (k 2t+8..2t+9, n g)
//   C, D: c0 = (g, 2t), c1 = (g, 2t+1), c2 = (g+8, 2t), c3 = (g+8, 2t+1)
// (each .b32 register holds two 16-bit elements, the lower column / k in the low half).
template <MmaIn kIn>
const char* mma_fn(void* const* lanes, unsigned arrived) {
  if (const char* e = need_full_warp(arrived)) return e;
  float A[16][16], B[16][8], C[16][8];
  for (int l = 0; l < 32; ++l) {
    const MmaLane& L = *static_cast<const MmaLane*>(lanes[l]);
    const int g = l >> 2, t = l & 3;
    for (int r = 0; r < 4; ++r) {
      const int row = g + ((r & 1) ? 8 : 0), col = 2 * t + ((r & 2) ? 8 : 0);
      A[row][col] = b16_to_float<kIn>(static_cast<uint16_t>(L.a[r] & 0xffffu));
      A[row][col + 1] = b16_to_float<kIn>(static_cast<uint16_t>(L.a[r] >> 16));
    }
    for (int r = 0; r < 2; ++r) {
      const int k = 2 * t + (r ? 8 : 0);
      B[k][g] = b16_to_float<kIn>(static_cast<uint16_t>(L.b[r] & 0xffffu));
      B[k + 1][g] = b16_to_float<kIn>(static_cast<uint16_t>(L.b[r] >> 16));
    }
    for (int r = 0; r < 4; ++r) C[g + ((r & 2) ? 8 : 0)][2 * t + (r & 1)] = L.c[r];
  }
  float D[16][8];
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 8; ++j) {
      float acc = C[i][j];
      for (int k = 0; k < 16; ++k) acc += A[i][k] * B[k][j];  // exact products, float sums in k order
      D[i][j] = acc;
    }
  for (int l = 0; l < 32; ++l) {
    const MmaLane& L = *static_cast<const MmaLane*>(lanes[l]);
    const int g = l >> 2, t = l & 3;
    for (int r = 0; r < 4; ++r) L.d[r] = D[g + ((r & 2) ? 8 : 0)][2 * t + (r & 1)];
  }
  return nullptr;
}

struct LdsmLane {
  const void* row;
  uint32_t* r;
};

template <int kNum, bool kTrans>
const char* ldmatrix_fn(void* const* lanes, unsigned arrived) {
  if (const char* e = need_full_warp(arrived)) return e;
  const unsigned char* lo = static_cast<const unsigned char*>(detail::dynamic_smem());
  const size_t size = detail::dynamic_smem_size();
  uint16_t M[kNum][8][8];
  for (int m = 0; m < kNum; ++m)
    for (int i = 0; i < 8; ++i) {
      const int l = 8 * m + i;
      const unsigned char* p = static_cast<const unsigned char*>(static_cast<const LdsmLane*>(lanes[l])->row);
      if (const char* e = row_address_error(p, lo, size, l)) return e;
      std::memcpy(M[m][i], p, 16);
    }
  for (int l = 0; l < 32; ++l) {
    uint32_t* r = static_cast<const LdsmLane*>(lanes[l])->r;
    const int row = l >> 2, col = 2 * (l & 3);
    for (int m = 0; m < kNum; ++m) {
      const uint16_t e0 = kTrans ? M[m][col][row] : M[m][row][col];
      const uint16_t e1 = kTrans ? M[m][col + 1][row] : M[m][row][col + 1];
      r[m] = static_cast<uint32_t>(e0) | (static_cast<uint32_t>(e1) << 16);
    }
  }
  return nullptr;
}

struct StsmLane {
  void* row;
  const uint32_t* r;
};

template <int kNum>
const char* stmatrix_fn(void* const* lanes, unsigned arrived) {
  if (const char* e = need_full_warp(arrived)) return e;
  unsigned char* lo = static_cast<unsigned char*>(detail::dynamic_smem());
  const size_t size = detail::dynamic_smem_size();
  uint16_t M[kNum][8][8];
  for (int l = 0; l < 32; ++l) {
    const uint32_t* r = static_cast<const StsmLane*>(lanes[l])->r;
    const int row = l >> 2, col = 2 * (l & 3);
    for (int m = 0; m < kNum; ++m) {
      M[m][row][col] = static_cast<uint16_t>(r[m] & 0xffffu);
      M[m][row][col + 1] = static_cast<uint16_t>(r[m] >> 16);
    }
  }
  for (int m = 0; m < kNum; ++m)
    for (int i = 0; i < 8; ++i) {
      const int l = 8 * m + i;
      unsigned char* p = static_cast<unsigned char*>(static_cast<const StsmLane*>(lanes[l])->row);
      if (const char* e = row_address_error(p, lo, size, l)) return e;
    }
  for (int m = 0; m < kNum; ++m)
    for (int i = 0; i < 8; ++i)
      std::memcpy(static_cast<const StsmLane*>(lanes[8 * m + i])->row, M[m][i], 16);
  return nullptr;
}

}  // namespace

void mma_m16n8k16(MmaIn type, float* d, const uint32_t* a, const uint32_t* b, const float* c, const char* file,
                  int line) {
  float out[4];
  MmaLane me{a, b, c, out};
  if (type == MmaIn::kBF16)
    detail::warp_collective(&mma_fn<MmaIn::kBF16>, 0xffffffffu, &me, "mma.sync.aligned.m16n8k16 (bf16)", file, line);
  else
    detail::warp_collective(&mma_fn<MmaIn::kF16>, 0xffffffffu, &me, "mma.sync.aligned.m16n8k16 (f16)", file, line);
  std::memcpy(d, out, sizeof out);
}

void ldmatrix(int num, bool trans, uint32_t* r, const void* row, const char* file, int line) {
  uint32_t out[4];
  LdsmLane me{row, out};
  detail::CollectiveFn fn = nullptr;
  const char* what = "";
  switch (num * 2 + (trans ? 1 : 0)) {
    case 2: fn = &ldmatrix_fn<1, false>; what = "ldmatrix.sync.aligned.m8n8.x1.shared.b16"; break;
    case 3: fn = &ldmatrix_fn<1, true>; what = "ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16"; break;
    case 4: fn = &ldmatrix_fn<2, false>; what = "ldmatrix.sync.aligned.m8n8.x2.shared.b16"; break;
    case 5: fn = &ldmatrix_fn<2, true>; what = "ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16"; break;
    case 8: fn = &ldmatrix_fn<4, false>; what = "ldmatrix.sync.aligned.m8n8.x4.shared.b16"; break;
    case 9: fn = &ldmatrix_fn<4, true>; what = "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16"; break;
    default: detail::kernel_fail("ldmatrix: .num must be x1, x2 or x4");
  }
  detail::warp_collective(fn, 0xffffffffu, &me, what, file, line);
  std::memcpy(r, out, sizeof(uint32_t) * static_cast<size_t>(num));
}

int device_arch() { return detail::launch_arch(); }

void stmatrix(int num, const uint32_t* r, void* row, const char* file, int line) {
  if (device_arch() < 90)
    detail::kernel_fail("stmatrix needs sm_90 or newer; the emulated device (SWIN_HARNESS_ARCH) is sm_" +
                        std::to_string(device_arch()));
  if (num != 4) detail::kernel_fail("stmatrix: only .x4 is emulated");
  StsmLane me{row, r};
  detail::warp_collective(&stmatrix_fn<4>, 0xffffffffu, &me, "stmatrix.sync.aligned.m8n8.x4.shared.b16", file, line);
}

}  // namespace ptx
}  // namespace swin_harness
