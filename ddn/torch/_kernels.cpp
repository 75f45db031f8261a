// Row kernels for ddn.torch.pooling and ddn.torch.projections (CPU, float32 and float64).
//
// Each call handles rows [r0, r1) of a contiguous (B, n) array; Python splits the rows over
// threads (ctypes releases the GIL). Every solver iteration of a row runs while the row sits in
// L1/L2, so the input is read from memory once per forward and once per backward. The algorithms
// are exactly those of the eager torch code (the oracle) — see the docstrings there.
//
// Status codes per row: 0 ok, 1 not converged / degenerate, 2 NaN or Inf, 3 |x|/alpha too large,
// 4 projection lost its accuracy to cancellation (|x| ≫ r for the dtype), 5 pooling: Σx or
// differences of x overflow the dtype, 6 sphere projection of x = 0 (a result is written, but
// the nearest point is not unique: Python warns); for projections 3 means finite x whose sum
// overflowed (Python redoes those rows with the eager code).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace {

enum { QUAD = 0, PHUBER = 1, HUBER = 2, WELSCH = 3, TRUNC = 4 };
const int MAX_ITER = 100;

template <typename T> struct Eps;
template <> struct Eps<float> { static constexpr float v = 1.1920928955078125e-07f; };
template <> struct Eps<double> { static constexpr double v = 2.220446049250313e-16; };

// exp(x) for x <= 0, vectorizable (Cephes polynomials), exactly 0 below the underflow limit.
static inline float vexp(float x) {
  float xc = x < -87.0f ? -87.0f : x;
  float n = std::floor(xc * 1.44269504088896341f + 0.5f);
  float r = xc - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  int32_t bits = ((int32_t)n + 127) << 23;
  float e = p * __builtin_bit_cast(float, bits);
  return x < -87.0f ? 0.0f : e;
}
static inline double vexp(double x) {
  double xc = x < -708.0 ? -708.0 : x;
  double n = std::floor(xc * 1.4426950408889634 + 0.5);
  double r = xc - n * 6.93145751953125e-1 - n * 1.42860682030941723212e-6;
  double r2 = r * r;
  double px = r * ((1.26177193074810590878e-4 * r2 + 3.02994407707441961300e-2) * r2 +
                   9.99999999999999999910e-1);
  double qx = ((3.00198505138664455042e-6 * r2 + 2.52448340349684104192e-3) * r2 +
               2.27265548208155028766e-1) * r2 + 2.00000000000000000009e0;
  double e = 1.0 + 2.0 * px / (qx - px);
  int64_t bits = ((int64_t)n + 1023) << 52;
  e *= __builtin_bit_cast(double, bits);
  return x < -708.0 ? 0.0 : e;
}

static inline bool finite_bits(float v) {
  return ((__builtin_bit_cast(uint32_t, v) >> 23) & 0xff) != 0xff;
}
static inline bool finite_bits(double v) {
  return ((__builtin_bit_cast(uint64_t, v) >> 52) & 0x7ff) != 0x7ff;
}

// True when no element is NaN or ±Inf (a sum that overflowed does not say which it was).
template <typename T>
static inline bool all_finite(const T* x, int64_t n) {
  int32_t bad = 0;
#pragma omp simd reduction(| : bad)
  for (int64_t i = 0; i < n; ++i) bad |= finite_bits(x[i]) ? 0 : 1;
  return bad == 0;
}

// ---------------------------------------------------------------- robust pooling, forward
// Every function is specialised on the penalty P so that its inner loops vectorize.
// Convex penalties: g = Σ φ'(y − x_i), H = Σ φ''(y − x_i).
template <typename T, int P>
static inline void eval_convex(const T* x, int64_t n, T y, T a, T& g, T& H) {
  T gs = 0, hs = 0;
  if constexpr (P == PHUBER) {
    const T ia = T(1) / a;
#pragma omp simd reduction(+ : gs, hs)
    for (int64_t i = 0; i < n; ++i) {
      T z = y - x[i], u = z * ia;
      T s = T(1) / std::sqrt(T(1) + u * u);
      gs += z * s;
      hs += s * s * s;
    }
  } else {
#pragma omp simd reduction(+ : gs, hs)
    for (int64_t i = 0; i < n; ++i) {
      T z = y - x[i];
      T c = z > a ? a : (z < -a ? -a : z);
      gs += c;
      hs += std::abs(z) <= a ? T(1) : T(0);
    }
  }
  g = gs;
  H = hs;
}

