/* Batched im2col + GEMM convolution, support code of the ops in gemm_conv.py.
 *
 * The convolution is Theano's conv2d(x, w, border_mode='half'): stride 1, zero padding of
 * (k - 1) / 2, filters flipped (a true convolution):
 *     y[n, f, p, q] = sum_{c, i, j} w[f, c, i, j] * x[n, c, p + ph - i, q + pw - j].
 * The column matrix of a group of images has one row per (c, i, j) and one column per
 * (n, p, q), so each pass is a few large GEMMs with w viewed as an (F, C*kh*kw) matrix.
 * A masked (autoregressive) convolution has kernel taps that are zero for every filter;
 * the column matrix then holds only the other taps, which saves their multiply-adds.
 * All arrays are C-contiguous float32, N > 0. Functions return 0, or -1 when out of memory.
 */

/* The kernel taps (flat index i * kw + j) in the column matrix: all kh * kw of them when
 * index is NULL, else the n listed. */
typedef struct { int kh, kw, n; const int* index; } iafconv_taps;

static inline int iafconv_tap(const iafconv_taps* taps, int t)
{
    return taps->index ? taps->index[t] : t;
}

/* Where tap t reads the input: x[p + dy, q + dx] for output (p, q), valid for q0 <= q < q1. */
static inline void iafconv_tap_offset(const iafconv_taps* taps, int t, int W, int* dy, int* dx,
                                      int* q0, int* q1)
{
    const int k = iafconv_tap(taps, t), i = k / taps->kw, j = k % taps->kw;
    *dy = (taps->kh - 1) / 2 - i;
    *dx = (taps->kw - 1) / 2 - j;
    *q0 = *dx < 0 ? -*dx : 0;
    *q1 = *dx > 0 ? W - *dx : W;
}

/* cols[(c, t), (n, p, q)] = x[n, c, p + ph - i, q + pw - j] for tap t = (i, j), 0 outside
 * the image. */
static void iafconv_im2col(const float* x, float* cols, int N, int C, int H, int W,
                           const iafconv_taps* taps)
{
    const long HW = (long)H * W, NHW = N * HW;
    for (int r = 0; r < C * taps->n; ++r) {
        const int c = r / taps->n;
        int dy, dx, q0, q1;
        iafconv_tap_offset(taps, r % taps->n, W, &dy, &dx, &q0, &q1);
        for (int n = 0; n < N; ++n) {
            const float* src = x + ((long)n * C + c) * HW;
            float* dst = cols + r * NHW + n * HW;
            for (int p = 0; p < H; ++p, dst += W) {
                const int sp = p + dy;
                if (sp < 0 || sp >= H || q1 <= q0) {
                    memset(dst, 0, W * sizeof(float));
                    continue;
                }
                for (int q = 0; q < q0; ++q) dst[q] = 0.0f;
                memcpy(dst + q0, src + (long)sp * W + q0 + dx, (q1 - q0) * sizeof(float));
                for (int q = q1; q < W; ++q) dst[q] = 0.0f;
            }
        }
    }
}

/* The adjoint of im2col: each pixel of x sums the column entries copied from it. */
static void iafconv_col2im(const float* cols, float* x, int N, int C, int H, int W,
                           const iafconv_taps* taps)
{
    const long HW = (long)H * W, NHW = N * HW;
    for (int c = 0; c < C; ++c) {
        for (int n = 0; n < N; ++n)
            memset(x + ((long)n * C + c) * HW, 0, HW * sizeof(float));
        for (int t = 0; t < taps->n; ++t) {
            const long r = (long)c * taps->n + t;
            int dy, dx, q0, q1;
            iafconv_tap_offset(taps, t, W, &dy, &dx, &q0, &q1);
            for (int n = 0; n < N; ++n) {
                const float* src = cols + r * NHW + n * HW;
                float* dst = x + ((long)n * C + c) * HW;
                for (int p = 0; p < H; ++p) {
                    const int sp = p + dy;
                    if (sp < 0 || sp >= H) continue;
                    float* d = dst + (long)sp * W + dx;
                    const float* s = src + (long)p * W;
                    for (int q = q0; q < q1; ++q) d[q] += s[q];
                }
            }
        }
    }
}

