"""The data-dependent init's normalisation of a convolution's output as one op (docs/model.md
§2): per channel, the scale and shift that give the output mean 0 and a target standard
deviation over the init batch, and the normalised output.

Written with Theano's ops it is about fifteen nodes per convolution (means, variances,
broadcasts, a switch), 2,400 for Table 3: most of the init function, whose every node is
rebuilt each time a process loads it. Sums are accumulated in double precision, as
Theano's float32 sums are.
"""
from ..runtime.backend import T, gof
from .c_support import OpenMPOp

_C_CODE = """
{
    PyArrayObject* h = PyArray_GETCONTIGUOUS(%(h)s);
    int ok = h != NULL;
    const npy_intp C = ok ? PyArray_DIMS(h)[1] : 0, channels[1] = {C};
    ok = ok && iaf_output(&%(out)s, 4, PyArray_DIMS(h)) == 0 && iaf_output(&%(s)s, 1, channels) == 0
            && iaf_output(&%(b)s, 1, channels) == 0;
    if (ok && !%(all_ok)s) {
        %(all_ok)s = (PyArrayObject*)PyArray_EMPTY(0, NULL, NPY_INT8, 0);
        ok = %(all_ok)s != NULL;
    }
    if (ok) {
        const npy_intp N = PyArray_DIMS(h)[0], HW = PyArray_DIMS(h)[2] * PyArray_DIMS(h)[3];
        const double count = (double)(N * HW);
        const float* hd = (const float*)PyArray_DATA(h);
        float* od = (float*)PyArray_DATA(%(out)s);
        float* sd = (float*)PyArray_DATA(%(s)s);
        float* bd = (float*)PyArray_DATA(%(b)s);
        int nonzero = 1;
        /* Per channel: std (two passes), scale = std / target + eps, h / scale, its mean. */
        #pragma omp parallel for schedule(static) reduction(&:nonzero)
        for (npy_intp c = 0; c < C; ++c) {
            double sum = 0.0, squares = 0.0, scaled = 0.0;
            for (npy_intp n = 0; n < N; ++n)
                for (npy_intp i = 0; i < HW; ++i) sum += hd[(n * C + c) * HW + i];
            const float mean = (float)(sum / count);
            for (npy_intp n = 0; n < N; ++n)
                for (npy_intp i = 0; i < HW; ++i) {
                    const float d = hd[(n * C + c) * HW + i] - mean;
                    squares += (double)d * d;
                }
            const float std = sqrtf((float)(squares / count));
            const float scale = std / (float)%(target_std)r + (float)%(eps)r;
            for (npy_intp n = 0; n < N; ++n)
                for (npy_intp i = 0; i < HW; ++i) {
                    const float v = hd[(n * C + c) * HW + i] / scale;
                    od[(n * C + c) * HW + i] = v;
                    scaled += v;
                }
            const float shift = (float)(scaled / count);
            for (npy_intp n = 0; n < N; ++n)
                for (npy_intp i = 0; i < HW; ++i) od[(n * C + c) * HW + i] -= shift;
            nonzero &= std != 0.0f;
            sd[c] = -logf(scale) / 3.0f;
            bd[c] = -shift;
        }
        if (!nonzero)  /* a channel had std 0: the output is h, and nothing is set */
            memcpy(od, hd, N * C * HW * sizeof(float));
        *(npy_int8*)PyArray_DATA(%(all_ok)s) = nonzero;
    }
    Py_XDECREF(h);
    if (!ok) %(fail)s
}
"""


class ChannelNormalise(OpenMPOp):
    """``h -> (normalised h, s, b, ok)`` for h (N, C, H, W): per channel, with ``std`` the
    standard deviation over (N, H, W), ``scale = std / target_std + eps``,
    ``s = -log(scale) / 3`` and ``b = -mean(h / scale)``; the output is ``h / scale + b``,
    and ``ok`` is 1, if no channel has std 0, else the output is h and ``ok`` is 0."""

    __props__ = ("target_std", "eps")

    def __init__(self, target_std, eps):
        self.target_std, self.eps = float(target_std), float(eps)

    def make_node(self, h):
        h = T.as_tensor_variable(h)
        if h.type != T.TensorType("float32", (False,) * 4):
            raise TypeError(f"ChannelNormalise takes a float32 4-d tensor, not {h.type}")
        return gof.Apply(self, [h], [h.type(), T.fvector(), T.fvector(),
                                     T.TensorType("int8", ())()])

    def infer_shape(self, node, shapes):
        (h,) = shapes
        return [h, h[1:2], h[1:2], ()]

    def c_code(self, node, name, inputs, outputs, sub):
        out, s, b, all_ok = outputs
        return _C_CODE % dict(h=inputs[0], out=out, s=s, b=b, all_ok=all_ok, eps=self.eps,
                              target_std=self.target_std, fail=sub["fail"])


def custom(h, target_std, eps):
    return ChannelNormalise(target_std, eps)(h)


def plain(h, target_std, eps):
    std = h.std(axis=(0, 2, 3))
    ok = T.all(T.neq(std, 0))
    scale = std / target_std + eps
    h_scaled = h / scale.dimshuffle("x", 0, "x", "x")
    mean = h_scaled.mean(axis=(0, 2, 3))
    return T.switch(ok, h_scaled - mean.dimshuffle("x", 0, "x", "x"), h), \
        -T.log(scale) / 3, -mean, ok
