/* rope_freq.h — the inverse frequency of a rotary pair, in one place for
 * every backend that computes the RoPE tables on the host (the CPU kernel,
 * Vulkan's upload, the CUDA plan's staging). Static inline because the CUDA
 * module cannot link liblethe's hidden symbols; one definition keeps every
 * backend's angles the CPU's bit for bit (same double arithmetic, same libm). */
#ifndef LETHE_ROPE_FREQ_H
#define LETHE_ROPE_FREQ_H

#include "graph.h"   /* lethe_rope_params */

#include <math.h>

/* Inverse frequency of rotary pair i: base^(-2i/n_rot), with Llama 3
 * scaling applied as Hugging Face's _compute_llama3_parameters does (high
 * frequencies kept, low ones divided by factor, a smooth blend between),
 * then per-pair freq_factors and times freq_scale. */
static inline double lethe_rope_inv_freq(const lethe_rope_params *p, int i) {
    double inv = pow((double)p->freq_base, -2.0 * i / (double)p->n_rot);
    if (p->llama3_factor > 0.0f) {
        const double factor = p->llama3_factor, lo = p->llama3_low_freq_factor, hi = p->llama3_high_freq_factor;
        const double ctx = p->llama3_orig_ctx;
        const double lo_wavelen = ctx / lo, hi_wavelen = ctx / hi;
        const double wavelen = 2.0 * M_PI / inv;
        if (wavelen > lo_wavelen) {
            inv = inv / factor;
        } else if (wavelen >= hi_wavelen) { /* medium band */
            const double smooth = (ctx / wavelen - lo) / (hi - lo);
            inv = (1.0 - smooth) * inv / factor + smooth * inv;
        }
    }
    if (p->freq_factors) inv /= (double)p->freq_factors[i];
    return inv * (double)p->freq_scale;
}

#endif
