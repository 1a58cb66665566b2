# The memory allocator of libedit's programs and of every executable that links edit::edit.
#
# glibc's malloc hands large blocks back to the kernel (munmap) when they are freed and maps them
# again at the next step. Training frees and reallocates the same large buffers every step (the
# logits alone are B x T x V floats), so with a 50k-token vocabulary 18 of 35 s of a run were
# system time. tcmalloc keeps them. To replace malloc it must come before libc in the
# executable's own dependencies, so it is an INTERFACE link of edit::edit, wrapped in
# --no-as-needed because no symbol of it is named (the linker would drop it otherwise).
#
#   EDIT_ALLOCATOR=AUTO      tcmalloc when libtcmalloc_minimal is found, else glibc (with a warning)
#   EDIT_ALLOCATOR=tcmalloc  tcmalloc, or a configure error saying what to install
#   EDIT_ALLOCATOR=system    glibc's malloc
set(EDIT_ALLOCATOR AUTO CACHE STRING "Allocator of the programs and consumers: AUTO, tcmalloc or system")
set_property(CACHE EDIT_ALLOCATOR PROPERTY STRINGS AUTO tcmalloc system)
find_library(EDIT_TCMALLOC_LIBRARY NAMES tcmalloc_minimal libtcmalloc_minimal.so.4)
set(EDIT_USE_TCMALLOC OFF)
if(EDIT_ALLOCATOR STREQUAL "system")
elseif(EDIT_ALLOCATOR MATCHES "^(AUTO|tcmalloc)$" AND EDIT_TCMALLOC_LIBRARY)
  set(EDIT_USE_TCMALLOC ON)
elseif(EDIT_ALLOCATOR STREQUAL "tcmalloc")
  message(FATAL_ERROR "EDIT_ALLOCATOR=tcmalloc but libtcmalloc_minimal was not found; "
                      "apt-get install libtcmalloc-minimal4, or pass -DEDIT_ALLOCATOR=system")
elseif(EDIT_ALLOCATOR STREQUAL "AUTO")
  message(WARNING "libtcmalloc_minimal not found: programs use glibc's malloc, whose unmapping of "
                  "large buffers costs up to half of a run in system time; apt-get install libtcmalloc-minimal4")
else()
  message(FATAL_ERROR "EDIT_ALLOCATOR='${EDIT_ALLOCATOR}' is not one of AUTO, tcmalloc, system")
endif()