// Safeguarded Newton on [lo, hi]; converged once the Newton step is below tol (the step is still
// taken; H is returned from the point it was evaluated at, within that one tiny step of y: a
// relative change of order eps), g = 0, or the bracket is below tol.
template <typename T, int P>
static int newton_bracket(const T* x, int64_t n, T a, T y, T lo, T hi, T& out, T& Hout) {
  const T eps = Eps<T>::v;
  for (int it = 0; it < MAX_ITER; ++it) {
    T g, H;
    eval_convex<T, P>(x, n, y, a, g, H);
    if (g < 0) lo = y;
    if (g > 0) hi = y;
    T yn = y - g / H;
    T tol = 2 * eps * (std::abs(y) + a);
    bool small = H > 0 && std::abs(yn - y) <= tol;
    if (small && g != 0) { out = yn; Hout = H; return 0; }
    if (g == 0 || (hi - lo) <= tol) { out = y; Hout = H; return 0; }
    bool newton = H > 0 && yn > lo && yn < hi;
    y = newton ? yn : T(0.5) * lo + T(0.5) * hi;
  }
  out = y;
  Hout = 0;
  return 1;
}

template <typename T>
static inline void eval_welsch(const T* x, int64_t n, T y, T a, T& f, T& g, T& H, T& s0, T& gabs) {
  const T ia = T(1) / a;
  T s = 0, gz = 0, hz = 0, ga = 0;
#pragma omp simd reduction(+ : s, gz, hz, ga)
  for (int64_t i = 0; i < n; ++i) {
    T u = (y - x[i]) * ia, u2 = u * u;
    T w = vexp(T(-0.5) * u2);
    s += w;
    gz += u * w;
    ga += std::abs(u) * w;
    hz += (T(1) - u2) * w;
  }
  // g, H, Σ|φ'| scaled by α, α², α (never form α², which under/overflows for tiny/huge α)
  f = T(n) - s;
  g = gz;
  H = hz;
  s0 = s;
  gabs = ga;
}

// Newton when it lowers f, else the majorize-minimize (IRLS) step; every accepted point is
// evaluated, so (f, H) at the returned y are exact. g and H are α g, α² H (eval_welsch): the
// Newton step is α g/H, the MM step α g/Σw; the H returned is α² Σφ''.
template <typename T>
static int welsch_local(const T* x, int64_t n, T a, T y, T& out, T& fout, T& Hout) {
  const T eps = Eps<T>::v, ftol = 8 * eps * T(n);
  T f, g, H, s0, gabs;
  eval_welsch(x, n, y, a, f, g, H, s0, gabs);
  // 5× the usual limit: at a degenerate minimum (H → 0, e.g. two points 2α apart) Newton
  // converges only linearly (ratio 2/3)
  for (int it = 0; it < 5 * MAX_ITER; ++it) {
    T ymm = s0 > 0 ? y - a * g / s0 : y;
    T yn = H > 0 ? y - a * g / H : ymm;
    T fn, gn, Hn, s0n, gabsn;
    eval_welsch(x, n, yn, a, fn, gn, Hn, s0n, gabsn);
    bool mm = !(H > 0);
    if (!(fn <= f + ftol)) {
      yn = ymm;
      eval_welsch(x, n, yn, a, fn, gn, Hn, s0n, gabsn);
      mm = true;
    }
    if (mm) {  // the MM step descends but crawls on flat stretches: double it while f drops
      const T d = ymm - y;
      T t = 2;
      for (int e = 0; e < 40; ++e, t *= 2) {
        T ft, gt, Ht, s0t, gabst;
        eval_welsch(x, n, y + t * d, a, ft, gt, Ht, s0t, gabst);
        if (!(s0t > s0n)) break;  // f = n − Σw: compare Σw, free of the constant's rounding
        yn = y + t * d; fn = ft; gn = gt; Hn = Ht; s0n = s0t; gabsn = gabst;
      }
    }
    // converged: a step at rounding level, or g at rounding level (Σ|φ'| sets the scale; this
    // is what ends a degenerate minimum, where steps shrink only linearly)
    bool conv = std::abs(yn - y) <= 4 * eps * (std::abs(y) + a) || s0 == 0 ||
                std::abs(gn) <= 4 * eps * gabsn;
    y = yn; f = fn; g = gn; H = Hn; s0 = s0n;
    if (conv) {
      // one last Newton correction when it is tiny (no pass: H is taken from this point)
      T st = H > 0 ? a * g / H : T(0);
      if (std::abs(st) <= 1000 * eps * (std::abs(y) + a)) y -= st;
      out = y; fout = f; Hout = H; return 0;
    }
  }
  out = y;
  fout = f;
  Hout = H;
  return 1;
}

// f/α² = Σ ½ min(u², 1), u = (y − x_i)/α: free of α², which under/overflows for tiny/huge α.
template <typename T>
static T tq_objective(const T* x, int64_t n, T a, T y) {
  T f = 0;
  const T ia = T(1) / a;
#pragma omp simd reduction(+ : f)
  for (int64_t i = 0; i < n; ++i) {
    T u = (y - x[i]) * ia, q = T(0.5) * u * u;
    f += q < T(0.5) ? q : T(0.5);
  }
  return f;
}

