// Fused causal attention for the CPU, called from JAX through the XLA FFI (resd_jax/kernels/cpu_attention.py).
//
// XLA:CPU runs blocked attention as separate ops over each block's float32 scores (the QK^T matmul, the mask,
// the softmax, the PV matmul), so attention ran at a fifth of the rate of the model's MLP matmuls (see
// bench/RESULTS.md). Here one (sequence, KV head) pair at a time, a tile of query rows computes its scores,
// softmax and output while the scores are still in L1/L2, with bf16 inputs and float32 accumulation.
//
// Layouts (row-major), all for one call:
//   q      [B, Tq, KVH, G, Dh] bf16, already scaled by 1/sqrt(Dh); query t sits at position q_offset + t
//   k, v   [B, T, KVH, Dh] bf16 (T = q_offset + Tq)
//   mask   [B, T] bool, false = padding key
//   out    [B, Tq, KVH, G, Dh] float32
//   lse    [B, KVH, Tq, G] float32: each row's log-sum-exp of its masked scores (kept for the backward)
// Backward: q, k, v, mask, out, lse and dout [B, Tq, KVH, G, Dh] float32 -> dq (like q), dk, dv (like k)
// float32. Dh is 64, 128, 192 or 256 (slices of 64 in the sums over keys).
//
// The inner products use pairs of bf16 values: with AVX512-BF16, `vdpbf16ps` multiplies 16 pairs and adds
// them into 16 float32 lanes. Without it, the same code runs on a plain 16-float vector type (correct, slower).
// A query row that sees no real key (padding before a row's first token) gets zeros and lse = kNeg, and the
// backward gives it no gradient; such rows are padding themselves and their outputs are never used.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "ffi_parallel.h"
#include "xla/ffi/api/ffi.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512BF16__)
#include <immintrin.h>
#define RESD_BF16_SIMD 1
#else
#define RESD_BF16_SIMD 0
#endif

namespace ffi = xla::ffi;

namespace {

constexpr float kNeg = -1e30f;  // masked score: exp(kNeg - m) is 0 for any row that has a real key
constexpr int kKeyAlign = 64;   // keys are packed and scored in multiples of this
constexpr int kMaxHeadDim = 256;  // head_dim: a multiple of 64 up to this

// ---------------------------------------------------------------------------------------------------------
// bf16 helpers and the 16-lane vector type.

inline float bf16_to_f32(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t f32_to_bf16(float f) {  // round to nearest even; NaN stays NaN
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

inline uint32_t pair(uint16_t lo, uint16_t hi) { return static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16); }

#if RESD_BF16_SIMD
using F16 = __m512;   // 16 float32 lanes
using P16 = __m512i;  // 16 pairs of bf16 (32 values), pair l in lane l
inline F16 zero() { return _mm512_setzero_ps(); }
inline F16 loadf(const float* p) { return _mm512_loadu_ps(p); }
inline void storef(float* p, F16 x) { _mm512_storeu_ps(p, x); }
inline P16 loadp(const uint32_t* p) { return _mm512_loadu_si512(p); }
inline P16 bcastp(uint32_t x) { return _mm512_set1_epi32(static_cast<int>(x)); }
// acc[l] += a[l].lo * b[l].lo + a[l].hi * b[l].hi
inline F16 dot2(F16 acc, P16 a, P16 b) { return _mm512_dpbf16_ps(acc, (__m512bh)a, (__m512bh)b); }
#else
struct F16 { float v[16]; };
struct P16 { uint32_t v[16]; };
inline F16 zero() { return F16{}; }
inline F16 loadf(const float* p) { F16 r; std::memcpy(r.v, p, 64); return r; }
inline void storef(float* p, F16 x) { std::memcpy(p, x.v, 64); }
inline P16 loadp(const uint32_t* p) { P16 r; std::memcpy(r.v, p, 64); return r; }
inline P16 bcastp(uint32_t x) { P16 r; for (auto& e : r.v) e = x; return r; }
inline F16 dot2(F16 acc, P16 a, P16 b) {
  for (int l = 0; l < 16; ++l) {
    acc.v[l] += bf16_to_f32(a.v[l] & 0xffff) * bf16_to_f32(b.v[l] & 0xffff) +
                bf16_to_f32(a.v[l] >> 16) * bf16_to_f32(b.v[l] >> 16);
  }
  return acc;
}
#endif

// Row-wise float helpers over n floats (n a multiple of 16).
inline float row_max(const float* x, int n) {
#if RESD_BF16_SIMD
  __m512 m = _mm512_set1_ps(kNeg);
  for (int j = 0; j < n; j += 16) m = _mm512_max_ps(m, _mm512_loadu_ps(x + j));
  return _mm512_reduce_max_ps(m);
#else
  float m = kNeg;
  for (int j = 0; j < n; ++j) m = x[j] > m ? x[j] : m;
  return m;
#endif
}

#if RESD_BF16_SIMD
// exp(x) for x <= 0 (scores minus their row max), relative error ~1e-7: 2^(x log2 e) split into an integer
// power (applied with scalef) and 2^f = e^(f ln 2) for |f| <= 1/2, a degree-7 Taylor polynomial.
inline __m512 exp16(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-104.0f));  // below this exp is 0 in float32
  __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.4426950408889634f));
  __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 y = _mm512_mul_ps(_mm512_sub_ps(t, n), _mm512_set1_ps(0.6931471805599453f));
  __m512 p = _mm512_set1_ps(1.0f / 5040);
  p = _mm512_fmadd_ps(p, y, _mm512_set1_ps(1.0f / 720));
  p = _mm512_fmadd_ps(p, y, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, y, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, y, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, y, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, y, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, y, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}
