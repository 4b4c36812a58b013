/* oneDNN convolution layer, support code of the ops in onednn_conv.py.
 *
 * The layer is Theano's conv2d(a(x), w, border_mode='half', subsample=s) plus a bias: zero
 * padding of (k - 1) / 2, filters flipped (a true convolution),
 *     y[n, f, p, q] = sum_{c, i, j} w[f, c, i, j] * a(x)[n, c, s p + ph - i, s q + pw - j]
 *                     + border[f, p, q] + b[f],
 * where a is the identity or ELU and, when the kernel has a pad channel (one input channel
 * more than x, its last), border is that channel's convolution with an image that is 1 on the
 * zero padding and 0 inside (docs/model.md §2): a fixed term, nonzero only near the image's
 * edge, computed here from a table.
 *
 * oneDNN computes the sum over the image channels: a cross-correlation, so the kernel goes to
 * it flipped, on channels-last (NHWC) images. Each pass has oneDNN's reorders take its inputs
 * from Theano's NCHW (after ELU, when the input has it), rounding them to bf16 in that
 * precision, and its result back to NCHW (the forward pass's with the bias added), then adds
 * the border term, or multiplies by ELU's slope, in place. In bf16 oneDNN's inputs (images, kernel, output gradient) are bf16,
 * its products are summed in fp32 and its outputs are fp32. A masked kernel (taps listed)
 * goes to oneDNN cut to the box of its used taps (with the centre), with padding to match:
 * the rows and columns that only hold zeros cost nothing. oneDNN's primitives are made once
 * per shape and kept. The primitives, the stream and the work areas are shared by all calls:
 * Theano runs one op at a time, holding Python's lock.
 * All arrays are C-contiguous float32, N > 0; functions return 0, or -1 with a Python error.
 * iaf_elu and iaf_elu_slope come from c_support.py.
 */

namespace iafconv {

using dnnl::memory;
using dtype = memory::data_type;
using tag = memory::format_tag;

/* The layer: N images of C channels, H x W pixels, F filters of kh x kw with stride s, giving
 * OH x OW outputs; the image channels' used taps (flat index i * kw + j): all, or the n_taps
 * listed; the options. The box is in oneDNN's orientation (u = kh - 1 - i, v = kw - 1 - j):
 * rows u0 .. u0 + bh - 1, columns v0 .. v0 + bw - 1, with the input padded by ph - u0 above
 * and pw - v0 left of the image. */
struct Layer {
    int N, C, H, W, F, kh, kw, s, OH, OW;
    const int* taps;
    int n_taps;
    bool all_taps, elu_input, pad_channel, bf16;
    int u0, v0, bh, bw;

    Layer(int N_, int C_, int H_, int W_, int F_, int kh_, int kw_, int s_, bool all,
          const int* taps_, int n_taps_, bool elu, bool pad, bool bf)
        : N(N_), C(C_), H(H_), W(W_), F(F_), kh(kh_), kw(kw_), s(s_),
          OH((H_ - 1) / s_ + 1), OW((W_ - 1) / s_ + 1), taps(taps_), n_taps(n_taps_),
          all_taps(all), elu_input(elu), pad_channel(pad), bf16(bf)
    {
        int u1 = (kh - 1) / 2, v1 = (kw - 1) / 2;  /* the centre is always in the box */
        u0 = u1, v0 = v1;
        for (int k = 0; k < kh * kw; ++k) {
            if (!used(k)) continue;
            const int u = kh - 1 - k / kw, v = kw - 1 - k % kw;
            u0 = std::min(u0, u), u1 = std::max(u1, u), v0 = std::min(v0, v), v1 = std::max(v1, v);
        }
        bh = u1 - u0 + 1, bw = v1 - v0 + 1;
    }

    /* Whether the image channels' kernel may be nonzero at tap k. */
    bool used(int k) const
    {
        return all_taps || std::find(taps, taps + n_taps, k) != taps + n_taps;
    }