// MM for the truncated quadratic: y ← mean of the inliers |y − x_i| < α, to its fixed point;
// fout = f/α² there (tq_objective, computed in the fixed point's last pass).
template <typename T>
static int tq_local(const T* x, int64_t n, T a, T y, T& out, T& Hout, T& fout) {
  const T ia = T(1) / a;
  for (int it = 0; it < 4 * MAX_ITER; ++it) {
    T cnt = 0, s = 0;
#pragma omp simd reduction(+ : cnt, s)
    for (int64_t i = 0; i < n; ++i) {
      bool inl = std::abs(y - x[i]) < a;
      cnt += inl ? T(1) : T(0);
      s += inl ? x[i] : T(0);
    }
    T yn = cnt > 0 ? s / cnt : y;
    if (yn == y) {
      // A fixed point with points exactly at |y − x_i| = α (quantized data: integers, α = 1) is
      // no minimum: min(z², α²) has a concave kink there, so f drops as y moves toward them.
      // Counting the kink points on one side (the side with more; the left on a tie) as inliers
      // is a valid majorizer at y (their z² = α² there): its minimizer lowers f strictly.
      // The same pass sums f/α² (as tq_objective), which the caller needs at the fixed point.
      T f = 0, cl = 0, sl = 0, cr = 0, sr = 0;
#pragma omp simd reduction(+ : f, cl, sl, cr, sr)
      for (int64_t i = 0; i < n; ++i) {
        T z = y - x[i], u = z * ia, q = T(0.5) * u * u;
        f += q < T(0.5) ? q : T(0.5);
        bool k = std::abs(z) == a;
        cl += k && z > 0 ? T(1) : T(0);
        sl += k && z > 0 ? x[i] : T(0);
        cr += k && z < 0 ? T(1) : T(0);
        sr += k && z < 0 ? x[i] : T(0);
      }
      if (cl + cr > 0) {
        const bool left = cl >= cr;
        yn = (s + (left ? sl : sr)) / (cnt + (left ? cl : cr));
      }
      if (yn == y) { out = y; Hout = cnt; fout = f; return 0; }
    }
    y = yn;
  }
  out = y;
  Hout = 0;
  fout = tq_objective(x, n, a, y);
  return 1;
}

// Counts #(x < t) and #(x <= t) in one vectorized pass (rows are < 2^31 long: int32 lanes).
template <typename T>
static inline void count_lt_le(const T* x, int64_t n, T t, int64_t& lt, int64_t& le) {
  int32_t a = 0, b = 0;
#pragma omp simd reduction(+ : a, b)
  for (int64_t i = 0; i < n; ++i) {
    a += x[i] < t ? 1 : 0;
    b += x[i] <= t ? 1 : 0;
  }
  lt = a;
  le = b;
}

// The lower median sort(x)[(n−1)/2] by counting passes (each a vectorized compare over the row,
// which sits in L1): keep a band [lo, hi] with L = #(x < lo) ≤ k < U = #(x ≤ hi), start it from a
// strided sample, shrink it by rank interpolation (bisection when a step did not halve it), then
// gather the few values left and select among them. Exact for any finite input (ties included).
template <typename T>
static T lower_median(const T* x, int64_t n, T mn, T mx, std::vector<T>& buf) {
  const int64_t k = (n - 1) / 2;
  if (n < 256 || n > (int64_t(1) << 30)) {
    buf.assign(x, x + n);
    std::nth_element(buf.begin(), buf.begin() + k, buf.end());
    return buf[k];
  }
  const int64_t m = 127, step = n / m;
  T smp[127];
  for (int64_t j = 0; j < m; ++j) smp[j] = x[j * step + (j * 7919) % step];
  const int64_t jl = m / 2 - 12, jh = m / 2 + 12;
  std::nth_element(smp, smp + jl, smp + m);
  std::nth_element(smp + jl + 1, smp + jh, smp + m);
  T lo = smp[jl], hi = smp[jh];
  int64_t L, U, dummy;
  count_lt_le(x, n, lo, L, dummy);
  count_lt_le(x, n, hi, dummy, U);
  if (!(L <= k && U >= k + 1)) {  // the sample band missed: start from the whole range
    lo = mn;
    hi = mx;
    L = 0;
    U = n;
  }
  bool bisect = false;
  for (int it = 0; it < 200 && U - L > 32; ++it) {
    T t = lo + (hi - lo) * ((T(k - L) + T(0.5)) / T(U - L));
    if (bisect || !(t > lo && t < hi)) t = T(0.5) * lo + T(0.5) * hi;
    if (!(t > lo && t < hi)) break;  // no float strictly inside: at most two distinct values
    int64_t lt, le, before = U - L;
    count_lt_le(x, n, t, lt, le);
    if (lt <= k && le >= k + 1) return t;  // t is an element and the k-th smallest
    if (le <= k) { lo = t; L = lt; }
    else { hi = t; U = le; }
    bisect = 2 * (U - L) > before;
  }
  // gather the band [lo, hi] (U − L values, branch-free) and select the (k − L)-th among them
  buf.resize(n);
  int64_t c = 0;
  for (int64_t i = 0; i < n; ++i) {
    T v = x[i];
    buf[c] = v;
    c += (v >= lo) & (v <= hi);
  }
  std::nth_element(buf.begin(), buf.begin() + (k - L), buf.begin() + c);
  return buf[k - L];
}