#endif

// e[j] = exp(x[j] - m) rounded to bf16, stored as uint16; returns the sum of the rounded values' float32
// originals. n a multiple of 32.
inline float exp_row_bf16(const float* x, float m, int n, uint16_t* e) {
#if RESD_BF16_SIMD
  __m512 mm = _mm512_set1_ps(m), sum = _mm512_setzero_ps();
  for (int j = 0; j < n; j += 32) {
    __m512 a = exp16(_mm512_sub_ps(_mm512_loadu_ps(x + j), mm));
    __m512 b = exp16(_mm512_sub_ps(_mm512_loadu_ps(x + j + 16), mm));
    sum = _mm512_add_ps(sum, _mm512_add_ps(a, b));
    _mm512_storeu_si512(e + j, (__m512i)_mm512_cvtne2ps_pbh(b, a));
  }
  return _mm512_reduce_add_ps(sum);
#else
  float sum = 0;
  for (int j = 0; j < n; ++j) {
    float v = std::exp(x[j] - m);
    sum += v;
    e[j] = f32_to_bf16(v);
  }
  return sum;
#endif
}

// ---------------------------------------------------------------------------------------------------------
// Packing. "Key-major pairs" kp[d2][j] = (x[j][2 d2], x[j][2 d2 + 1]): a vector load gives 16 keys' pairs, for
// scores (q . k over d). "Dim-major pairs" vp[j2][d] = (x[2 j2][d], x[2 j2 + 1][d]): 16 dims' pairs, for sums
// over keys (p . v). Rows beyond n are zero.

template <typename Get>
void pack_key_major(int n, int n_pad, int dh, Get get, uint32_t* kp) {
  for (int d2 = 0; d2 < dh / 2; ++d2) {
    uint32_t* row = kp + static_cast<int64_t>(d2) * n_pad;
    for (int j = 0; j < n; ++j) row[j] = pair(get(j, 2 * d2), get(j, 2 * d2 + 1));
    for (int j = n; j < n_pad; ++j) row[j] = 0;
  }
}

