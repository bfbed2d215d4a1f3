# SPDX-License-Identifier: MIT
# Finds normflow's dependencies; used by the build and by the installed package config.
# Fixes two Debian 12 packaging pitfalls (see the style guide):
#  - the xsimd target links a bare `xtl` it never finds: an empty imported target stands in
#    (xtl is used only under XSIMD_ENABLE_XTL_COMPLEX);
#  - Debian's Kokkos::kokkos carries a non-existent include directory: point it at the real one.
find_package(Eigen3 3.4 REQUIRED NO_MODULE)
find_package(xtl QUIET)
if(NOT TARGET xtl)
  add_library(xtl INTERFACE IMPORTED)
endif()
find_package(xsimd 8.1 REQUIRED)
find_package(OpenMP QUIET COMPONENTS CXX)

# Random123 (Debian: librandom123-dev) is header-only and ships no CMake config.
find_path(NORMFLOW_RANDOM123_INCLUDE_DIR Random123/philox.h)
if(NOT NORMFLOW_RANDOM123_INCLUDE_DIR)
  message(FATAL_ERROR "normflow: Random123 not found (Debian/Ubuntu: apt-get install librandom123-dev, "
                      "or set NORMFLOW_RANDOM123_INCLUDE_DIR)")
endif()
if(NORMFLOW_ENABLE_KOKKOS OR normflow_WITH_KOKKOS)
  find_package(Kokkos 3.4 REQUIRED)
  get_target_property(_normflow_kinc Kokkos::kokkos INTERFACE_INCLUDE_DIRECTORIES)
  if(_normflow_kinc AND NOT EXISTS "${_normflow_kinc}/Kokkos_Core.hpp")
    find_path(_normflow_kokkos_core Kokkos_Core.hpp PATH_SUFFIXES trilinos kokkos)
    if(_normflow_kokkos_core)
      set_target_properties(Kokkos::kokkos PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${_normflow_kokkos_core}")
    endif()
  endif()
endif()