// Huber's inlier test for the derivative, |y − x_i| ≤ α up to rounding: Newton ends within a
// few ulps of a root that sits exactly on a kink (integer data with α = 1 put it there), and which
// side it landed on decided the gradient, differently for the kernel and the eager code.
template <typename T>
static inline T huber_kink(T y, T a) {
  return a + 8 * Eps<T>::v * (std::abs(y) + a);
}

template <typename T, int P>
static int pool_row(const T* x, int64_t n, T a, std::vector<T>& buf, T& y, T& H) {
  T s = 0, mn = x[0], mx = x[0];
#pragma omp simd reduction(+ : s) reduction(min : mn) reduction(max : mx)
  for (int64_t i = 0; i < n; ++i) {
    T v = x[i];
    s += v;
    mn = v < mn ? v : mn;
    mx = v > mx ? v : mx;
  }
  // Σx overflowed (a NaN sum may come from +inf and -inf partial sums of finite x), or the
  // spread max x − min x, which bounds every |y − x_i|, does: 5 (was misreported as NaN/Inf
  // input or as |x|/α, or gave a wrong y)
  if (!finite_bits(s)) return all_finite(x, n) ? 5 : 2;
  if (!finite_bits(mx - mn)) return 5;
  const T big = std::sqrt(std::numeric_limits<T>::max()) / 8;
  if (std::max(std::abs(mn), std::abs(mx)) > big * a) return 3;
  const T mean = s / T(n);
  if constexpr (P == QUAD) {
    y = mean;
    H = T(n);
    return 0;
  } else if constexpr (P == PHUBER || P == HUBER) {
    if (mn == mx) {
      y = mean;
      H = T(n);
      return 0;
    }
    int st = newton_bracket<T, P>(x, n, a, mean, mn, mx, y, H);
    if (P == HUBER) {
      // H = #inliers at the final y (φ'' is piecewise constant: count it where y ended up, as
      // the last Newton step may have crossed a kink). The minimizers form an interval exactly
      // when n is even and the middle order statistics x_j, x_k (here: the neighbours of y) are
      // more than 2α apart with n/2 points at or below x_j; then return its midpoint, H = 0.
      // (Decided on order statistics: Newton stops on the interval's end, where |y − x_k| = α
      // counts x_k as an inlier and would hide the interval.)
      const T inf = std::numeric_limits<T>::infinity();
      T cnt = 0, xj = -inf, xk = inf;
      const T yy = y, at = huber_kink(yy, a);
#pragma omp simd reduction(+ : cnt) reduction(max : xj) reduction(min : xk)
      for (int64_t i = 0; i < n; ++i) {
        T z = yy - x[i];
        cnt += std::abs(z) <= at ? T(1) : T(0);
        T cj = x[i] <= yy ? x[i] : -inf;
        T ck = x[i] > yy ? x[i] : inf;
        xj = cj > xj ? cj : xj;
        xk = ck < xk ? ck : xk;
      }
      H = cnt;
      if (n % 2 == 0 && xk - xj > 2 * a) {
        int64_t le = 0;  // rare path: a plain loop (count_lt_le counts in int32 lanes)
        for (int64_t i = 0; i < n; ++i) le += x[i] <= xj ? 1 : 0;
        if (2 * le == n) { y = T(0.5) * xj + T(0.5) * xk; H = 0; }
      }
    }
    return st;
  } else {
    const T median = lower_median(x, n, mn, mx, buf);
    T y1, y2, f1, f2, H1, H2;
    int s1, s2;
    if constexpr (P == WELSCH) {
      s1 = welsch_local(x, n, a, mean, y1, f1, H1);
      s2 = welsch_local(x, n, a, median, y2, f2, H2);
    } else {
      s1 = tq_local(x, n, a, mean, y1, H1, f1);
      s2 = tq_local(x, n, a, median, y2, H2, f2);
    }
    // the lower objective; near-ties (rounding level) keep the smaller y, as the eager code
    const T tol = 8 * Eps<T>::v * T(n) * (P == WELSCH ? T(1) : T(0.5));  // f in φ's ceiling
    if (f2 < f1 - tol || (std::abs(f2 - f1) <= tol && y2 < y1)) { y = y2; H = H2; return s2; }
    y = y1;
    H = H1;
    return s1;
  }
}

template <typename T, int P>
static void pool_forward_p(const T* x, const T* alpha, T* y, T* H, int8_t* status, int64_t n,
                           int64_t r0, int64_t r1) {
  std::vector<T> buf;
  for (int64_t b = r0; b < r1; ++b)
    status[b] = (int8_t)pool_row<T, P>(x + b * n, n, alpha[b], buf, y[b], H[b]);
}

