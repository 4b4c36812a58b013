/* Batched im2col + GEMM convolution layer, support code of the ops in gemm_conv.py.
 *
 * The layer is Theano's conv2d(a(x), w, border_mode='half') plus a bias: stride 1, zero
 * padding of (k - 1) / 2, filters flipped (a true convolution),
 *     y[n, f, p, q] = sum_{c, i, j} w[f, c, i, j] * a(x)[n, c, p + ph - i, q + pw - j]
 *                     + border[f, p, q] + b[f],
 * where a is the identity or ELU, and, when the kernel has a pad channel (one input
 * channel more than x, its last), border[f, p, q] is that channel's convolution with an
 * image that is 1 on the zero padding and 0 inside (docs/model.md §2): a fixed border term.
 * The column matrix of a group of images has one row per (c, i, j) and one column per
 * (n, p, q), so each pass is a few large GEMMs with w viewed as an (F, C*kh*kw) matrix.
 * A masked (autoregressive) convolution has kernel taps that are zero for every filter;
 * the column matrix then holds only the other taps, which saves their multiply-adds.
 * All arrays are C-contiguous float32, N > 0. Functions return 0, or -1 when out of memory.
 * iaf_elu and iaf_elu_slope come from c_support.py.
 */

/* The shape of the layer: N images of C channels, H x W pixels, F filters; the kernel taps
 * (flat index i * kw + j) in the column matrix: all kh * kw of them when index is NULL,
 * else the n listed; whether the input goes through ELU first, and whether the kernel has
 * a pad channel (then its rows hold C + 1 channels). */
typedef struct {
    int N, C, H, W, F;
    int kh, kw, n;
    const int* index;
    int elu_input, pad_channel;
} iafconv_layer;

static inline int iafconv_tap(const iafconv_layer* L, int t)
{
    return L->index ? L->index[t] : t;
}

/* Floats in one filter of the kernel, the pad channel included. */
static inline long iafconv_filter_size(const iafconv_layer* L)
{
    return (long)(L->C + L->pad_channel) * L->kh * L->kw;
}

/* Where kernel tap k reads the input: x[p + dy, q + dx] for output (p, q); q0 <= q < q1
 * is where that column lies inside the image. */
static inline void iafconv_offset(const iafconv_layer* L, int k, int* dy, int* dx, int* q0,
                                  int* q1)
{
    const int i = k / L->kw, j = k % L->kw;
    *dy = (L->kh - 1) / 2 - i;
    *dx = (L->kw - 1) / 2 - j;
    *q0 = *dx < 0 ? -*dx : 0;
    *q1 = *dx > 0 ? L->W - *dx : L->W;
}

/* The layer's input a(x) for images n0 .. n0 + nc: x itself, or its ELU in out. */
static const float* iafconv_activated(const iafconv_layer* L, const float* x, int n0, int nc,
                                      float* out)
{
    const long HW = (long)L->H * L->W, start = (long)n0 * L->C * HW, size = nc * L->C * HW;
    if (!L->elu_input) return x + start;
    for (long e = 0; e < size; ++e) out[e] = iaf_elu(x[start + e]);
    return out;
}

/* cols[(c, t), (n, p, q)] = x[n, c, p + ph - i, q + pw - j] for tap t = (i, j), 0 outside
 * the image; x holds nc images. */
