# cuda_backend.cmake — the CUDA backend as a loadable module,
# <libdir>/lethe/liblethe-cuda.so (core/backend_module.h).
#
# Every CUDA symbol stays inside this module: liblethe and the CLI never link
# cudart or cuBLAS, so they start on machines without an NVIDIA driver. The
# engine dlopens libcuda.so.1 first and loads the module only when the driver
# is there (core/backend_registry.c). cudart is linked statically; cuBLAS
# (shared) is found through the module's RPATH, the toolkit's library folder.
# Kernels are CUDA C++ in one .cu file per op family behind a C ABI
# (backends/cuda/cuda_kernels.h); the rest of the backend is C.
file(GLOB LETHE_CUDA_SRC CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/backends/cuda/*.c ${PROJECT_SOURCE_DIR}/backends/cuda/*.cu)
list(REMOVE_ITEM LETHE_CUDA_SRC ${PROJECT_SOURCE_DIR}/backends/cuda/k_gemv.cu)
# the decode GEMV is compiled once, for the module and for its microbenchmark
add_library(lethe_cuda_gemv OBJECT ${PROJECT_SOURCE_DIR}/backends/cuda/k_gemv.cu)
target_include_directories(lethe_cuda_gemv PRIVATE ${PROJECT_SOURCE_DIR}/backends/cuda)
target_compile_options(lethe_cuda_gemv PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-lineinfo -Xcompiler=-fvisibility=hidden>)
set_target_properties(lethe_cuda_gemv PROPERTIES POSITION_INDEPENDENT_CODE ON CUDA_VISIBILITY_PRESET hidden)
# the attention kernels likewise, for the module and lethe_cuda_attn_bench
list(REMOVE_ITEM LETHE_CUDA_SRC ${PROJECT_SOURCE_DIR}/backends/cuda/k_attention.cu
     ${PROJECT_SOURCE_DIR}/backends/cuda/k_attn_tc.cu)
add_library(lethe_cuda_attn OBJECT ${PROJECT_SOURCE_DIR}/backends/cuda/k_attention.cu
            ${PROJECT_SOURCE_DIR}/backends/cuda/k_attn_tc.cu)
target_include_directories(lethe_cuda_attn PRIVATE ${PROJECT_SOURCE_DIR}/backends/cuda)
target_compile_options(lethe_cuda_attn PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-lineinfo -Xcompiler=-fvisibility=hidden>)
set_target_properties(lethe_cuda_attn PROPERTIES POSITION_INDEPENDENT_CODE ON CUDA_VISIBILITY_PRESET hidden)
add_library(lethe-cuda MODULE ${LETHE_CUDA_SRC} $<TARGET_OBJECTS:lethe_cuda_gemv> $<TARGET_OBJECTS:lethe_cuda_attn>)
target_include_directories(lethe-cuda PRIVATE ${PROJECT_SOURCE_DIR}/include ${PROJECT_SOURCE_DIR}/core
                           ${PROJECT_SOURCE_DIR}/backends/cuda)
target_link_libraries(lethe-cuda PRIVATE CUDA::cudart_static CUDA::cublas m)
target_compile_options(lethe-cuda PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-lineinfo
                       -Xcompiler=-fvisibility=hidden>)
set_target_properties(lethe-cuda PROPERTIES
  PREFIX lib
  C_VISIBILITY_PRESET hidden
  CUDA_VISIBILITY_PRESET hidden
  LINKER_LANGUAGE CXX
  LIBRARY_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/${CMAKE_INSTALL_LIBDIR}/${LETHE_MODULE_SUBDIR}
  BUILD_RPATH "${CUDAToolkit_LIBRARY_DIR}"
  INSTALL_RPATH "${CUDAToolkit_LIBRARY_DIR}")
target_link_options(lethe-cuda PRIVATE -Wl,-z,defs)
install(TARGETS lethe-cuda LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}/${LETHE_MODULE_SUBDIR})

# The decode GEMV alone, old kernel against new, in GB/s against the copy
# roofline (tools/gpu-check.sh's gemv stage). Not installed.
add_executable(lethe_cuda_gemv_bench ${PROJECT_SOURCE_DIR}/tools/cuda/gemv_bench.cu $<TARGET_OBJECTS:lethe_cuda_gemv>)
target_include_directories(lethe_cuda_gemv_bench PRIVATE ${PROJECT_SOURCE_DIR}/backends/cuda)
target_link_libraries(lethe_cuda_gemv_bench PRIVATE CUDA::cudart_static)

# Prefill attention alone, the tiled f32 kernel against the tensor-core one
# at depth (tools/gpu-check.sh's attn stage). Not installed.
add_executable(lethe_cuda_attn_bench ${PROJECT_SOURCE_DIR}/tools/cuda/attn_bench.cu $<TARGET_OBJECTS:lethe_cuda_attn>)
target_include_directories(lethe_cuda_attn_bench PRIVATE ${PROJECT_SOURCE_DIR}/backends/cuda)
target_link_libraries(lethe_cuda_attn_bench PRIVATE CUDA::cudart_static)

# The kernels' block decoding and GEMV lane code compiled for the host, so
# the CPU-only test suite checks them (tests/test_cuda_host_*.c).
add_library(lethe_cuda_hostcheck STATIC ${PROJECT_SOURCE_DIR}/backends/cuda/hostcheck/k_hostcheck.cu
            ${PROJECT_SOURCE_DIR}/backends/cuda/hostcheck/k_hostcheck_mma.cu
            ${PROJECT_SOURCE_DIR}/backends/cuda/hostcheck/k_hostcheck_fuse.cu)
target_include_directories(lethe_cuda_hostcheck PRIVATE ${PROJECT_SOURCE_DIR}/backends/cuda)
target_link_libraries(lethe_cuda_hostcheck PUBLIC CUDA::cudart_static stdc++)
# the GEMV's float order is part of what the host checks: no fused a*b+c the device does not do
target_compile_options(lethe_cuda_hostcheck PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-ffp-contract=off>)