    int pad_top() const { return (kh - 1) / 2 - u0; }
    int pad_left() const { return (kw - 1) / 2 - v0; }
    memory::dims strides() const { return {s, s}; }
    memory::dims padding_before() const { return {pad_top(), pad_left()}; }
    memory::dims padding_after() const { return {bh - 1 - pad_top(), bw - 1 - pad_left()}; }
    long in_pixels() const { return (long)H * W; }
    long out_pixels() const { return (long)OH * OW; }
    dtype input_type() const { return bf16 ? dtype::bf16 : dtype::f32; }
    memory::desc images(dtype t, tag layout = tag::nhwc) const
    {
        return memory::desc({N, C, H, W}, t, layout);
    }
    memory::desc outputs(dtype t, tag layout = tag::nhwc) const
    {
        return memory::desc({N, F, OH, OW}, t, layout);
    }
    memory::desc kernel(dtype t, tag layout) const
    {
        return memory::desc({F, C, bh, bw}, t, layout);
    }
    memory::desc bias() const { return memory::desc({F}, dtype::f32, tag::a); }
};

/* Whether each of the n taps is a position of a kernel of kk taps. */
static bool taps_fit(const int* taps, int n, int kk)
{
    for (int t = 0; t < n; ++t)
        if (taps[t] < 0 || taps[t] >= kk) return false;
    return true;
}

static const dnnl::engine& engine()
{
    static const dnnl::engine cpu(dnnl::engine::kind::cpu, 0);
    return cpu;
}

static dnnl::stream& stream()
{
    static dnnl::stream s(engine());
    return s;
}

/* Which primitive: a pass of a layer's shape. */
enum Pass { FORWARD, GRAD_INPUTS, GRAD_WEIGHTS };

/* A pass's primitive and its reorders: between the plain (F, C, bh, bw) fp32 kernel and the
 * kernel as the primitive takes (or, for the weights' gradient, gives) it; from Theano's NCHW
 * fp32 images and output gradients to the primitive's inputs; from its NHWC fp32 result to
 * NCHW. */
struct Primitive {
    dnnl::primitive conv;
    memory::desc kernel;
    dnnl::reorder kernel_reorder, images_in, gradient_in, result_out;
};

static dnnl::reorder reorder(const memory::desc& from, const memory::desc& to)
{
    return dnnl::reorder(dnnl::reorder::primitive_desc(engine(), from, engine(), to));
}

static void run(const dnnl::reorder& r, const memory& from, const memory& to)
{
    r.execute(stream(), {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to}});
}

/* The forward pass, which adds the fp32 bias as it writes its output. */
static dnnl::convolution_forward::primitive_desc forward_desc(const Layer& L)
{
    return dnnl::convolution_forward::primitive_desc(
        engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
        L.images(L.input_type()), L.kernel(L.input_type(), tag::any), L.bias(),
        L.outputs(dtype::f32), L.strides(), L.padding_before(), L.padding_after());
}

/* Tells layers/ops/onednn.py which implementation oneDNN chose (never fails a pass). */
static void note(const Layer& L, Pass pass, const dnnl::primitive_desc_base& desc)
{
    static const char* names[] = {"forward", "input gradient", "weight gradient"};
    PyObject* module = PyImport_ImportModule("layers.ops.onednn");
    PyObject* result = module ? PyObject_CallMethod(module, "note_implementation", "sss",
                                                    L.bf16 ? "bf16" : "fp32", names[pass],
                                                    desc.impl_info_str()) : nullptr;
    Py_XDECREF(result);
    Py_XDECREF(module);
    PyErr_Clear();
}

static Primitive make_primitive(const Layer& L, Pass pass)
{
    const memory::desc plain = L.kernel(dtype::f32, tag::oihw);
    const auto forward = forward_desc(L);
    Primitive p;
    if (pass != GRAD_INPUTS)
        p.images_in = reorder(L.images(dtype::f32, tag::nchw), L.images(L.input_type()));
    if (pass != FORWARD)
        p.gradient_in = reorder(L.outputs(dtype::f32, tag::nchw), L.outputs(L.input_type()));
    if (pass == FORWARD) {
        p.conv = dnnl::convolution_forward(forward);
        p.kernel = forward.weights_desc();
        p.result_out = reorder(L.outputs(dtype::f32), L.outputs(dtype::f32, tag::nchw));
        note(L, pass, forward);
    } else if (pass == GRAD_INPUTS) {
        const dnnl::convolution_backward_data::primitive_desc desc(
            engine(), dnnl::algorithm::convolution_direct, L.images(dtype::f32),
            L.kernel(L.input_type(), tag::any), L.outputs(L.input_type()), L.strides(),
            L.padding_before(), L.padding_after(), forward);
        p.conv = dnnl::convolution_backward_data(desc);
        p.kernel = desc.weights_desc();
        p.result_out = reorder(L.images(dtype::f32), L.images(dtype::f32, tag::nchw));
        note(L, pass, desc);
    } else {
        const dnnl::convolution_backward_weights::primitive_desc desc(
            engine(), dnnl::algorithm::convolution_direct, L.images(L.input_type()),
            L.kernel(dtype::f32, tag::any), L.outputs(L.input_type()), L.strides(),
            L.padding_before(), L.padding_after(), forward);
        p.conv = dnnl::convolution_backward_weights(desc);
        p.kernel = desc.diff_weights_desc();
        note(L, pass, desc);
        p.kernel_reorder = reorder(p.kernel, plain);
        return p;
    }
    p.kernel_reorder = reorder(plain, p.kernel);
    return p;
}

