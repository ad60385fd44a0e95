/*
qkv_math.h: branch-free exp and GELU for float and double, written so that GCC vectorises the
loops that call them (no libm calls, no branches, bit tricks through unions).

exp: Cody-Waite range reduction x = n*ln2 + r, |r| <= ln2/2, a polynomial for e^r, then 2^n built
in the exponent bits. Rounding to nearest uses the 1.5*2^23 (1.5*2^52) magic number, which is exact
without -ffast-math. Inputs below the flush point return exactly 0 (so exp(-inf) == 0 and masked
scores vanish); inputs above 88 (708 for double) return +inf, slightly early (e^88.7 is the true
overflow), which keeps the polynomial's range small. NaN stays NaN.
Accuracy: ~1 ulp (float, Cephes coefficients), ~2 ulp (double, degree-13 Taylor on |r| <= 0.347).

GELU (tanh): 0.5 x (1 + tanh(u)) == x * sigmoid(2u) == x / (1 + e^(-2u)), u = sqrt(2/pi)(x + 0.044715 x^3).
The sigmoid form has no cancellation for negative x and needs one exp.
GELU (erf): 0.5 x erfc(-x/sqrt2). float: erfc from Numerical Recipes' Chebyshev fit (fractional
error < 1.2e-7 everywhere), evaluated in double; double: libm erfc (scalar loop).
*/
#ifndef QKV_MATH_H
#define QKV_MATH_H

#include <math.h>
#include <stdint.h>

static inline float qkv_expf(float x) {
    const float lo = -87.0f, hi = 88.0f;
    float xc = x < hi ? x : hi;  // NaN -> hi: the integer conversion below never sees NaN
    xc = xc > lo ? xc : lo;
    const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
    float n = (xc * 1.44269504088896341f + magic) - magic;
    float r = xc - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { int32_t i; float f; } s;
    s.i = (int32_t)((uint32_t)((int32_t)n + 127) << 23);  // n in [-126, 127]: a normal 2^n
    float y = p * s.f;
    y = x > hi ? (float)HUGE_VAL : y;
    y = x < lo ? 0.0f : y;
    return x != x ? x : y;
}

static inline double qkv_exp(double x) {
    const double lo = -708.0, hi = 708.0;
    double xc = x < hi ? x : hi;  // NaN -> hi: the integer conversion below never sees NaN
    xc = xc > lo ? xc : lo;
    const double magic = 6755399441055744.0;  // 1.5 * 2^52
    double n = (xc * 1.4426950408889634 + magic) - magic;
    double r = xc - n * 6.93147180369123816490e-01;
    r = r - n * 1.90821492927058770002e-10;
    // Taylor to r^13 / 13!, Horner
    double p = 1.0 / 6227020800.0;
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    union { int64_t i; double f; } s;
    s.i = (int64_t)((uint64_t)((int64_t)(int32_t)n + 1023) << 52);  // via int32: AVX2 has no double->int64 convert
    double y = p * s.f;
    y = x > hi ? HUGE_VAL : y;
    y = x < lo ? 0.0 : y;
    return x != x ? x : y;
}

#define QKV_SQRT_2_OVER_PI 0.79788456080286535588
#define QKV_GELU_C 0.044715

static inline float qkv_gelu_tanh_f(float x) {
    float u = (float)QKV_SQRT_2_OVER_PI * (x + (float)QKV_GELU_C * x * x * x);
    return x / (1.0f + qkv_expf(-2.0f * u));
}

static inline double qkv_gelu_tanh_d(double x) {
    double u = QKV_SQRT_2_OVER_PI * (x + QKV_GELU_C * x * x * x);
    return x / (1.0 + qkv_exp(-2.0 * u));
}

// erfc(z) for z >= 0, fractional error < 1.2e-7 (Numerical Recipes, erfcc)
static inline double qkv_erfc_pos(double z) {
    double t = 1.0 / (1.0 + 0.5 * z);
    double p = 0.17087277;
    p = p * t - 0.82215223;
    p = p * t + 1.48851587;
    p = p * t - 1.13520398;
    p = p * t + 0.27886807;
    p = p * t - 0.18628806;
    p = p * t + 0.09678418;
    p = p * t + 0.37409196;
    p = p * t + 1.00002368;
    p = p * t - 1.26551223;
    return t * qkv_exp(-z * z + p);
}

static inline float qkv_gelu_erf_f(float xf) {
    double x = xf;
    double z = x * 0.70710678118654752440;          // x / sqrt2
    double e = qkv_erfc_pos(z < 0 ? -z : z);         // erfc(|z|)
    double erfc_negz = z < 0 ? e : 2.0 - e;          // erfc(-z)
    return (float)(0.5 * x * erfc_negz);
}