/* The inverse: g (F, C, T) -> gw (F, C, kh * kw), zero at the unused taps. */
static void iafconv_all_taps(const float* g, float* gw, int F, int C, const iafconv_taps* taps)
{
    const int KK = taps->kh * taps->kw;
    memset(gw, 0, (size_t)F * C * KK * sizeof(float));
    for (long fc = 0; fc < (long)F * C; ++fc)
        for (int t = 0; t < taps->n; ++t)
            gw[fc * KK + taps->index[t]] = g[fc * taps->n + t];
}

/* (A, B, L) -> (B, A, L): swaps the two leading axes, e.g. (n, F, HW) <-> (F, n, HW). */
static void iafconv_swap_axes(const float* a, float* b, int A, int B, long L)
{
    for (int ia = 0; ia < A; ++ia)
        for (int ib = 0; ib < B; ++ib)
            memcpy(b + ((long)ib * A + ia) * L, a + ((long)ia * B + ib) * L, L * sizeof(float));
}

/* out = op(a) . op(b) with the column-major Fortran sgemm_; the callers pass row-major
 * matrices, each of which is the transpose seen column-major. */
static void iafconv_gemm(char ta, char tb, int m, int n, int k, const float* a, int lda,
                         const float* b, int ldb, float* out, int ldo)
{
    const float one = 1.0f, zero = 0.0f;
    sgemm_(&ta, &tb, &m, &n, &k, &one, a, &lda, b, &ldb, &zero, out, &ldo);
}

/* OpenBLAS's own threads are switched off while our threads each call it (weak, so that
 * other BLAS libraries still link). */
extern "C" void openblas_set_num_threads(int) __attribute__((weak));
extern "C" int openblas_get_num_threads(void) __attribute__((weak));

/* The minibatch is cut into chunks of about IAFCONV_COLUMNS output pixels, whole images
 * each, which the threads share dynamically. The cut depends only on the shapes, never on
 * the number of threads, so results are the same bit for bit however the work is shared. */
#define IAFCONV_COLUMNS 512

static int iafconv_chunk_images(int N, long HW)
{
    long k = (IAFCONV_COLUMNS + HW - 1) / HW;
    return (int)(k < N ? k : N);
}

/* Work areas kept between calls (grown when needed), so that the hot loop does not map
 * fresh pages each time: the threads' scratch, partial sums, used-tap weights. */
enum { IAFCONV_SCRATCH, IAFCONV_PARTIAL, IAFCONV_USED_TAPS, IAFCONV_BUFFERS };

static float* iafconv_buffer(int which, size_t floats)
{
    static float* buffers[IAFCONV_BUFFERS];
    static size_t sizes[IAFCONV_BUFFERS];
    if (floats > sizes[which]) {
        free(buffers[which]);
        buffers[which] = (float*)malloc(floats * sizeof(float));
        sizes[which] = buffers[which] ? floats : 0;
    }
    return buffers[which];
}

/* w (F, C, kh * kw) with only the used taps, (F, C, T): w itself when all are used, else
 * a copy in a work area. NULL when out of memory. */
static const float* iafconv_used_taps(const float* w, int F, int C, const iafconv_taps* taps)
{
    if (!taps->index) return w;
    float* out = iafconv_buffer(IAFCONV_USED_TAPS, (size_t)F * C * taps->n);
    if (!out) return NULL;
    const int KK = taps->kh * taps->kw;
    for (long fc = 0; fc < (long)F * C; ++fc)
        for (int t = 0; t < taps->n; ++t)
            out[fc * taps->n + t] = w[fc * KK + taps->index[t]];
    return out;
}

/* Runs body(chunk, first image n0, images nc, thread scratch) for every chunk on all
 * threads; sets status to -1 when out of memory. */
#define IAFCONV_FOR_CHUNKS(N, HW, scratch_floats, body)                                  \
    do {                                                                                \
        const int nc_ = iafconv_chunk_images(N, HW);                                    \
        const int chunks_ = (N + nc_ - 1) / nc_;                                        \
        const int threads_ = chunks_ < omp_get_max_threads() ? chunks_ : omp_get_max_threads(); \
        const size_t per_thread_ = (scratch_floats);                                    \
        float* scratch_all_ = iafconv_buffer(IAFCONV_SCRATCH, per_thread_ * threads_);  \
        if (!scratch_all_) { status = -1; break; }                                     \
        const int blas_threads_ = openblas_get_num_threads ? openblas_get_num_threads() : 1; \
        if (openblas_set_num_threads) openblas_set_num_threads(1);                      \
        _Pragma("omp parallel for schedule(dynamic) num_threads(threads_)")             \
        for (int chunk = 0; chunk < chunks_; ++chunk) {                                 \
            const int n0 = chunk * nc_, nc = n0 + nc_ <= N ? nc_ : N - n0;             \
            float* scratch = scratch_all_ + per_thread_ * omp_get_thread_num();         \
            body                                                                        \
        }                                                                               \
        if (openblas_set_num_threads) openblas_set_num_threads(blas_threads_);          \
    } while (0)