template <typename T>
static void pool_forward(const T* x, const T* alpha, T* y, T* H, int8_t* status, int64_t n,
                         int pen, int64_t r0, int64_t r1) {
  switch (pen) {
    case QUAD: pool_forward_p<T, QUAD>(x, alpha, y, H, status, n, r0, r1); break;
    case PHUBER: pool_forward_p<T, PHUBER>(x, alpha, y, H, status, n, r0, r1); break;
    case HUBER: pool_forward_p<T, HUBER>(x, alpha, y, H, status, n, r0, r1); break;
    case WELSCH: pool_forward_p<T, WELSCH>(x, alpha, y, H, status, n, r0, r1); break;
    default: pool_forward_p<T, TRUNC>(x, alpha, y, H, status, n, r0, r1); break;
  }
}

// ---------------------------------------------------------------- robust pooling, backward
// One pass with H = Σφ'' from the forward solve (taken at this very y):
// gx_i = (v/H) φ''(y − x_i)  [= −(v H⁻¹) B_i, B_i = −φ''],  ga = −v Σ ∂_α φ'(y − x_i) / H.
// For Welsch H, φ'' and ∂_α φ' all come scaled by α² (no α² formed: tiny/huge α).
template <typename T, int P>
static int pool_back_row(const T* x, int64_t n, T y, T a, T H, T v, T* gx, T& ga) {
  const T ia = T(1) / a;
  T D = 0;
  ga = 0;
  if (H > 0) {
    const T c = v / H;
    T Hy = H;  // pseudo-Huber, Welsch: Σφ'' re-accumulated at this y (see below)
    if constexpr (P == QUAD) {
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) gx[i] = c;
    } else if constexpr (P == PHUBER) {
      T hs = 0;
#pragma omp simd reduction(+ : D, hs)
      for (int64_t i = 0; i < n; ++i) {
        T u = (y - x[i]) * ia;
        T s = T(1) / std::sqrt(T(1) + u * u), s3 = s * s * s;
        gx[i] = c * s3;
        D += u * u * u * s3;
        hs += s3;
      }
      Hy = hs;
    } else if constexpr (P == HUBER) {
      const T at = huber_kink(y, a);
#pragma omp simd reduction(+ : D)
      for (int64_t i = 0; i < n; ++i) {
        T z = y - x[i];
        bool inl = std::abs(z) <= at;
        gx[i] = inl ? c : T(0);
        D += inl ? T(0) : (z > 0 ? T(1) : T(-1));
      }
    } else if constexpr (P == WELSCH) {
      T hs = 0, sw = 0;
#pragma omp simd reduction(+ : D, hs, sw)
      for (int64_t i = 0; i < n; ++i) {
        T u = (y - x[i]) * ia, u2 = u * u;
        T w = vexp(T(-0.5) * u2);
        T d2 = (T(1) - u2) * w;
        gx[i] = c * d2;
        D += u * w * (u2 - T(2));
        hs += d2;
        sw += w;
      }
      Hy = hs;
      // A degenerate minimum (e.g. x = (0, 2), α = 1: two points 2α apart) has H = 0, but the
      // solver fixes y there only to ~ε^⅓, so H came out ~ε^⅔·Σw > 0 and the gradient was ±1e5
      // (backend-dependent). y is found to δ ≈ ε·Σw/H (relative to α), which moves H by
      // ≈ 2δ·Σw: below 10√ε·Σw that is percents of H or more, so treat it as H = 0 (warned).
      if (!(hs > 10 * std::sqrt(Eps<T>::v) * sw)) {
        for (int64_t i = 0; i < n; ++i) gx[i] = 0;
        return 1;
      }
    } else {
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) gx[i] = std::abs(y - x[i]) < a ? c : T(0);
    }
    // The forward's H was taken one converged Newton step (pseudo-Huber) or one final
    // correction (Welsch) before y: a step of up to ~eps·|y| moves u = (y − x_i)/α by eps·|y|/α,
    // which changes φ'' by percents when α ≪ |y| (float32, |x| ≈ 1000, α = 0.01: ∂L/∂x summed
    // to 1 ± 2.5%). Use H at this y; the extra pass over gx (in L1) runs only when they differ.
    if (Hy > 0 && Hy != H) {
      const T f = H / Hy;
      if (std::abs(f - T(1)) > 8 * Eps<T>::v) {
#pragma omp simd
        for (int64_t i = 0; i < n; ++i) gx[i] *= f;
      }
      H = Hy;
    }
    ga = -v * D / H;
    return 0;
  }
  if constexpr (P == HUBER) {  // y is the midpoint of the interval of minimizers
    // x_j, x_k: the neighbours of y (the middle order statistics, see pool_row)
    T xj = -std::numeric_limits<T>::infinity(), xk = std::numeric_limits<T>::infinity();
    for (int64_t i = 0; i < n; ++i) {
      if (x[i] <= y) xj = std::max(xj, x[i]);
      if (x[i] > y) xk = std::min(xk, x[i]);
    }
    T cj = 0, ck = 0;
    for (int64_t i = 0; i < n; ++i) {
      cj += x[i] == xj ? T(1) : T(0);
      ck += x[i] == xk ? T(1) : T(0);
    }
    for (int64_t i = 0; i < n; ++i)
      gx[i] = x[i] == xj ? T(0.5) * v / cj : (x[i] == xk ? T(0.5) * v / ck : T(0));
    return 0;
  }
  if constexpr (P == TRUNC) {  // flat objective, y stayed at the mean
    for (int64_t i = 0; i < n; ++i) gx[i] = v / T(n);
    return 0;
  }
  for (int64_t i = 0; i < n; ++i) gx[i] = 0;
  return 1;
}