static inline double qkv_gelu_erf_d(double x) {
    return 0.5 * x * erfc(-x * 0.70710678118654752440);
}

// GELU derivatives (the backward). tanh form: d/dx x s = s + x s (1 - s) 2u', s = sigmoid(2u),
// u' = sqrt(2/pi) (1 + 3c x^2). With e = exp(-2u): s = 1/(1 + e) and 1 - s = 1/(1 + 1/e), which
// has no cancellation and is exactly 0 (1) at e = 0 (inf). erf form: Phi(x) + x phi(x).
// In the second term x is clamped to +-1e4, where s(1 - s) and phi(x) are exactly 0, so that
// x^3 * 0 never becomes inf * 0 = NaN for huge or infinite x. NaN stays NaN.
#define QKV_GRAD_CLIP 1e4
#define QKV_INV_SQRT_2PI 0.39894228040143267794

static inline float qkv_gelu_tanh_grad_f(float x) {
    const float a = (float)QKV_SQRT_2_OVER_PI, c = (float)QKV_GELU_C;
    float u = a * (x + c * x * x * x);
    float e = qkv_expf(-2.0f * u);
    float s = 1.0f / (1.0f + e), sm = 1.0f / (1.0f + 1.0f / e);
    float xc = x < -(float)QKV_GRAD_CLIP ? -(float)QKV_GRAD_CLIP : (x > (float)QKV_GRAD_CLIP ? (float)QKV_GRAD_CLIP : x);
    return s + 2.0f * a * xc * (1.0f + 3.0f * c * xc * xc) * s * sm;
}

static inline double qkv_gelu_tanh_grad_d(double x) {
    const double a = QKV_SQRT_2_OVER_PI, c = QKV_GELU_C;
    double u = a * (x + c * x * x * x);
    double e = qkv_exp(-2.0 * u);
    double s = 1.0 / (1.0 + e), sm = 1.0 / (1.0 + 1.0 / e);
    double xc = x < -QKV_GRAD_CLIP ? -QKV_GRAD_CLIP : (x > QKV_GRAD_CLIP ? QKV_GRAD_CLIP : x);
    return s + 2.0 * a * xc * (1.0 + 3.0 * c * xc * xc) * s * sm;
}

// float: in float, with one exp for both terms. erfc(|z|) = t exp(-z^2) Q(t), t = 1/(1 + |z|/2),
// Q(t) = erfcx(z) / t fitted by a degree-11 polynomial (relative error 3e-8; 1.8e-7 evaluated in
// float), and x phi(x) = x exp(-z^2) / sqrt(2 pi) with the same exp(-z^2), z = x / sqrt2. Rounding
// z^2 costs ~(1 + x^2 / 2) ulp in the far tails, the function's own conditioning there; below
// x ~ -13 both terms flush to 0 (< 1e-37). 2.5x faster than the forward's double evaluation.
static inline float qkv_gelu_erf_grad_f(float x) {
    const float clip = (float)QKV_GRAD_CLIP;
    float z = x * 0.70710678118654752440f;
    float az = z < 0 ? -z : z;
    float t = 1.0f / (1.0f + 0.5f * az);
    float q = 2.564643975e-03f;
    q = q * t + 3.072882816e-02f;
    q = q * t - 2.092206627e-01f;
    q = q * t + 4.652909636e-01f;
    q = q * t - 4.365380108e-01f;
    q = q * t + 1.253807098e-01f;
    q = q * t - 5.806657672e-02f;
    q = q * t + 9.351822734e-02f;
    q = q * t + 1.752612591e-01f;
    q = q * t + 2.468924969e-01f;
    q = q * t + 2.820933461e-01f;
    q = q * t + 2.820948064e-01f;
    float g = qkv_expf(-az * az);  // exp(-x^2 / 2)
    float e = t * g * q;           // erfc(|z|)
    float cdf = 0.5f * (z < 0 ? e : 2.0f - e);
    float xc = x < -clip ? -clip : (x > clip ? clip : x);
    return cdf + xc * g * (float)QKV_INV_SQRT_2PI;
}

static inline double qkv_gelu_erf_grad_d(double x) {
    double xc = x < -QKV_GRAD_CLIP ? -QKV_GRAD_CLIP : (x > QKV_GRAD_CLIP ? QKV_GRAD_CLIP : x);
    return 0.5 * erfc(-x * 0.70710678118654752440) + xc * exp(-0.5 * xc * xc) * QKV_INV_SQRT_2PI;
}

#endif  // QKV_MATH_H
