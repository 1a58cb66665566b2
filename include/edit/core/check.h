// The one error idiom of libedit: EDIT_CHECK(cond, "what is wrong", value, "; what to do").
//
// A failed check throws edit::Error whose message starts with file:line, then the parts streamed
// together. Messages say what was expected, what was found and how to fix it, e.g.
//   EDIT_CHECK(world % s == 0, "world size ", world, " is not divisible by --shard-size ", s,
//              "; pick a shard size that divides the number of ranks");
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace edit {

// Every error libedit raises on bad input or a failed operation.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

namespace detail {

template <typename... Args>
std::string concat(Args&&... args) {
  std::ostringstream out;
  if constexpr (sizeof...(Args) > 0) (out << ... << std::forward<Args>(args));
  return out.str();
}

[[noreturn]] void throw_error(const char* file, int line, const char* condition,
                              const std::string& message);

}  // namespace detail
}  // namespace edit

#define EDIT_CHECK(cond, ...)                                                                   \
  do {                                                                                          \
    if (!(cond)) {                                                                              \
      ::edit::detail::throw_error(__FILE__, __LINE__, #cond, ::edit::detail::concat(__VA_ARGS__)); \
    }                                                                                           \
  } while (false)

// Unconditional failure with the same message format (for switch defaults, unreachable states).
#define EDIT_FAIL(...) \
  ::edit::detail::throw_error(__FILE__, __LINE__, nullptr, ::edit::detail::concat(__VA_ARGS__))
