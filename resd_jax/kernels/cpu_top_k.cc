// The ids of each row's k largest entries, for the CPU, called from JAX through the XLA FFI
// (resd_jax/kernels/cpu_top_k.py). Same result as jax.lax.top_k's ids: values in descending order, ties by
// the lower index first (rows without NaN).
//
// XLA:CPU's top_k costs ~13 us per row plus ~2 ns per entry; the loss asks it for the top 100 of 512 rows of
// 32k logits per chunk, twice. Here one pass over a row keeps a candidate buffer of at most 2k entries: the
// first k entries go in unconditionally, after that an entry goes in only if it is larger than the k-th
// largest candidate (the threshold), compared 16 at a time; when the buffer is full, it is cut back to the best
// k and the threshold rises. Entries equal to the threshold that come later have higher indices, so they
// rank below every candidate with that value and can be skipped.
//
//   x    [R, V] float32
//   ids  [R, k] int32

#include <algorithm>
#include <cstdint>
#include <vector>

#include "ffi_parallel.h"
#include "xla/ffi/api/ffi.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#define RESD_TOPK_SIMD 1
#else
#define RESD_TOPK_SIMD 0
#endif

namespace ffi = xla::ffi;

namespace {

struct Entry {
  float value;
  int32_t index;
};

// Order of jax.lax.top_k: larger value first, then lower index.
inline bool before(const Entry& a, const Entry& b) {
  return a.value > b.value || (a.value == b.value && a.index < b.index);
}

// Keep the best k of buf[0..n) in buf[0..k); returns the k-th value (the new threshold).
inline float cut(std::vector<Entry>& buf, int64_t n, int64_t k) {
  std::nth_element(buf.begin(), buf.begin() + (k - 1), buf.begin() + n, before);
  return buf[k - 1].value;
}

void row_top_k(const float* x, int64_t v, int64_t k, std::vector<Entry>& buf, int32_t* out) {
  const int64_t cap = static_cast<int64_t>(buf.size());
  int64_t n = 0;
  for (; n < k; ++n) buf[n] = Entry{x[n], static_cast<int32_t>(n)};
  float tau = std::min_element(buf.begin(), buf.begin() + k, [](const Entry& a, const Entry& b) {
                return a.value < b.value;
              })->value;
  int64_t j = k;
  auto push = [&](int64_t idx) {
    if (n == cap) {
      tau = cut(buf, n, k);
      n = k;
    }
    if (x[idx] > tau) buf[n++] = Entry{x[idx], static_cast<int32_t>(idx)};
  };
#if RESD_TOPK_SIMD
  for (; j < k + ((v - k) & ~int64_t{15}); j += 16) {
    __mmask16 m = _mm512_cmp_ps_mask(_mm512_loadu_ps(x + j), _mm512_set1_ps(tau), _CMP_GT_OQ);
    while (m) {
      int bit = __builtin_ctz(m);
      m &= m - 1;
      push(j + bit);
    }
  }
#endif
  for (; j < v; ++j)
    if (x[j] > tau) push(j);
  std::partial_sort(buf.begin(), buf.begin() + k, buf.begin() + n, before);
  for (int64_t i = 0; i < k; ++i) out[i] = buf[i].index;
}

constexpr int64_t kRowsPerUnit = 8;

ffi::Error TopK(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, int64_t k, ffi::ResultBuffer<ffi::S32> ids) {
  auto dims = x.dimensions();
  if (dims.size() < 1) return ffi::Error::InvalidArgument("cpu top_k: x needs a last axis");
  const int64_t v = dims.back();
  if (k < 1 || k > v) return ffi::Error::InvalidArgument("cpu top_k: k must be in [1, V]");
  const int64_t rows = v ? x.element_count() / v : 0;
  const float* xp = x.typed_data();
  int32_t* op = ids->typed_data();
  const int64_t units = (rows + kRowsPerUnit - 1) / kRowsPerUnit;
  resd::parallel_units(pool, units, [&](int64_t u) {
    std::vector<Entry> buf(static_cast<size_t>(std::max<int64_t>(2 * k, k + 64)));
    for (int64_t r = u * kRowsPerUnit; r < std::min(rows, (u + 1) * kRowsPerUnit); ++r)
      row_top_k(xp + r * v, v, k, buf, op + r * k);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(ResdCpuTopK, TopK,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("k")
                                  .Ret<ffi::Buffer<ffi::S32>>());

// 1 when this build has the AVX-512 code path; the library only uses builds that do.
extern "C" int ResdCpuTopKSimd() { return RESD_TOPK_SIMD; }
