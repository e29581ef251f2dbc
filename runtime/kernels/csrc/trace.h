// The kernel's own timeline, for bench/kernel_trace.py: built with SAS_KERNEL_TRACE defined
// (SAS_KERNEL_TRACE=1 in sas_runtime.kernels.build's environment), the producer threads and the
// first thread of each consumer warpgroup write the SM's clock at fixed points of every tile
// into params.trace; otherwise every call here compiles to nothing and params.trace is unused.
#pragma once

#include <cstdint>

namespace sas {

// One row of kTraceEvents int64 per (CTA, tile the CTA took, up to kTraceTiles), then one
// header row per CTA. A slot left 0 was not reached (an empty tile has only its taken events).
constexpr int kTraceTiles = 256;
constexpr int kTraceEvents = 24;
enum TraceEvent : int {
  kTraceProducerPosted = 0,  // the tile is posted: counter, order and block counts are read
  kTraceProducerQIssued = 1,
  kTraceProducerK0Issued = 2,
  kTraceProducerLastVIssued = 3,
  kTraceBlocks = 4,  // not a clock: the tile's block count
  // A consumer warpgroup's events: kTraceConsumer + kTraceConsumerStride * warpgroup + event.
  kTraceConsumer = 5,
  kTraceConsumerStride = 8,
  kTraceTaken = 0,           // the posted tile is read
  kTraceQReady = 1,          // Q has landed
  kTraceK0Ready = 2,         // the first K block has landed
  kTraceLoopDone = 3,        // the last P V has landed (the carried kernel: the last S)
  kTraceStored = 4,          // the output's stores are issued (the plain kernel only)
  kTraceFirstBlockDone = 5,  // the first block's P is ready, the loop over the rest begins
  kTraceNormalised = 6,      // the output is normalised (the plain kernel only)
  kTraceOutputInShared = 7,  // the output tile is in shared memory, its store not yet issued
};
// The header row: the clock and the global timer (ns) when the CTA starts and when its
// consumers finish, and the SM it ran on.
enum TraceHeader : int {
  kTraceStartClock = 0,
  kTraceStartNanoseconds = 1,
  kTraceEndClock = 2,
  kTraceEndNanoseconds = 3,
  kTraceSm = 4,
};

#ifdef __CUDACC__
__device__ __forceinline__ int64_t* trace_row(int64_t* trace, int row) {
  return trace + (int64_t(blockIdx.x) * (kTraceTiles + 1) + row) * kTraceEvents;
}

// Writes `value` (the SM's clock by default) into slot `event` of the CTA's tile `tile`.
__device__ __forceinline__ void trace_event([[maybe_unused]] int64_t* trace,
                                            [[maybe_unused]] int tile,
                                            [[maybe_unused]] int event,
                                            [[maybe_unused]] int64_t value = -1) {
#ifdef SAS_KERNEL_TRACE
  if (trace != nullptr && tile < kTraceTiles) {
    trace_row(trace, tile)[event] = value < 0 ? int64_t(clock64()) : value;
  }
#endif
}

// The header's start (`end` false) or end clock and global timer; the start also the SM.
__device__ __forceinline__ void trace_header([[maybe_unused]] int64_t* trace,
                                             [[maybe_unused]] bool end) {
#ifdef SAS_KERNEL_TRACE
  if (trace == nullptr) {
    return;
  }
  uint64_t nanoseconds;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(nanoseconds));
  int64_t* header = trace_row(trace, kTraceTiles);
  header[end ? kTraceEndClock : kTraceStartClock] = int64_t(clock64());
  header[end ? kTraceEndNanoseconds : kTraceStartNanoseconds] = int64_t(nanoseconds);
  if (!end) {
    uint32_t sm;
    asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
    header[kTraceSm] = sm;
  }
#endif
}
#endif

}  // namespace sas