// One row's pairs along the head dimension: out[d2] = (row[2 d2], row[2 d2 + 1]), for `scores_tile`'s rows.
template <typename Get>
void pack_row_pairs(int dh, Get row, uint32_t* out) {
  for (int d2 = 0; d2 < dh / 2; ++d2) out[d2] = pair(row(2 * d2), row(2 * d2 + 1));
}

template <typename Get>
void pack_dim_major(int n, int n_pad, int dh, Get get, uint32_t* vp) {
  for (int j2 = 0; j2 < n_pad / 2; ++j2) {
    uint32_t* row = vp + static_cast<int64_t>(j2) * dh;
    int a = 2 * j2, b = 2 * j2 + 1;
    for (int d = 0; d < dh; ++d) {
      uint16_t lo = a < n ? get(a, d) : 0, hi = b < n ? get(b, d) : 0;
      row[d] = pair(lo, hi);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Micro-kernels.

// s[r][j] = sum_d a[r][d] b[j][d] for r < R and j in [0, n): a given as pairs apair[r][d2] (dh/2 each),
// b as key-major pairs (stride n_pad). n a multiple of 16 C.
template <int R, int C>
void scores_tile(const uint32_t* const* apair, int dh, const uint32_t* kp, int n_pad, int n, float* s, int ld) {
  for (int j0 = 0; j0 < n; j0 += 16 * C) {
    F16 acc[R][C];
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) acc[r][c] = zero();
    for (int d2 = 0; d2 < dh / 2; ++d2) {
      const uint32_t* kr = kp + static_cast<int64_t>(d2) * n_pad + j0;
      P16 kv[C];
      for (int c = 0; c < C; ++c) kv[c] = loadp(kr + 16 * c);
      for (int r = 0; r < R; ++r) {
        P16 b = bcastp(apair[r][d2]);
        for (int c = 0; c < C; ++c) acc[r][c] = dot2(acc[r][c], kv[c], b);
      }
    }
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) storef(s + static_cast<int64_t>(r) * ld + j0 + 16 * c, acc[r][c]);
  }
}

// o[r][d] = sum_j w[r][j] x[j][d] for r < R (R <= 4), d < 64: w given as bf16 rows (pairs read as uint32,
// stride ld_w in uint16), x as dim-major pairs (stride ld_v). n (keys) even. One 64-wide slice of the head
// dimension per call (4 vectors of accumulators per row).
template <int R>
void weighted_sum_tile(const uint16_t* w, int ld_w, const uint32_t* vp, int ld_v, int n, float* o, int ld_o) {
  F16 acc[R][4];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < 4; ++c) acc[r][c] = zero();
  for (int j2 = 0; j2 < n / 2; ++j2) {
    const uint32_t* vr = vp + static_cast<int64_t>(j2) * ld_v;
    P16 x[4];
    for (int c = 0; c < 4; ++c) x[c] = loadp(vr + 16 * c);
    for (int r = 0; r < R; ++r) {
      uint32_t pr;
      std::memcpy(&pr, w + static_cast<int64_t>(r) * ld_w + 2 * j2, 4);
      P16 b = bcastp(pr);
      for (int c = 0; c < 4; ++c) acc[r][c] = dot2(acc[r][c], x[c], b);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < 4; ++c) storef(o + static_cast<int64_t>(r) * ld_o + 16 * c, acc[r][c]);
}

// acc[j][d] += sum_r w[r][j] y[r][d] over R rows (R even), d < 64: w as row pairs wt[r2][j] = (w[2 r2][j],
// w[2 r2 + 1][j]) (stride ld_w), y as dim-major pairs yp[r2][d] (stride ld_y). For the key gradients
// dv += p^T dout and dk += ds^T q, one 64-wide slice of the head dimension per call.
template <int R>
void outer_accumulate(const uint32_t* wt, int ld_w, const uint32_t* yp, int ld_y, int n, float* acc, int ld) {
  P16 y[R / 2][4];
  for (int r2 = 0; r2 < R / 2; ++r2)
    for (int c = 0; c < 4; ++c) y[r2][c] = loadp(yp + r2 * ld_y + 16 * c);
  for (int j = 0; j < n; ++j) {
    float* a = acc + static_cast<int64_t>(j) * ld;
    F16 t[4];
    for (int c = 0; c < 4; ++c) t[c] = loadf(a + 16 * c);
    for (int r2 = 0; r2 < R / 2; ++r2) {
      P16 b = bcastp(wt[static_cast<int64_t>(r2) * ld_w + j]);
      for (int c = 0; c < 4; ++c) t[c] = dot2(t[c], y[r2][c], b);
    }
    for (int c = 0; c < 4; ++c) storef(a + 16 * c, t[c]);
  }
}

struct Dims {
  int64_t b, tq, t, kvh, g, dh, q_offset;
  int64_t rows() const { return tq * g; }                  // query rows per (sequence, KV head) pair
  int64_t keys_pad() const { return (t + kKeyAlign - 1) / kKeyAlign * kKeyAlign; }
  // element (t_, g_, d) of pair p = (b_, h_) in a [B, Tq, KVH, G, Dh] array
  int64_t qi(int64_t p, int64_t row, int64_t d) const {
    int64_t b_ = p / kvh, h_ = p % kvh, t_ = row / g, g_ = row % g;
    return (((b_ * tq + t_) * kvh + h_) * g + g_) * dh + d;
  }
  int64_t ki(int64_t p, int64_t j, int64_t d) const {  // [B, T, KVH, Dh]
    int64_t b_ = p / kvh, h_ = p % kvh;
    return ((b_ * t + j) * kvh + h_) * dh + d;
  }
  // keys row `row` may see: [0, q_offset + row / g]
  int64_t key_end(int64_t row) const { return q_offset + row / g + 1; }
};

ffi::Error check_dims(const Dims& dm) {
  if (dm.dh % 64 != 0 || dm.dh > kMaxHeadDim)
    return ffi::Error::InvalidArgument("cpu attention: head_dim must be 64, 128, 192 or 256");
  if (dm.q_offset < 0 || dm.q_offset + dm.tq != dm.t)
    return ffi::Error::InvalidArgument("cpu attention: the queries must end at the last key");
  return ffi::Error::Success();
}

// Scores of R query rows over the keys [0, n): masked entries (later keys, padding) are kNeg.
template <int R>
void masked_scores(const Dims& dm, const uint32_t* const* qpair, const uint32_t* kp, const float* key_bias,
                   bool any_padding, int64_t row0, int64_t rows, int n, float* s, int ld) {
  scores_tile<R, (R > 4 ? 2 : 4)>(qpair, dm.dh, kp, dm.keys_pad(), n, s, ld);
  for (int r = 0; r < R; ++r) {
    float* sr = s + static_cast<int64_t>(r) * ld;
    if (any_padding)
      for (int j = 0; j < n; ++j) sr[j] += key_bias[j];
    int64_t end = r < rows ? dm.key_end(row0 + r) : 0;
    for (int64_t j = end; j < n; ++j) sr[j] = kNeg;
  }
}

struct Pack {  // one pair's keys and values, packed
  std::vector<uint32_t> kp;      // k key-major (scores)
  std::vector<uint32_t> vv;      // forward: v dim-major (outputs)
  std::vector<uint32_t> vp, kv;  // backward: v key-major (dp), k dim-major (dq)
  std::vector<float> bias;       // 0 or kNeg per key
  bool any_padding = false;
};

void pack_pair(const Dims& dm, int64_t p, const uint16_t* k, const uint16_t* v, const bool* mask, bool backward,
               Pack& pk) {
  int n = static_cast<int>(dm.t), n_pad = static_cast<int>(dm.keys_pad()), dh = static_cast<int>(dm.dh);
  auto kget = [&](int j, int d) { return k[dm.ki(p, j, d)]; };
  auto vget = [&](int j, int d) { return v[dm.ki(p, j, d)]; };
  pk.kp.resize(static_cast<size_t>(n_pad) * dh / 2);
  pack_key_major(n, n_pad, dh, kget, pk.kp.data());
  if (!backward) {
    pk.vv.resize(static_cast<size_t>(n_pad) * dh / 2);
    pack_dim_major(n, n_pad, dh, vget, pk.vv.data());
  } else {
    pk.vp.resize(static_cast<size_t>(n_pad) * dh / 2);
    pk.kv.resize(static_cast<size_t>(n_pad) * dh / 2);
    pack_key_major(n, n_pad, dh, vget, pk.vp.data());
    pack_dim_major(n, n_pad, dh, kget, pk.kv.data());
  }
  pk.bias.assign(n_pad, 0.0f);
  pk.any_padding = false;
  const bool* m = mask + (p / dm.kvh) * dm.t;
  for (int j = 0; j < n; ++j)
    if (!m[j]) {
      pk.bias[j] = kNeg;
      pk.any_padding = true;
    }
}

inline int round_up(int64_t x, int to) { return static_cast<int>((x + to - 1) / to * to); }

// ---------------------------------------------------------------------------------------------------------
// Forward.

constexpr int kFwdRows = 4;    // query rows per tile
constexpr int kFwdUnit = 32;   // query rows per unit of work

void forward_rows(const Dims& dm, int64_t p, const Pack& pk, const uint16_t* q, int64_t row0, int64_t rows,
                  float* s, uint16_t* e, float* out, float* lse) {
  constexpr int R = kFwdRows;
  const int dh = static_cast<int>(dm.dh);
  std::vector<uint32_t> qbuf(R * dh / 2, 0);
  const uint32_t* qpair[R];
  float o[R * kMaxHeadDim];
  for (int64_t r0 = row0; r0 < row0 + rows; r0 += R) {
    int64_t nr = std::min<int64_t>(R, row0 + rows - r0);
    for (int r = 0; r < R; ++r) {
      uint32_t* qb = qbuf.data() + r * dh / 2;
      pack_row_pairs(dh, [&](int d) { return r < nr ? q[dm.qi(p, r0 + r, d)] : uint16_t{0}; }, qb);
      qpair[r] = qb;
    }
    int n = round_up(dm.key_end(r0 + nr - 1), kKeyAlign);
    masked_scores<R>(dm, qpair, pk.kp.data(), pk.bias.data(), pk.any_padding, r0, nr, n, s, n);
    float inv[R];
    for (int r = 0; r < R; ++r) {
      float m = row_max(s + r * n, n);
      float l = exp_row_bf16(s + r * n, m, n, e + r * n);
      bool empty = m <= 0.5f * kNeg;  // no visible key: output 0, and lse kNeg tells the backward
      inv[r] = empty ? 0.0f : 1.0f / l;
      if (r < nr) lse[p * dm.rows() + r0 + r] = empty ? kNeg : m + std::log(l);
    }
    for (int c = 0; c < dh; c += 64) weighted_sum_tile<R>(e, n, pk.vv.data() + c, dh, n, o + c, dh);
    for (int r = 0; r < nr; ++r) {
      float* dst = out + dm.qi(p, r0 + r, 0);
      for (int d = 0; d < dh; ++d) dst[d] = o[r * dh + d] * inv[r];
    }
  }
}

ffi::Error AttentionForward(ffi::ThreadPool pool, ffi::Buffer<ffi::BF16> q, ffi::Buffer<ffi::BF16> k,
                            ffi::Buffer<ffi::BF16> v, ffi::Buffer<ffi::PRED> mask, int64_t q_offset,
                            ffi::ResultBuffer<ffi::F32> out, ffi::ResultBuffer<ffi::F32> lse) {
  auto qd = q.dimensions(), kd = k.dimensions();
  if (qd.size() != 5 || kd.size() != 4) return ffi::Error::InvalidArgument("cpu attention: bad ranks");
  Dims dm{qd[0], qd[1], kd[1], qd[2], qd[3], qd[4], q_offset};
  if (auto err = check_dims(dm); err.failure()) return err;
  const auto* qp = reinterpret_cast<const uint16_t*>(q.typed_data());
  const auto* kp = reinterpret_cast<const uint16_t*>(k.typed_data());
  const auto* vp = reinterpret_cast<const uint16_t*>(v.typed_data());
  const bool* mp = mask.typed_data();
  float* op = out->typed_data();
  float* lp = lse->typed_data();
  int64_t pairs = dm.b * dm.kvh;
  std::vector<Pack> packs(pairs);
  resd::parallel_units(pool, pairs, [&](int64_t p) { pack_pair(dm, p, kp, vp, mp, false, packs[p]); });
  // Units: (pair, block of kFwdUnit rows), longest rows first so the short ones fill in at the end.
  int64_t blocks = (dm.rows() + kFwdUnit - 1) / kFwdUnit;
  resd::parallel_units(pool, pairs * blocks, [&](int64_t u) {
    int64_t blk = blocks - 1 - u / pairs, p = u % pairs;
    int64_t row0 = blk * kFwdUnit, rows = std::min<int64_t>(kFwdUnit, dm.rows() - row0);
    int n_pad = static_cast<int>(dm.keys_pad());
    std::vector<float> s(static_cast<size_t>(kFwdRows) * n_pad);
    std::vector<uint16_t> e(static_cast<size_t>(kFwdRows) * n_pad);
    forward_rows(dm, p, packs[p], qp, row0, rows, s.data(), e.data(), op, lp);
  });
  return ffi::Error::Success();
}

// ---------------------------------------------------------------------------------------------------------
// Backward (flash-attention style): per pair, each tile of query rows recomputes its probabilities from the
// saved log-sum-exp, writes its dq, and adds its part of dk and dv into per-pair float32 accumulators.

constexpr int kBwdRows = 8;  // query rows per tile (even: the key gradients sum over pairs of rows)

// x[j] = exp(x[j] - m) in place, n a multiple of 16.
inline void exp_row_inplace(float* x, float m, int n) {
#if RESD_BF16_SIMD
  __m512 mm = _mm512_set1_ps(m);
  for (int j = 0; j < n; j += 16) _mm512_storeu_ps(x + j, exp16(_mm512_sub_ps(_mm512_loadu_ps(x + j), mm)));
#else
  for (int j = 0; j < n; ++j) x[j] = std::exp(x[j] - m);
#endif
}

// ds[j] = p[j] * (ds[j] - delta) (ds holds dp on the way in); n a multiple of 16.
inline void softmax_grad_row(const float* p, float* ds, float delta, int n) {
#if RESD_BF16_SIMD
  __m512 dl = _mm512_set1_ps(delta);
  for (int j = 0; j < n; j += 16)
    _mm512_storeu_ps(ds + j, _mm512_mul_ps(_mm512_loadu_ps(p + j), _mm512_sub_ps(_mm512_loadu_ps(ds + j), dl)));
#else
  for (int j = 0; j < n; ++j) ds[j] = p[j] * (ds[j] - delta);
#endif
}

// x rounded to bf16; n a multiple of 32.
inline void to_bf16_row(const float* x, int n, uint16_t* out) {
#if RESD_BF16_SIMD
  for (int j = 0; j < n; j += 32)
    _mm512_storeu_si512(out + j, (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + j + 16), _mm512_loadu_ps(x + j)));
#else
  for (int j = 0; j < n; ++j) out[j] = f32_to_bf16(x[j]);
#endif
}