/* The primitive of a pass, made at its shape's first use and kept. */
static const Primitive& primitive(const Layer& L, Pass pass)
{
    static std::map<std::array<int, 12>, Primitive> made;
    const std::array<int, 12> key{pass, L.N, L.C, L.H, L.W, L.F, L.bh, L.bw, L.s,
                                  L.pad_top(), L.pad_left(), L.bf16};
    auto found = made.find(key);
    if (found == made.end()) found = made.emplace(key, make_primitive(L, pass)).first;
    return found->second;
}

/* Work areas kept between calls (grown when needed): the images after ELU (NCHW), the images
 * and the outputs as oneDNN takes or gives them (NHWC), the kernel in plain form and in the
 * primitive's, a map per filter (the border term, or the output gradient summed over the
 * images, in double) and the padding table. */
enum { ACTIVATED, IMAGES, OUTPUTS, PLAIN_KERNEL, KERNEL, MAP, TABLE, BUFFERS };

static void* buffer(int which, size_t bytes)
{
    static void* buffers[BUFFERS];
    static size_t sizes[BUFFERS];
    if (bytes > sizes[which]) {
        free(buffers[which]);
        buffers[which] = aligned_alloc(64, (bytes + 63) / 64 * 64);
        sizes[which] = buffers[which] ? bytes : 0;
        if (!buffers[which]) throw std::bad_alloc();
    }
    return buffers[which];
}

/* The images x (N, C, H, W) as the primitive takes them: a(x) reordered into the IMAGES area
 * (NHWC, fp32 or bf16). */
static memory input_images(const Layer& L, const Primitive& p, const float* x)
{
    const long size = (long)L.N * L.C * L.in_pixels();
    if (L.elu_input) {
        float* a = (float*)buffer(ACTIVATED, size * sizeof(float));
        #pragma omp parallel for schedule(static)
        for (long e = 0; e < size; ++e) a[e] = iaf_elu(x[e]);
        x = a;
    }
    const memory::desc want = L.images(L.input_type());
    memory out(want, engine(), buffer(IMAGES, want.get_size()));
    run(p.images_in, memory(L.images(dtype::f32, tag::nchw), engine(), (void*)x), out);
    return out;
}

/* The output gradient gy (N, F, OH, OW) as the primitive takes it, in the OUTPUTS area. */
static memory output_gradient(const Layer& L, const Primitive& p, const float* gy)
{
    const memory::desc want = L.outputs(L.input_type());
    memory out(want, engine(), buffer(OUTPUTS, want.get_size()));
    run(p.gradient_in, memory(L.outputs(dtype::f32, tag::nchw), engine(), (void*)gy), out);
    return out;
}

/* source[t], for tap t of the box (row-major), is the tap of the kernel (flat i * kw + j) it
 * holds, flipped, or -1 where the image channels' kernel is zero. */
static std::vector<int> box_sources(const Layer& L)
{
    std::vector<int> source(L.bh * L.bw);
    for (int a = 0; a < L.bh; ++a)
        for (int b = 0; b < L.bw; ++b) {
            const int k = (L.kh - 1 - L.u0 - a) * L.kw + (L.kw - 1 - L.v0 - b);
            source[a * L.bw + b] = L.used(k) ? k : -1;
        }
    return source;
}