template <typename T, int P>
static void pool_backward_p(const T* x, const T* y, const T* alpha, const T* H, const T* v, T* gx,
                            T* ga, int8_t* status, int64_t n, int need_a, int64_t r0, int64_t r1) {
  for (int64_t b = r0; b < r1; ++b) {
    T g;
    status[b] = (int8_t)pool_back_row<T, P>(x + b * n, n, y[b], alpha[b], H[b], v[b], gx + b * n, g);
    if (need_a) ga[b] = g;
  }
}

template <typename T>
static void pool_backward(const T* x, const T* y, const T* alpha, const T* H, const T* v, T* gx,
                          T* ga, int8_t* status, int64_t n, int pen, int need_a, int64_t r0,
                          int64_t r1) {
  switch (pen) {
    case QUAD: pool_backward_p<T, QUAD>(x, y, alpha, H, v, gx, ga, status, n, need_a, r0, r1); break;
    case PHUBER: pool_backward_p<T, PHUBER>(x, y, alpha, H, v, gx, ga, status, n, need_a, r0, r1); break;
    case HUBER: pool_backward_p<T, HUBER>(x, y, alpha, H, v, gx, ga, status, n, need_a, r0, r1); break;
    case WELSCH: pool_backward_p<T, WELSCH>(x, y, alpha, H, v, gx, ga, status, n, need_a, r0, r1); break;
    default: pool_backward_p<T, TRUNC>(x, y, alpha, H, v, gx, ga, status, n, need_a, r0, r1); break;
  }
}

// ---------------------------------------------------------------- projections
// kind: 0 sphere, 1 ball, 2 simplex; p: 1, 2, 0 (= inf).
// Threshold τ with Σ max(a_i − τ, 0) = r (Michelot's pivoting; same τ as Duchi's sort).
template <typename T>
static T threshold(const T* a, int64_t n, T r, T total) {
  T tau = (total - r) / T(n), prev = T(n);
  for (int it = 0; it < 1000; ++it) {
    T s = 0, c = 0;
    const T t = tau;
#pragma omp simd reduction(+ : s, c)
    for (int64_t i = 0; i < n; ++i) {
      bool in = a[i] > t;
      s += in ? a[i] : T(0);
      c += in ? T(1) : T(0);
    }
    tau = (s - r) / c;
    if (c == prev) break;
    prev = c;
  }
  return tau;
}

