from libc.stdint cimport int64_t

cdef extern from "activation.h" nogil:
    int QKV_ACT_NONE, QKV_ACT_GELU_TANH, QKV_ACT_GELU_ERF, QKV_ACT_RELU
    int qkv_bias_act_f32(float* out, const float* x, const float* bias, int64_t R, int64_t N, int act, int simd,
                         int n_threads)
    int qkv_bias_act_f64(double* out, const double* x, const double* bias, int64_t R, int64_t N, int act,
                         int simd, int n_threads)
    int qkv_act_backward_f32(float* dx, float* dbias, const float* dy, const float* x, int64_t R, int64_t N,
                             int act, int simd, int n_threads)
    int qkv_act_backward_f64(double* dx, double* dbias, const double* dy, const double* x, int64_t R, int64_t N,
                             int act, int simd, int n_threads)
    int qkv_swiglu_f32(float* out, const float* gate, const float* up, int64_t R, int64_t N, int64_t ldg,
                       int64_t ldu, int simd, int n_threads)
    int qkv_swiglu_f64(double* out, const double* gate, const double* up, int64_t R, int64_t N, int64_t ldg,
                       int64_t ldu, int simd, int n_threads)
    int qkv_swiglu_backward_f32(float* dgate, float* dup, const float* dy, const float* gate, const float* up,
                                int64_t R, int64_t N, int simd, int n_threads)
    int qkv_swiglu_backward_f64(double* dgate, double* dup, const double* dy, const double* gate,
                                const double* up, int64_t R, int64_t N, int simd, int n_threads)