/* The kernel as the primitive takes it: the image channels' part of w (F, C [+ 1], kh, kw),
 * flipped, cut to the box, zero at unused taps, in the primitive's layout. */
static memory kernel(const Layer& L, const Primitive& p, const float* w)
{
    const long KK = L.kh * L.kw, R = (long)(L.C + L.pad_channel) * KK, box = (long)L.bh * L.bw;
    const std::vector<int> source = box_sources(L);
    float* plain = (float*)buffer(PLAIN_KERNEL, (size_t)L.F * L.C * box * sizeof(float));
    #pragma omp parallel for schedule(static)
    for (long fc = 0; fc < (long)L.F * L.C; ++fc) {
        const float* src = w + fc / L.C * R + fc % L.C * KK;
        for (long t = 0; t < box; ++t) plain[fc * box + t] = source[t] < 0 ? 0.0f : src[source[t]];
    }
    memory in(L.kernel(dtype::f32, tag::oihw), engine(), plain);
    memory out(p.kernel, engine(), buffer(KERNEL, p.kernel.get_size()));
    run(p.kernel_reorder, in, out);
    return out;
}

/* table (kh kw, OH OW): 1 where kernel tap k reads the zero padding (where the pad channel is
 * 1) for output pixel (p, q), else 0. */
static const float* padding_table(const Layer& L)
{
    const long P = L.out_pixels();
    float* table = (float*)buffer(TABLE, (size_t)L.kh * L.kw * P * sizeof(float));
    for (int k = 0; k < L.kh * L.kw; ++k)
        for (long pq = 0; pq < P; ++pq) {
            const long y = L.s * (pq / L.OW) + (L.kh - 1) / 2 - k / L.kw;
            const long x = L.s * (pq % L.OW) + (L.kw - 1) / 2 - k % L.kw;
            table[k * P + pq] = y < 0 || y >= L.H || x < 0 || x >= L.W;
        }
    return table;
}

/* y (N, F, OH, OW) += the pad channel's border term, at the output pixels where some tap
 * reads the padding (elsewhere it is 0). */
static void add_border_term(const Layer& L, const float* w, float* y)
{
    const long P = L.out_pixels(), KK = L.kh * L.kw, R = (long)(L.C + L.pad_channel) * KK;
    const float* table = padding_table(L);
    std::vector<long> pixels;
    for (long pq = 0; pq < P; ++pq)
        for (long k = 0; k < KK; ++k)
            if (table[k * P + pq]) {
                pixels.push_back(pq);
                break;
            }
    const long B = (long)pixels.size();
    float* term = (float*)buffer(MAP, (size_t)L.F * B * sizeof(float));
    #pragma omp parallel for schedule(static)
    for (long f = 0; f < L.F; ++f)
        for (long i = 0; i < B; ++i) {
            float sum = 0.0f;
            for (long k = 0; k < KK; ++k) sum += w[f * R + L.C * KK + k] * table[k * P + pixels[i]];
            term[f * B + i] = sum;
        }
    #pragma omp parallel for schedule(static)
    for (long nf = 0; nf < (long)L.N * L.F; ++nf)
        for (long i = 0; i < B; ++i) y[nf * P + pixels[i]] += term[nf % L.F * B + i];
}

/* Runs body, turning oneDNN's and allocation errors into a Python error: 0 or -1. */
template <typename Body>
static int guarded(const char* op, Body body)
{
    try {
        body();
        return 0;
    } catch (const std::bad_alloc&) {
        PyErr_NoMemory();
    } catch (const std::exception& err) {  /* oneDNN's errors among them */
        PyErr_Format(PyExc_RuntimeError, "%s: oneDNN failed: %s", op, err.what());
    }
    return -1;
}

/* y (N, F, OH, OW) = the layer on x (N, C, H, W) with kernel w (F, C [+ 1], kh, kw), bias b. */
static int forward(const Layer& L, const float* x, const float* w, const float* b, float* y)
{
    return guarded("OnednnConv", [&] {
        const Primitive& p = primitive(L, FORWARD);
        const memory src = input_images(L, p, x), weights = kernel(L, p, w);
        const memory dst(L.outputs(dtype::f32), engine(),
                         buffer(OUTPUTS, L.outputs(dtype::f32).get_size()));
        p.conv.execute(stream(), {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, weights},
                                  {DNNL_ARG_BIAS, memory(L.bias(), engine(), (void*)b)},
                                  {DNNL_ARG_DST, dst}});
        run(p.result_out, dst, memory(L.outputs(dtype::f32, tag::nchw), engine(), y));
        stream().wait();
        if (L.pad_channel) add_border_term(L, w, y);
    });
}

