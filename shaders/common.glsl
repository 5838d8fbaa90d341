// common.glsl — shared by every lethe compute shader.
//
// Conventions (backends/vulkan/vk_ops.c binds to them):
//   set 0, bindings 0..3: storage buffers (a dispatch binds up to four);
//   push constants: a per-shader block of at most 128 bytes; element offsets
//   into each binding are push constants too (buffers are bound at offsets
//   rounded down to the device's minStorageBufferOffsetAlignment);
//   workgroup sizes are specialization constant 0 (local_size_x_id = 0).
// Everything is read as 32-bit words or floats, so no shader needs the 8- or
// 16-bit storage features.
#extension GL_EXT_control_flow_attributes : enable