static void iafconv_im2col(const iafconv_layer* L, const float* x, float* cols, int nc)
{
    const int C = L->C, H = L->H, W = L->W;
    const long HW = (long)H * W, NHW = nc * HW;
    for (int r = 0; r < C * L->n; ++r) {
        const int c = r / L->n;
        int dy, dx, q0, q1;
        iafconv_offset(L, iafconv_tap(L, r % L->n), &dy, &dx, &q0, &q1);
        for (int n = 0; n < nc; ++n) {
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

/* The adjoint of im2col for nc images: each pixel of gx sums the column entries copied
 * from it; then, for an ELU input, times ELU's slope at x. */
static void iafconv_col2im(const iafconv_layer* L, const float* cols, const float* x,
                           float* gx, int nc)
{
    const int C = L->C, H = L->H, W = L->W;
    const long HW = (long)H * W, NHW = nc * HW;
    for (int c = 0; c < C; ++c) {
        for (int n = 0; n < nc; ++n)
            memset(gx + ((long)n * C + c) * HW, 0, HW * sizeof(float));
        for (int t = 0; t < L->n; ++t) {
            const long r = (long)c * L->n + t;
            int dy, dx, q0, q1;
            iafconv_offset(L, iafconv_tap(L, t), &dy, &dx, &q0, &q1);
            for (int n = 0; n < nc; ++n) {
                const float* src = cols + r * NHW + n * HW;
                float* dst = gx + ((long)n * C + c) * HW;
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
    if (L->elu_input)
        for (long e = 0; e < nc * C * HW; ++e) gx[e] *= iaf_elu_slope(x[e]);
}

/* table (kh kw, H W): 1 where kernel tap k reads the zero padding (where the pad channel
 * is 1) for output pixel (p, q), else 0. */
static void iafconv_padding_table(const iafconv_layer* L, float* table)
{
    const long HW = (long)L->H * L->W;
    for (int k = 0; k < L->kh * L->kw; ++k) {
        int dy, dx, q0, q1;
        iafconv_offset(L, k, &dy, &dx, &q0, &q1);
        for (long pq = 0; pq < HW; ++pq) {
            const long p = pq / L->W, q = pq % L->W;
            table[k * HW + pq] = p + dy < 0 || p + dy >= L->H || q < q0 || q >= q1;
        }
    }
}

/* border (F, H W): the pad channel's convolution, sum over the kernel's taps of the pad
 * channel's weights where they read the padding (table); 0 without a pad channel. */
static void iafconv_border(const iafconv_layer* L, const float* w, const float* table,
                           float* border)
{
    const long HW = (long)L->H * L->W, KK = L->kh * L->kw, R = iafconv_filter_size(L);
    #pragma omp parallel for schedule(static)
    for (int f = 0; f < L->F; ++f) {
        float* out = border + f * HW;
        for (long pq = 0; pq < HW; ++pq) out[pq] = 0.0f;
        for (long k = 0; L->pad_channel && k < KK; ++k) {
            const float weight = w[f * R + L->C * KK + k];
            for (long pq = 0; pq < HW; ++pq) out[pq] += weight * table[k * HW + pq];
        }
    }
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

static int iafconv_chunk_images(const iafconv_layer* L)
{
    const long HW = (long)L->H * L->W;
    long k = (IAFCONV_COLUMNS + HW - 1) / HW;
    return (int)(k < L->N ? k : L->N);
}

/* Work areas kept between calls (grown when needed), so that the hot loop does not map
 * fresh pages each time: the threads' scratch, partial sums, used-tap weights, one
 * (F, H W) map (the border term, or the output gradient summed over the images), and the
 * padding table. */
enum { IAFCONV_SCRATCH, IAFCONV_PARTIAL, IAFCONV_KERNEL, IAFCONV_MAP, IAFCONV_TABLE,
       IAFCONV_BUFFERS };

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

/* The kernel as the GEMMs see it, (F, C T) with row stride *ld: w itself when every tap
 * is used (rows skip the pad channel), else a copy of the used taps. NULL when out of
 * memory. */
static const float* iafconv_kernel(const iafconv_layer* L, const float* w, int* ld)
{
    const long KK = L->kh * L->kw, R = iafconv_filter_size(L);
    *ld = (int)R;
    if (!L->index) return w;
    float* out = iafconv_buffer(IAFCONV_KERNEL, (size_t)L->F * L->C * L->n);
    if (!out) return NULL;
    *ld = L->C * L->n;
    for (long f = 0; f < L->F; ++f)
        for (long c = 0; c < L->C; ++c)
            for (int t = 0; t < L->n; ++t)
                out[(f * L->C + c) * L->n + t] = w[f * R + c * KK + L->index[t]];
    return out;
}

/* Runs body(chunk, first image n0, images nc, thread scratch) for every chunk on all
 * threads; sets status to -1 when out of memory. */
#define IAFCONV_FOR_CHUNKS(L, scratch_floats, body)                                     \
    do {                                                                                \
        const int nc_ = iafconv_chunk_images(L);                                        \
        const int chunks_ = ((L)->N + nc_ - 1) / nc_;                                   \
        const int threads_ = chunks_ < omp_get_max_threads() ? chunks_ : omp_get_max_threads(); \
        const size_t per_thread_ = (scratch_floats);                                    \
        float* scratch_all_ = iafconv_buffer(IAFCONV_SCRATCH, per_thread_ * threads_);  \
        if (!scratch_all_) { status = -1; break; }                                     \
        const int blas_threads_ = openblas_get_num_threads ? openblas_get_num_threads() : 1; \
        if (openblas_set_num_threads) openblas_set_num_threads(1);                      \
        _Pragma("omp parallel for schedule(dynamic) num_threads(threads_)")             \
        for (int chunk = 0; chunk < chunks_; ++chunk) {                                 \
            const int n0 = chunk * nc_, nc = n0 + nc_ <= (L)->N ? nc_ : (L)->N - n0;    \
            float* scratch = scratch_all_ + per_thread_ * omp_get_thread_num();         \
            body                                                                        \
        }                                                                               \
        if (openblas_set_num_threads) openblas_set_num_threads(blas_threads_);          \
    } while (0)

/* gy_fn (F, nc H W) = images n0 .. n0 + nc of gy (N, F, H, W), filter-major. */
static void iafconv_filter_major(const iafconv_layer* L, const float* gy, int n0, int nc,
                                 float* gy_fn)
{
    const long HW = (long)L->H * L->W;
    for (int n = 0; n < nc; ++n)
        for (int f = 0; f < L->F; ++f)
            memcpy(gy_fn + ((long)f * nc + n) * HW, gy + ((long)(n0 + n) * L->F + f) * HW,
                   HW * sizeof(float));
}

/* Floats of one thread's scratch: the columns, the GEMM's (F, nc HW) side, a(x). */
static size_t iafconv_scratch_floats(const iafconv_layer* L)
{
    const long cols = (long)iafconv_chunk_images(L) * L->H * L->W;
    return (size_t)((long)L->C * L->n + L->F + (L->elu_input ? L->C : 0)) * cols;
}

/* y (N, F, H, W) = the layer on x (N, C, H, W) with kernel w (F, C [+ 1], kh, kw), bias b. */
static int iafconv_forward(const iafconv_layer* L, const float* x, const float* w,
                           const float* b, float* y)
{
    const long HW = (long)L->H * L->W, K = (long)L->C * L->n;
    const long cols = iafconv_chunk_images(L) * HW;
    int ld;
    const float* wk = iafconv_kernel(L, w, &ld);
    float* border = iafconv_buffer(IAFCONV_MAP, (size_t)L->F * HW);
    float* table = iafconv_buffer(IAFCONV_TABLE, (size_t)L->kh * L->kw * HW);
    if (!wk || !border || !table) return -1;
    iafconv_padding_table(L, table);
    iafconv_border(L, w, table, border);
    int status = 0;
    IAFCONV_FOR_CHUNKS(L, iafconv_scratch_floats(L), {
        float* columns = scratch;
        float* y_fn = scratch + K * cols;
        const float* a = iafconv_activated(L, x, n0, nc, y_fn + L->F * cols);
        iafconv_im2col(L, a, columns, nc);
        /* y_fn (F, nc HW) = w (F, K) . columns (K, nc HW) */
        iafconv_gemm('N', 'N', nc * HW, L->F, K, columns, nc * HW, wk, ld, y_fn, nc * HW);
        for (int n = 0; n < nc; ++n)
            for (int f = 0; f < L->F; ++f) {
                const float* src = y_fn + ((long)f * nc + n) * HW;
                const float* add = border + f * HW;
                float* dst = y + ((long)(n0 + n) * L->F + f) * HW;
                for (long pq = 0; pq < HW; ++pq) dst[pq] = (src[pq] + add[pq]) + b[f];
            }
    });
    return status;
}

/* gw (F, C [+ 1], kh, kw) and gb (F) = d sum(gy * y) / d(w, b), with gy (N, F, H, W) the
 * gradient of y. Each chunk's share of the (F, C T) product goes to its own partial sum;
 * they are added in chunk order. The pad channel's and the bias's gradients come from
 * gy summed over the images and pixels (in double, as Theano's float32 sums). */
static int iafconv_grad_weights(const iafconv_layer* L, const float* x, const float* gy,
                                float* gw, float* gb)
{
    const long HW = (long)L->H * L->W, K = (long)L->C * L->n, KK = L->kh * L->kw;
    const long R = iafconv_filter_size(L), FK = (long)L->F * K;
    const int nc_max = iafconv_chunk_images(L), chunks = (L->N + nc_max - 1) / nc_max;
    const long cols = nc_max * HW;
    float* partial = iafconv_buffer(IAFCONV_PARTIAL, (size_t)chunks * FK);
    if (!partial) return -1;
    int status = 0;
    IAFCONV_FOR_CHUNKS(L, iafconv_scratch_floats(L), {
        float* columns = scratch;
        float* gy_fn = scratch + K * cols;
        const float* a = iafconv_activated(L, x, n0, nc, gy_fn + L->F * cols);
        iafconv_im2col(L, a, columns, nc);
        iafconv_filter_major(L, gy, n0, nc, gy_fn);
        /* partial (F, K) = gy_fn (F, nc HW) . columns (K, nc HW)^T */
        iafconv_gemm('T', 'N', K, L->F, nc * HW, columns, nc * HW, gy_fn, nc * HW,
                     partial + chunk * FK, K);
    });
    if (status) return status;
    /* g (F, H W): gy summed over the images, in double */
    double* g = (double*)iafconv_buffer(IAFCONV_MAP, 2 * (size_t)L->F * HW);
    float* table = iafconv_buffer(IAFCONV_TABLE, (size_t)KK * HW);
    if (!g || !table) return -1;
    iafconv_padding_table(L, table);
    memset(gw, 0, (size_t)L->F * R * sizeof(float));
    #pragma omp parallel for schedule(static)
    for (long f = 0; f < L->F; ++f) {
        for (long k = 0; k < K; ++k) {
            float total = partial[f * K + k];
            for (int chunk = 1; chunk < chunks; ++chunk) total += partial[chunk * FK + f * K + k];
            gw[f * R + (k / L->n) * KK + iafconv_tap(L, (int)(k % L->n))] = total;
        }
        double* gf = g + f * HW;
        double bias = 0.0;
        for (long pq = 0; pq < HW; ++pq) gf[pq] = 0.0;
        for (int n = 0; n < L->N; ++n)
            for (long pq = 0; pq < HW; ++pq) gf[pq] += gy[((long)n * L->F + f) * HW + pq];
        for (long pq = 0; pq < HW; ++pq) bias += gf[pq];
        gb[f] = (float)bias;
        for (long k = 0; L->pad_channel && k < KK; ++k) {
            double pad = 0.0;
            for (long pq = 0; pq < HW; ++pq) pad += gf[pq] * table[k * HW + pq];
            gw[f * R + L->C * KK + k] = (float)pad;
        }
    }
    return 0;
}

/* gx (N, C, H, W) = d sum(gy * y) / dx. */
static int iafconv_grad_inputs(const iafconv_layer* L, const float* w, const float* gy,
                               const float* x, float* gx)
{
    const long HW = (long)L->H * L->W, K = (long)L->C * L->n;
    const long cols = iafconv_chunk_images(L) * HW;
    int ld;
    const float* wk = iafconv_kernel(L, w, &ld);
    if (!wk) return -1;
    int status = 0;
    IAFCONV_FOR_CHUNKS(L, iafconv_scratch_floats(L), {
        float* columns = scratch;
        float* gy_fn = scratch + K * cols;
        iafconv_filter_major(L, gy, n0, nc, gy_fn);
        /* columns (K, nc HW) = w (F, K)^T . gy_fn (F, nc HW) */
        iafconv_gemm('N', 'T', nc * HW, K, L->F, gy_fn, nc * HW, wk, ld, columns, nc * HW);
        const long start = (long)n0 * L->C * HW;
        iafconv_col2im(L, columns, x + start, gx + start, nc);
    });
    return status;
}
