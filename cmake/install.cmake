# install.cmake — what the build reports about itself (version, backends,
# module lookup path) and what `cmake --install` puts under the prefix:
#   bin/lethe                              the CLI (lethe linked in statically)
#   lib/liblethe.so.X.Y.Z, .so.X, .so       the shared library (soname liblethe.so.X)
#   lib/liblethe.a                          the static library
#   lib/lethe/                              loadable backend modules (liblethe-<name>.so)
#   include/lethe.h                         the only header an application needs
#   share/lethe/bench_report.py             tables and plots of bench rows (`lethe bench --plot`)
#   lib/pkgconfig/lethe.pc                  pkg-config (relocatable: paths from ${pcfiledir})
#   lib/cmake/lethe/lethe-config.cmake      find_package(lethe) -> lethe::lethe (shared),
#                   lethe-config-version.cmake                    lethe::lethe_static
include(CMakePackageConfigHelpers)

list(JOIN LETHE_ENABLED_BACKENDS " " LETHE_BACKENDS_STRING)
# `lethe bench --plot` runs <bindir>/<this>/lethe/bench_report.py; the build
# tree gets a copy at the same relative place (reconfigured when it changes).
file(RELATIVE_PATH LETHE_BIN_TO_DATADIR ${CMAKE_INSTALL_FULL_BINDIR} ${CMAKE_INSTALL_FULL_DATADIR})
configure_file(${CMAKE_SOURCE_DIR}/tools/bench_report.py
               ${CMAKE_BINARY_DIR}/${CMAKE_INSTALL_DATADIR}/lethe/bench_report.py COPYONLY)
configure_file(${CMAKE_CURRENT_LIST_DIR}/lethe_build_config.h.in
               ${CMAKE_BINARY_DIR}/generated/lethe_build_config.h @ONLY)
message(STATUS "lethe ${PROJECT_VERSION}: backends built in: ${LETHE_BACKENDS_STRING}")

install(TARGETS lethe EXPORT lethe-targets
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(TARGETS lethe_static EXPORT lethe-static-targets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR})
install(TARGETS lethe_cli RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(FILES ${CMAKE_SOURCE_DIR}/include/lethe.h DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(PROGRAMS ${CMAKE_SOURCE_DIR}/tools/bench_report.py DESTINATION ${CMAKE_INSTALL_DATADIR}/lethe)
# The module folder exists even while no module is built, so the lookup
# path lethe_backend_dir() reports is a real place.
install(DIRECTORY DESTINATION ${CMAKE_INSTALL_LIBDIR}/${LETHE_MODULE_SUBDIR})

# pkg-config: every path relative to the .pc file, so the install moves freely.
file(RELATIVE_PATH LETHE_PC_TO_PREFIX ${CMAKE_INSTALL_FULL_LIBDIR}/pkgconfig ${CMAKE_INSTALL_PREFIX})
string(REGEX REPLACE "/$" "" LETHE_PC_TO_PREFIX "${LETHE_PC_TO_PREFIX}")
# The static library's dependencies are listed as flags, not Requires.private:
# pkg-config would demand openblas.pc even of programs linking the shared one.
list(JOIN OPENBLAS_LDFLAGS " " _blas)
list(JOIN PCRE2_LDFLAGS " " _pcre)
list(JOIN JANSSON_LDFLAGS " " _json)
list(JOIN UTF8PROC_LDFLAGS " " _u8)
set(_gpu "")
if(LETHE_HAVE_VULKAN)
  set(_gpu "-lvulkan")
endif()
set(LETHE_PC_PRIVATE_LIBS "${_blas} ${_pcre} ${_json} ${_u8} ${_gpu} ${OpenMP_C_FLAGS} -lpthread -lm -ldl")
configure_file(${CMAKE_CURRENT_LIST_DIR}/lethe.pc.in ${CMAKE_BINARY_DIR}/lethe.pc @ONLY)
install(FILES ${CMAKE_BINARY_DIR}/lethe.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)

set(LETHE_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/lethe)
install(EXPORT lethe-targets NAMESPACE lethe:: DESTINATION ${LETHE_CMAKE_DIR})
install(EXPORT lethe-static-targets NAMESPACE lethe:: DESTINATION ${LETHE_CMAKE_DIR})
configure_package_config_file(${CMAKE_CURRENT_LIST_DIR}/lethe-config.cmake.in
  ${CMAKE_BINARY_DIR}/lethe-config.cmake INSTALL_DESTINATION ${LETHE_CMAKE_DIR})
# 0.x: a minor release may change the API, so only the same minor matches.
write_basic_package_version_file(${CMAKE_BINARY_DIR}/lethe-config-version.cmake
  VERSION ${PROJECT_VERSION} COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_BINARY_DIR}/lethe-config.cmake ${CMAKE_BINARY_DIR}/lethe-config-version.cmake
        DESTINATION ${LETHE_CMAKE_DIR})