/* y (N, F, H, W) = conv(x (N, C, H, W), w (F, C, kh, kw)). */
static int iafconv_forward(const float* x, const float* w, float* y, int N, int C, int H,
                           int W, int F, const iafconv_taps* taps)
{
    const long HW = (long)H * W, K = (long)C * taps->n;
    const long cols = iafconv_chunk_images(N, HW) * HW;
    const float* wk = iafconv_used_taps(w, F, C, taps);
    if (!wk) return -1;
    int status = 0;
    IAFCONV_FOR_CHUNKS(N, HW, (K + F) * cols, {
        float* columns = scratch;
        float* y_fn = scratch + K * cols;
        iafconv_im2col(x + n0 * C * HW, columns, nc, C, H, W, taps);
        /* y_fn (F, nc HW) = w (F, K) . columns (K, nc HW) */
        iafconv_gemm('N', 'N', nc * HW, F, K, columns, nc * HW, wk, K, y_fn, nc * HW);
        iafconv_swap_axes(y_fn, y + n0 * F * HW, F, nc, HW);
    });
    return status;
}

/* gw (F, C, kh, kw) = d sum(gy * y) / dw, with gy (N, F, H, W) the gradient of y.
 * Each chunk's share goes to its own partial sum; they are added in chunk order. */
static int iafconv_grad_weights(const float* x, const float* gy, float* gw, int N, int C,
                                int H, int W, int F, const iafconv_taps* taps)
{
    const long HW = (long)H * W, K = (long)C * taps->n;
    const int nc_max = iafconv_chunk_images(N, HW), chunks = (N + nc_max - 1) / nc_max;
    const long cols = nc_max * HW;
    /* One (F, K) partial sum per chunk, and their total (gw itself when all taps are used). */
    float* partial = iafconv_buffer(IAFCONV_PARTIAL, (size_t)(chunks + 1) * F * K);
    if (!partial) return -1;
    int status = 0;
    IAFCONV_FOR_CHUNKS(N, HW, (K + F) * cols, {
        float* columns = scratch;
        float* gy_fn = scratch + K * cols;
        iafconv_im2col(x + n0 * C * HW, columns, nc, C, H, W, taps);
        iafconv_swap_axes(gy + n0 * F * HW, gy_fn, nc, F, HW);
        /* partial (F, K) = gy_fn (F, nc HW) . columns (K, nc HW)^T */
        iafconv_gemm('T', 'N', K, F, nc * HW, columns, nc * HW, gy_fn, nc * HW,
                     partial + chunk * F * K, K);
    });
    if (status) return status;
    float* sum = taps->index ? partial + chunks * F * K : gw;
    #pragma omp parallel for schedule(static)
    for (long e = 0; e < F * K; ++e) {
        float total = partial[e];
        for (int chunk = 1; chunk < chunks; ++chunk) total += partial[chunk * F * K + e];
        sum[e] = total;
    }
    if (taps->index) iafconv_all_taps(sum, gw, F, C, taps);
    return 0;
}

/* gx (N, C, H, W) = d sum(gy * y) / dx. */
static int iafconv_grad_inputs(const float* w, const float* gy, float* gx, int N, int C,
                               int H, int W, int F, const iafconv_taps* taps)
{
    const long HW = (long)H * W, K = (long)C * taps->n;
    const long cols = iafconv_chunk_images(N, HW) * HW;
    const float* wk = iafconv_used_taps(w, F, C, taps);
    if (!wk) return -1;
    int status = 0;
    IAFCONV_FOR_CHUNKS(N, HW, (K + F) * cols, {
        float* columns = scratch;
        float* gy_fn = scratch + K * cols;
        iafconv_swap_axes(gy + n0 * F * HW, gy_fn, nc, F, HW);
        /* columns (K, nc HW) = w (F, K)^T . gy_fn (F, nc HW) */
        iafconv_gemm('N', 'T', nc * HW, K, F, gy_fn, nc * HW, wk, K, columns, nc * HW);
        iafconv_col2im(columns, gx + n0 * C * HW, nc, C, H, W, taps);
    });
    return status;
}
