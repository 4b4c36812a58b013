/* The fp32 FMA peak of the cores: every OpenMP thread runs CHAINS independent chains of
 * fused multiply-adds on vector registers (no memory traffic), enough to cover the FMA
 * latency on two FMA units. Built by benchmarks/run.py with -mavx512f or -mavx2 -mfma. */
#include <immintrin.h>
#include <omp.h>

#ifdef __AVX512F__
typedef __m512 vec;
#define LANES 16
#define SET1 _mm512_set1_ps
#define FMA _mm512_fmadd_ps
#define ADD _mm512_add_ps
#define SUM(v) _mm512_reduce_add_ps(v)
#else
typedef __m256 vec;
#define LANES 8
#define SET1 _mm256_set1_ps
#define FMA _mm256_fmadd_ps
#define ADD _mm256_add_ps
static float SUM(__m256 v) { float f[8]; _mm256_storeu_ps(f, v); return f[0] + f[1] + f[2] + f[3] + f[4] + f[5] + f[6] + f[7]; }
#endif
#define CHAINS 12

int fma_lanes(void) { return LANES; }
int fma_chains(void) { return CHAINS; }
int fma_threads(void) { return omp_get_max_threads(); }

/* Runs `iterations` rounds of CHAINS FMAs on every thread; returns a sum of the chains so
 * that the compiler cannot drop them. */
float fma_run(long iterations)
{
    float total = 0;
#pragma omp parallel reduction(+ : total)
    {
        vec a = SET1(0.999999f), b = SET1(1e-7f);
        vec c[CHAINS];
        for (int k = 0; k < CHAINS; k++) c[k] = SET1((float)k);
        for (long i = 0; i < iterations; i++)
#pragma GCC unroll 12
            for (int k = 0; k < CHAINS; k++) c[k] = FMA(c[k], a, b);
        vec s = c[0];
        for (int k = 1; k < CHAINS; k++) s = ADD(s, c[k]);
        total += SUM(s);
    }
    return total;
}