template <typename T>
static int proj_row(const T* x, T* y, int64_t n, T r, int p, int kind, T& aux) {
  T acc = 0;
  if (kind == 2) {  // simplex
#pragma omp simd reduction(+ : acc)
    for (int64_t i = 0; i < n; ++i) acc += x[i];
    if (!finite_bits(acc)) return all_finite(x, n) ? 3 : 2;  // 3: finite, but Σx overflowed
    // shift by max x (τ is translation-equivariant): b_i − τ_b keeps r even when |x| ≫ r
    T mx = x[0];
#pragma omp simd reduction(max : mx)
    for (int64_t i = 0; i < n; ++i) mx = x[i] > mx ? x[i] : mx;
    T tb = 0;
#pragma omp simd reduction(+ : tb)
    for (int64_t i = 0; i < n; ++i) {
      y[i] = x[i] - mx;
      tb += y[i];
    }
    T tau = threshold(y, n, r, tb), sy = 0;
#pragma omp simd reduction(+ : sy)
    for (int64_t i = 0; i < n; ++i) {
      y[i] = y[i] > tau ? y[i] - tau : T(0);
      sy += y[i];
    }
    aux = 1;
    return std::abs(sy - r) > T(0.01) * r ? 4 : 0;  // cancellation: x ≫ r for this dtype
  }
  if (p == 2) {
#pragma omp simd reduction(+ : acc)
    for (int64_t i = 0; i < n; ++i) acc += x[i] * x[i];
    T nrm = std::sqrt(acc);
    if (!finite_bits(acc) || acc < std::numeric_limits<T>::min() / Eps<T>::v) {
      // overflow, NaN/Inf, or (partial) underflow of Σx²: rescale by max |x|
      T m = 0;
#pragma omp simd reduction(max : m)
      for (int64_t i = 0; i < n; ++i) m = std::abs(x[i]) > m ? std::abs(x[i]) : m;
      if (m > 0) {
        T s2 = 0;  // x/m, not x·(1/m): 1/m is subnormal for m near the dtype's largest value
#pragma omp simd reduction(+ : s2)
        for (int64_t i = 0; i < n; ++i) s2 += (x[i] / m) * (x[i] / m);
        if (!finite_bits(s2) || !finite_bits(m)) return 2;
        const T sr = std::sqrt(s2);
        nrm = m * sr;
        if (kind == 0 || nrm > r) {
          // y = (x/m)·(r/‖x/m‖), never forming r/‖x‖: ‖x‖ itself may overflow (x near the
          // dtype's largest value: x·(r/‖x‖) was 0) or be subnormal (r/‖x‖ = inf: y was inf)
          aux = nrm;
          const T c = r / sr;
          for (int64_t i = 0; i < n; ++i) y[i] = (x[i] / m) * c;
          return 0;
        }
      } else {
        if (acc != acc) return 2;
        nrm = 0;
      }
    }
    aux = nrm;
    if (kind == 0 && nrm == 0) {
      T c = r / std::sqrt(T(n));
      for (int64_t i = 0; i < n; ++i) y[i] = c;
      return 6;
    }
    T sc = (kind == 1 && !(nrm > r)) ? T(1) : r / nrm;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) y[i] = x[i] * sc;
    return 0;
  }
  if (p == 1) {
    T s = 0;
#pragma omp simd reduction(+ : acc, s)
    for (int64_t i = 0; i < n; ++i) { acc += std::abs(x[i]); s += x[i]; }
    if (!finite_bits(s) || !finite_bits(acc)) return all_finite(x, n) ? 3 : 2;  // 3: Σ|x| overflowed
    if (acc > r) {
      // τ on b = |x| − max|x| (translation-equivariant; keeps r even when |x| ≫ r)
      T am = 0, tb = 0;
#pragma omp simd reduction(max : am)
      for (int64_t i = 0; i < n; ++i) am = std::abs(x[i]) > am ? std::abs(x[i]) : am;
#pragma omp simd reduction(+ : tb)
      for (int64_t i = 0; i < n; ++i) {
        y[i] = std::abs(x[i]) - am;
        tb += y[i];
      }
      T tau = threshold(y, n, r, tb), sy = 0;
#pragma omp simd reduction(+ : sy)
      for (int64_t i = 0; i < n; ++i) {
        T m = y[i] - tau;
        m = m > 0 ? m : T(0);
        sy += m;
        y[i] = x[i] > 0 ? m : (x[i] < 0 ? -m : T(0));
      }
      if (std::abs(sy - r) > T(0.01) * r) { aux = 1; return 4; }  // cancellation: x ≫ r
      aux = 1;
    } else if (kind == 0) {
      T tau = (r - acc) / T(n);
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) y[i] = x[i] + (x[i] >= 0 ? tau : -tau);
      aux = 1;
      if (acc == 0) return 6;  // x = 0: every point of the sphere with all |y_i| = r/n is nearest
    } else {
      for (int64_t i = 0; i < n; ++i) y[i] = x[i];
      aux = 0;
    }
    return 0;
  }
  T m = 0;  // p = inf
  T s = 0;
#pragma omp simd reduction(max : m) reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) { m = std::max(m, std::abs(x[i])); s += x[i]; }
  if (!finite_bits(s) && !all_finite(x, n)) return 2;  // (Σx may overflow for finite x: fine)
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] > r ? r : (x[i] < -r ? -r : x[i]);
  aux = kind == 1 ? (m > r ? T(1) : T(0)) : T(1);
  if (kind == 0 && m < r) {
    int64_t k = 0;
    for (int64_t i = 0; i < n; ++i) if (std::abs(x[i]) == m) { k = i; break; }
    y[k] = x[k] >= 0 ? r : -r;
    if (m == 0) return 6;  // x = 0: every ±r·e_i is nearest
  }
  return 0;
}

template <typename T>
static void proj_forward(const T* x, const T* r, T* y, T* aux, int8_t* status, int64_t n, int p,
                         int kind, int64_t r0, int64_t r1) {
  for (int64_t b = r0; b < r1; ++b) status[b] = (int8_t)proj_row(x + b * n, y + b * n, n, r[b], p, kind, aux[b]);
}