/* gx (N, C, H, W) = d sum(gy * y) / dx, with gy (N, F, OH, OW) the gradient of y. */
static int grad_inputs(const Layer& L, const float* w, const float* gy, const float* x,
                       float* gx)
{
    return guarded("OnednnConvGradInputs", [&] {
        const Primitive& p = primitive(L, GRAD_INPUTS);
        const memory diff_dst = output_gradient(L, p, gy), weights = kernel(L, p, w);
        const memory diff_src(L.images(dtype::f32), engine(),
                              buffer(IMAGES, L.images(dtype::f32).get_size()));
        p.conv.execute(stream(), {{DNNL_ARG_DIFF_DST, diff_dst}, {DNNL_ARG_WEIGHTS, weights},
                                  {DNNL_ARG_DIFF_SRC, diff_src}});
        run(p.result_out, diff_src, memory(L.images(dtype::f32, tag::nchw), engine(), gx));
        stream().wait();
        if (L.elu_input) {
            const long size = (long)L.N * L.C * L.in_pixels();
            #pragma omp parallel for schedule(static)
            for (long e = 0; e < size; ++e) gx[e] *= iaf_elu_slope(x[e]);
        }
    });
}

/* gw (F, C [+ 1], kh, kw) and gb (F) = d sum(gy * y) / d(w, b). The image channels' part
 * comes from oneDNN (zero at unused taps); the pad channel's and the bias's from gy summed
 * over the images and pixels, in double (as Theano's float32 sums). */
static int grad_weights(const Layer& L, const float* x, const float* gy, float* gw, float* gb)
{
    return guarded("OnednnConvGradWeights", [&] {
        const Primitive& p = primitive(L, GRAD_WEIGHTS);
        const memory src = input_images(L, p, x), diff_dst = output_gradient(L, p, gy);
        const memory diff_weights(p.kernel, engine(), buffer(KERNEL, p.kernel.get_size()));
        p.conv.execute(stream(), {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, diff_dst},
                                  {DNNL_ARG_DIFF_WEIGHTS, diff_weights}});
        const long box = (long)L.bh * L.bw, KK = L.kh * L.kw;
        const long R = (long)(L.C + L.pad_channel) * KK;
        memory plain(L.kernel(dtype::f32, tag::oihw), engine(),
                     buffer(PLAIN_KERNEL, (size_t)L.F * L.C * box * sizeof(float)));
        run(p.kernel_reorder, diff_weights, plain);
        stream().wait();
        const float* g_box = (const float*)plain.get_data_handle();
        const std::vector<int> source = box_sources(L);
        const long P = L.out_pixels();
        const float* table = L.pad_channel ? padding_table(L) : nullptr;
        double* g = (double*)buffer(MAP, (size_t)L.F * P * sizeof(double));
        #pragma omp parallel for schedule(static)
        for (long f = 0; f < L.F; ++f) {
            for (long c = 0; c < L.C; ++c) {  /* zero at unused taps, the box's elsewhere */
                float* out = gw + f * R + c * KK;
                const float* in = g_box + (f * L.C + c) * box;
                for (long k = 0; k < KK; ++k) out[k] = 0.0f;
                for (long t = 0; t < box; ++t)
                    if (source[t] >= 0) out[source[t]] = in[t];
            }
            double* gf = g + f * P;
            double bias = 0.0;
            for (long pq = 0; pq < P; ++pq) gf[pq] = 0.0;
            for (int n = 0; n < L.N; ++n)
                for (long pq = 0; pq < P; ++pq) gf[pq] += gy[((long)n * L.F + f) * P + pq];
            for (long pq = 0; pq < P; ++pq) bias += gf[pq];
            gb[f] = (float)bias;
            for (long k = 0; L.pad_channel && k < KK; ++k) {
                double pad = 0.0;
                for (long pq = 0; pq < P; ++pq) pad += gf[pq] * table[k * P + pq];
                gw[f * R + L.C * KK + k] = (float)pad;
            }
        }
    });
}

}  // namespace iafconv
