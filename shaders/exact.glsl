// exact.glsl — float32 arithmetic that gives the same bits on every Vulkan
// driver as on the CPU, for the shaders that must reproduce the CPU backend
// bit for bit (matmul.comp's q8 path).
//
// Why: Vulkan lets fma() be computed as a rounded multiply and a rounded add
// (its precision is "inherited from OpFMul followed by OpFAdd"), and Mesa's
// lavapipe does exactly that, while the CPU backend's kernels accumulate
// with fused FMA instructions. One unfused step changes the last bit of a
// matmul output, which later flips a q8 activation rounding: the two
// backends then drift apart by quantization noise. Separate + and * are
// correctly rounded in Vulkan (with `precise`, which forbids contracting or
// reordering them), so the fused result is built from them:
//   two_prod (Dekker, halves by bit masks): a * b = x + e exactly,
//   two_sum (Knuth): a + b = s + e exactly,
//   fma_rn(a, b, c) = RN(th + RO(tl + ul)) with (uh, ul) = a * b and
//   (th, tl) = c + uh, RO rounding to odd: Boldo & Melquiond, "Emulation of
//   FMA and correctly rounded sums: proved algorithms using rounding to odd",
//   IEEE Trans. Computers 57(4), 2008. Valid without overflow or underflow
//   of the error terms, which the q8 matmul's magnitudes never approach.
// Specialization constant 1, NATIVE_FMA, takes the driver's fma() instead
// (one instruction for ~20 flops on GPUs that fuse: NVIDIA's and AMD's are
// expected to). It is decided per device by measurement, not by vendor name:
// at creation backends/vulkan/vk_probe.c runs shaders/fma_probe.comp with
// the constant on and compares fma_rn, div_rn and exp_det bit for bit with
// the CPU's fmaf, a / b and lethe_cpu_expf on inputs where one rounding and
// two differ; all equal sets it for every pipeline, anything else (or a
// probe that cannot run) leaves the emulation. Lavapipe measures unfused
// (its fma() is a rounded multiply and a rounded add on every probe).
// LETHE_VK_NATIVE_FMA=0/1 forces it. A driver that fused in the probe but
// not in some other shader would drift silently: the Vulkan tests on that
// driver (tools/gpu-check.sh) are the check, and =0 the way out.

layout(constant_id = 1) const bool NATIVE_FMA = false;

void two_sum(float a, float b, out float s, out float e) {
    precise float s_ = a + b;
    precise float bb = s_ - a;
    precise float e_ = (a - (s_ - bb)) + (b - bb);
    s = s_;
    e = e_;
}

void two_prod(float a, float b, out float x, out float e) {
    precise float x_ = a * b;
    // 12-bit halves by masking the low mantissa bits (not Veltkamp's
    // 4097 a - (4097 a - a), which one contraction on lavapipe breaks)
    precise float ah = uintBitsToFloat(floatBitsToUint(a) & 0xFFFFF000u);
    precise float bh = uintBitsToFloat(floatBitsToUint(b) & 0xFFFFF000u);
    precise float al = a - ah, bl = b - bh;
    precise float e_ = (((ah * bh - x_) + ah * bl) + al * bh) + al * bl;
    x = x_;
    e = e_;
}

// a + b rounded to odd: the nearest-even sum, moved one ulp toward the exact
// value when it is inexact and even.
float add_odd(float a, float b) {
    float s, e;
    two_sum(a, b, s, e);
    if (e != 0.0 && (floatBitsToUint(s) & 1u) == 0u)
        s = uintBitsToFloat(floatBitsToUint(s) + ((e > 0.0) == (s > 0.0) ? 1u : 0xFFFFFFFFu));
    return s;
}

float fma_rn(float a, float b, float c) {
    if (NATIVE_FMA) return fma(a, b, c);
    float uh, ul, th, tl;
    two_prod(a, b, uh, ul);
    two_sum(c, uh, th, tl);
    precise float r = th + add_odd(tl, ul);
    return r;
}

// lethe_cpu_expf (backends/cpu/cpu_kernels.h) step by step: x clamped to
// [-104, 88], n = roundEven(x log2 e), r = x - n ln2 (two fused steps),
// degree-6 Taylor by fused Horner steps, times 2^n. The constants are the
// CPU's float literals, as bits.
float exp_det(float x) {
    x = min(max(x, -104.0), 88.0);
    precise float xl = x * uintBitsToFloat(0x3FB8AA3Bu);            // 1.44269504f
    const float n = roundEven(xl);
    float r = fma_rn(-n, uintBitsToFloat(0x3F317200u), x);          // 0.693145751953125f
    r = fma_rn(-n, uintBitsToFloat(0x35BFBE8Eu), r);                // 1.428606765330187e-06f
    float q = uintBitsToFloat(0x3AB60B61u);                         // 1/720
    q = fma_rn(q, r, uintBitsToFloat(0x3C088889u));                 // 1/120
    q = fma_rn(q, r, uintBitsToFloat(0x3D2AAAABu));                 // 1/24
    q = fma_rn(q, r, uintBitsToFloat(0x3E2AAAABu));                 // 1/6
    q = fma_rn(q, r, 0.5);
    q = fma_rn(q, r, 1.0);
    q = fma_rn(q, r, 1.0);
    return ldexp(q, int(n));
}

// a / b correctly rounded. Vulkan's division may be a * (1 / b) with an
// error of 2.5 ulp (lavapipe computes it so); the CPU divides exactly. The
// quotient's neighbours within 2 ulp are tried and the one with the
// smallest exact residual |a - q b| (fma_rn) kept; a true quotient never
// lies halfway between two floats, so the nearest is unique. Infinite,
// zero and NaN quotients are returned as the division gives them.
float div_rn(float a, float b) {
    float q = a / b;
    if (q == 0.0 || isinf(q) || isnan(q)) return q;
    float best = q, rbest = abs(fma_rn(-q, b, a));
    [[dont_unroll]] for (int k = -2; k <= 2; k++) {   // not unrolled: see attention.comp's score()
        if (k == 0) continue;
        float c = uintBitsToFloat(uint(int(floatBitsToUint(q)) + k));
        float r = abs(fma_rn(-c, b, a));
        if (r < rbest) {
            rbest = r;
            best = c;
        }
    }
    return best;
}