template <typename T>
static void proj_back_row(const T* v, const T* y, T* gx, int64_t n, T r, T aux, int p, int kind,
                          int masked, T& gr) {
  if (kind == 2) {  // simplex
    T sv = 0, c = 0;
#pragma omp simd reduction(+ : sv, c)
    for (int64_t i = 0; i < n; ++i) { bool s = y[i] > 0; sv += s ? v[i] : T(0); c += s ? T(1) : T(0); }
    T m = c > 0 ? sv / c : T(0);
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) gx[i] = y[i] > 0 ? v[i] - m : T(0);
    gr = m;
    return;
  }
  bool active = p == 2 ? (kind == 0 || aux > r) : aux > 0;
  if (!active) {
    for (int64_t i = 0; i < n; ++i) gx[i] = v[i];
    gr = 0;
    return;
  }
  if (p == 2) {
    // ŷ = y/r as y·(1/r), or by division where 1/r overflows (a subnormal radius: ŷ was inf
    // and the gradient NaN)
    const T ir = T(1) / r;
    const bool fast = finite_bits(ir);
    T yv = 0;
    if (fast) {
#pragma omp simd reduction(+ : yv)
      for (int64_t i = 0; i < n; ++i) yv += y[i] * ir * v[i];
    } else {
      for (int64_t i = 0; i < n; ++i) yv += y[i] / r * v[i];
    }
    gr = yv;
    if (aux == 0) { for (int64_t i = 0; i < n; ++i) gx[i] = 0; return; }
    const T c = r / aux;  // (r/‖x‖)(I − ŷŷᵀ)v
    if (fast) {
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) gx[i] = c * (v[i] - y[i] * ir * yv);
    } else {
      for (int64_t i = 0; i < n; ++i) gx[i] = c * (v[i] - y[i] / r * yv);
    }
    return;
  }
  if (p == 1) {
    T sv = 0, c = 0;
#pragma omp simd reduction(+ : sv, c)
    for (int64_t i = 0; i < n; ++i) {
      T s = y[i] > 0 ? T(1) : (y[i] < 0 ? T(-1) : T(0));
      sv += s * v[i];
      c += s * s;
    }
    sv /= (c > 0 ? c : T(1));
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      T s = y[i] > 0 ? T(1) : (y[i] < 0 ? T(-1) : T(0));
      gx[i] = (masked ? v[i] * s * s : v[i]) - s * sv;
    }
    gr = sv;
    return;
  }
  T sv = 0, c = 0;  // p = inf
#pragma omp simd reduction(+ : sv, c)
  for (int64_t i = 0; i < n; ++i) {
    bool t = std::abs(y[i]) >= r;
    sv += t ? (y[i] >= 0 ? v[i] : -v[i]) : T(0);
    c += t ? T(1) : T(0);
  }
  if (masked) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) gx[i] = std::abs(y[i]) >= r ? T(0) : v[i];
    gr = sv;
  } else {
    sv /= (c > 0 ? c : T(1));
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      T s = std::abs(y[i]) >= r ? (y[i] >= 0 ? T(1) : T(-1)) : T(0);
      gx[i] = v[i] - s * sv;
    }
    gr = sv;
  }
}

template <typename T>
static void proj_backward(const T* v, const T* y, const T* r, const T* aux, T* gx, T* gr, int64_t n,
                          int p, int kind, int masked, int64_t r0, int64_t r1) {
  for (int64_t b = r0; b < r1; ++b)
    proj_back_row(v + b * n, y + b * n, gx + b * n, n, r[b], aux[b], p, kind, masked, gr[b]);
}

}  // namespace

#define DDN_EXPORT(T, S)                                                                       \
  extern "C" void pool_forward_##S(const T* x, const T* a, T* y, T* H, int8_t* st, int64_t n,    \
                                   int pen, int64_t r0, int64_t r1) {                          \
    pool_forward<T>(x, a, y, H, st, n, pen, r0, r1);                                           \
  }                                                                                            \
  extern "C" void pool_backward_##S(const T* x, const T* y, const T* a, const T* H, const T* v,  \
                                    T* gx, T* ga, int8_t* st, int64_t n, int pen, int need_a,  \
                                    int64_t r0, int64_t r1) {                                  \
    pool_backward<T>(x, y, a, H, v, gx, ga, st, n, pen, need_a, r0, r1);                       \
  }                                                                                            \
  extern "C" void proj_forward_##S(const T* x, const T* r, T* y, T* aux, int8_t* st, int64_t n,  \
                                   int p, int kind, int64_t r0, int64_t r1) {                  \
    proj_forward<T>(x, r, y, aux, st, n, p, kind, r0, r1);                                     \
  }                                                                                            \
  extern "C" void proj_backward_##S(const T* v, const T* y, const T* r, const T* aux, T* gx,     \
                                    T* gr, int64_t n, int p, int kind, int masked, int64_t r0, \
                                    int64_t r1) {                                              \
    proj_backward<T>(v, y, r, aux, gx, gr, n, p, kind, masked, r0, r1);                        \
  }

DDN_EXPORT(float, f32)
DDN_EXPORT(double, f64)
