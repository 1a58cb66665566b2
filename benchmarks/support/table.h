// A results table every benchmark prints to stdout (aligned) and writes as CSV.
#pragma once

#include <string>
#include <vector>

namespace edit::bench {

class Table {
 public:
  explicit Table(std::vector<std::string> columns);
  // Cells in column order; numbers are formatted by the caller (see fmt_num).
  void add_row(std::vector<std::string> cells);
  void print(const std::string& title) const;
  // Writes header + rows; throws edit::Error naming the path if it cannot.
  void write_csv(const std::string& path) const;

 private:
  std::vector<std::string> columns_;
  std::vector<std::vector<std::string>> rows_;
};

// Fixed-point with `digits` decimals ("12.35").
std::string fmt_num(double value, int digits = 2);
// 4096 -> "4 KiB", 268435456 -> "256 MiB".
std::string fmt_bytes(double bytes);

}  // namespace edit::bench
