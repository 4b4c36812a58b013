/* The bf16 matrix peak of the cores: one large oneDNN matmul of bf16 matrices with an fp32
 * result, on all threads, as the bf16 convolutions' products run (AMX or AVX512-BF16 where
 * the CPU has them). Built by benchmarks/run.py against the oneDNN wheel. */
#include <oneapi/dnnl/dnnl.h>
#include <string.h>

static dnnl_engine_t engine;
static dnnl_stream_t stream;
static dnnl_primitive_desc_t desc;
static dnnl_primitive_t matmul;
static dnnl_memory_t memories[3];

/* Makes the n x n by n x n product; 0 on success, else oneDNN's status. */
int bf16_matmul_make(long n)
{
    const dnnl_dims_t dims = {n, n};
    const dnnl_data_type_t types[3] = {dnnl_bf16, dnnl_bf16, dnnl_f32};
    const dnnl_query_t queries[3] = {dnnl_query_src_md, dnnl_query_weights_md, dnnl_query_dst_md};
    dnnl_memory_desc_t mds[3];
    dnnl_status_t s = dnnl_engine_create(&engine, dnnl_cpu, 0);
    if (s == dnnl_success) s = dnnl_stream_create(&stream, engine, dnnl_stream_default_flags);
    for (int k = 0; k < 3 && s == dnnl_success; k++)
        s = dnnl_memory_desc_create_with_tag(&mds[k], 2, dims, types[k],
                                             k == 1 ? dnnl_format_tag_any : dnnl_ab);
    if (s == dnnl_success)
        s = dnnl_matmul_primitive_desc_create(&desc, engine, mds[0], mds[1], NULL, mds[2], NULL);
    if (s == dnnl_success) s = dnnl_primitive_create(&matmul, desc);
    for (int k = 0; k < 3 && s == dnnl_success; k++) {
        s = dnnl_memory_create(&memories[k], dnnl_primitive_desc_query_md(desc, queries[k], 0),
                               engine, DNNL_MEMORY_ALLOCATE);
        void* data = NULL;
        if (s == dnnl_success) s = dnnl_memory_get_data_handle(memories[k], &data);
        if (s == dnnl_success)  /* 0x3c3c: about 0.0115 in bf16, a normal number */
            memset(data, 0x3c, dnnl_memory_desc_get_size(
                dnnl_primitive_desc_query_md(desc, queries[k], 0)));
    }
    return (int)s;
}

/* oneDNN's implementation of the product, e.g. "brg:avx512_core_amx". */
const char* bf16_matmul_implementation(void)
{
    const char* name = "";
    dnnl_primitive_desc_query(desc, dnnl_query_impl_info_str, 0, &name);
    return name;
}

/* Runs the product `times` times; 0 on success. */
int bf16_matmul_run(int times)
{
    const dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, memories[0]}, {DNNL_ARG_WEIGHTS, memories[1]},
                                     {DNNL_ARG_DST, memories[2]}};
    dnnl_status_t s = dnnl_success;
    for (int t = 0; t < times && s == dnnl_success; t++)
        s = dnnl_primitive_execute(matmul, stream, 3, args);
    return (int)(s == dnnl_success ? dnnl_stream_wait(stream) : s);
}
