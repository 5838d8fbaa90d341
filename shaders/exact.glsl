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
//   two_prod (Dekker, Veltkamp split): a * b = x + e exactly,
//   two_sum (Knuth): a + b = s + e exactly,
//   fma_rn(a, b, c) = RN(th + RO(tl + ul)) with (uh, ul) = a * b and
//   (th, tl) = c + uh, RO rounding to odd: Boldo & Melquiond, "Emulation of
//   FMA and correctly rounded sums: proved algorithms using rounding to odd",
//   IEEE Trans. Computers 57(4), 2008. Valid without overflow or underflow
//   of the error terms, which the q8 matmul's magnitudes never approach.
// A device whose fma() is fused (spec constant NATIVE_FMA, probed at start)
// takes the one instruction.

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
    precise float ca = 4097.0 * a, cb = 4097.0 * b;   // 2^12 + 1: 12-bit halves
    precise float ah = ca - (ca - a), bh = cb - (cb - b);
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