// out[j] = (a[j], b[j]) as one pair; n a multiple of 16.
inline void interleave_rows(const uint16_t* a, const uint16_t* b, int n, uint32_t* out) {
#if RESD_BF16_SIMD
  const __m512i idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
                                       23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  for (int j = 0; j < n; j += 16) {
    __m512i ab = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i*)(a + j))),
                                    _mm256_loadu_si256((const __m256i*)(b + j)), 1);
    _mm512_storeu_si512(out + j, _mm512_permutexvar_epi16(idx, ab));
  }
#else
  for (int j = 0; j < n; ++j) out[j] = pair(a[j], b[j]);
#endif
}

void backward_pair(const Dims& dm, int64_t p, const Pack& pk, const uint16_t* q, const float* out, const float* lse,
                   const float* dout, float* dq, float* dk, float* dv) {
  constexpr int R = kBwdRows;
  const int dh = static_cast<int>(dm.dh), n_pad = static_cast<int>(dm.keys_pad());
  std::vector<float> s(static_cast<size_t>(R) * n_pad), dp(static_cast<size_t>(R) * n_pad);
  std::vector<uint16_t> pb(static_cast<size_t>(R) * n_pad), dsb(static_cast<size_t>(R) * n_pad);
  std::vector<uint32_t> pt(static_cast<size_t>(n_pad) * R / 2), dst(static_cast<size_t>(n_pad) * R / 2);  // [R/2][n]
  std::vector<float> gk(static_cast<size_t>(n_pad) * dh, 0.0f), gv(static_cast<size_t>(n_pad) * dh, 0.0f);
  std::vector<uint32_t> qbuf(R * dh / 2), dobuf(R * dh / 2), qdim(R / 2 * dh), dodim(R / 2 * dh);
  std::vector<uint16_t> qrow(R * dh), dorow(R * dh);
  const uint32_t* qpair[R];
  const uint32_t* dopair[R];
  std::vector<float> o(R * dh);
  for (int64_t r0 = 0; r0 < dm.rows(); r0 += R) {
    int64_t nr = std::min<int64_t>(R, dm.rows() - r0);
    float row_lse[R], delta[R];
    for (int r = 0; r < R; ++r) {
      bool real = r < nr && lse[p * dm.rows() + r0 + r] > 0.5f * kNeg;
      // A row without keys (or past the end) gets lse = -kNeg: exp(score - lse) = 0, no probability.
      row_lse[r] = real ? lse[p * dm.rows() + r0 + r] : -kNeg;
      float dl = 0.0f;
      for (int d = 0; d < dh; ++d) {
        float g = real ? dout[dm.qi(p, r0 + r, d)] : 0.0f;
        dl += real ? g * out[dm.qi(p, r0 + r, d)] : 0.0f;
        qrow[r * dh + d] = real ? q[dm.qi(p, r0 + r, d)] : 0;
        dorow[r * dh + d] = f32_to_bf16(g);
      }
      delta[r] = dl;
      pack_row_pairs(dh, [&](int d) { return qrow[r * dh + d]; }, qbuf.data() + r * dh / 2);
      pack_row_pairs(dh, [&](int d) { return dorow[r * dh + d]; }, dobuf.data() + r * dh / 2);
      qpair[r] = qbuf.data() + r * dh / 2;
      dopair[r] = dobuf.data() + r * dh / 2;
    }
    // The tile's rows as dim-major pairs (pairs of rows), for dk += ds^T q and dv += p^T dout.
    pack_dim_major(R, R, dh, [&](int r, int d) { return qrow[r * dh + d]; }, qdim.data());
    pack_dim_major(R, R, dh, [&](int r, int d) { return dorow[r * dh + d]; }, dodim.data());
    int n = round_up(dm.key_end(r0 + nr - 1), kKeyAlign);
    masked_scores<R>(dm, qpair, pk.kp.data(), pk.bias.data(), pk.any_padding, r0, nr, n, s.data(), n);
    scores_tile<R, 2>(dopair, dh, pk.vp.data(), n_pad, n, dp.data(), n);
    for (int r = 0; r < R; ++r) {
      float* pr = s.data() + static_cast<int64_t>(r) * n;
      float* dsr = dp.data() + static_cast<int64_t>(r) * n;
      exp_row_inplace(pr, row_lse[r], n);
      softmax_grad_row(pr, dsr, delta[r], n);  // dsr = p * (dp - delta)
      to_bf16_row(pr, n, pb.data() + static_cast<int64_t>(r) * n);
      to_bf16_row(dsr, n, dsb.data() + static_cast<int64_t>(r) * n);
    }
    for (int r2 = 0; r2 < R / 2; ++r2) {
      interleave_rows(pb.data() + 2 * r2 * n, pb.data() + (2 * r2 + 1) * n, n, pt.data() + r2 * n);
      interleave_rows(dsb.data() + 2 * r2 * n, dsb.data() + (2 * r2 + 1) * n, n, dst.data() + r2 * n);
    }
    for (int c = 0; c < dh; c += 64) {
      for (int h = 0; h < R; h += R / 2)
        weighted_sum_tile<R / 2>(dsb.data() + h * n, n, pk.kv.data() + c, dh, n, o.data() + h * dh + c, dh);
      outer_accumulate<R>(pt.data(), n, dodim.data() + c, dh, n, gv.data() + c, dh);
      outer_accumulate<R>(dst.data(), n, qdim.data() + c, dh, n, gk.data() + c, dh);
    }
    for (int r = 0; r < nr; ++r) std::memcpy(dq + dm.qi(p, r0 + r, 0), o.data() + r * dh, dh * sizeof(float));
  }
  for (int64_t j = 0; j < dm.t; ++j) {
    std::memcpy(dk + dm.ki(p, j, 0), gk.data() + j * dh, dh * sizeof(float));
    std::memcpy(dv + dm.ki(p, j, 0), gv.data() + j * dh, dh * sizeof(float));
  }
}

ffi::Error AttentionBackward(ffi::ThreadPool pool, ffi::Buffer<ffi::BF16> q, ffi::Buffer<ffi::BF16> k,
                             ffi::Buffer<ffi::BF16> v, ffi::Buffer<ffi::PRED> mask, ffi::Buffer<ffi::F32> out,
                             ffi::Buffer<ffi::F32> lse, ffi::Buffer<ffi::F32> dout, int64_t q_offset,
                             ffi::ResultBuffer<ffi::F32> dq, ffi::ResultBuffer<ffi::F32> dk,
                             ffi::ResultBuffer<ffi::F32> dv) {
  auto qd = q.dimensions(), kd = k.dimensions();
  if (qd.size() != 5 || kd.size() != 4) return ffi::Error::InvalidArgument("cpu attention: bad ranks");
  Dims dm{qd[0], qd[1], kd[1], qd[2], qd[3], qd[4], q_offset};
  if (auto err = check_dims(dm); err.failure()) return err;
  const auto* qp = reinterpret_cast<const uint16_t*>(q.typed_data());
  const auto* kp = reinterpret_cast<const uint16_t*>(k.typed_data());
  const auto* vp = reinterpret_cast<const uint16_t*>(v.typed_data());
  resd::parallel_units(pool, dm.b * dm.kvh, [&](int64_t p) {
    Pack pk;
    pack_pair(dm, p, kp, vp, mask.typed_data(), true, pk);
    backward_pair(dm, p, pk, qp, out.typed_data(), lse.typed_data(), dout.typed_data(), dq->typed_data(),
                  dk->typed_data(), dv->typed_data());
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(ResdCpuAttentionBackward, AttentionBackward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::PRED>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("q_offset")
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(ResdCpuAttentionForward, AttentionForward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::PRED>>()
                                  .Attr<int64_t>("q_offset")
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

// 1 when this build has the AVX512-BF16 code path; the library only uses builds that do.
extern "C" int ResdCpuAttentionSimd() { return RESD_BF16_SIMD; }
