#include "table.h"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iostream>

#include "edit/core/check.h"

namespace edit::bench {

Table::Table(std::vector<std::string> columns) : columns_(std::move(columns)) {}

void Table::add_row(std::vector<std::string> cells) {
  EDIT_CHECK(cells.size() == columns_.size(), "table row has ", cells.size(), " cells for ", columns_.size(), " columns");
  rows_.push_back(std::move(cells));
}

void Table::print(const std::string& title) const {
  std::vector<size_t> width(columns_.size());
  for (size_t c = 0; c < columns_.size(); ++c) {
    width[c] = columns_[c].size();
    for (const auto& row : rows_) width[c] = std::max(width[c], row[c].size());
  }
  std::cout << "\n" << title << "\n";
  auto line = [&](const std::vector<std::string>& cells) {
    std::cout << "|";
    for (size_t c = 0; c < cells.size(); ++c) {
      std::cout << " " << std::string(width[c] - cells[c].size(), ' ') << cells[c] << " |";
    }
    std::cout << "\n";
  };
  line(columns_);
  std::cout << "|";
  for (size_t c = 0; c < columns_.size(); ++c) std::cout << std::string(width[c] + 1, '-') << ":|";
  std::cout << "\n";
  for (const auto& row : rows_) line(row);
  std::cout.flush();
}

void Table::write_csv(const std::string& path) const {
  std::ofstream out(path);
  EDIT_CHECK(out.good(), "cannot write ", path, "; check that its folder exists and is writable (--out)");
  auto line = [&](const std::vector<std::string>& cells) {
    for (size_t c = 0; c < cells.size(); ++c) out << (c ? "," : "") << cells[c];
    out << "\n";
  };
  line(columns_);
  for (const auto& row : rows_) line(row);
  EDIT_CHECK(out.good(), "writing ", path, " failed (disk full?)");
}

std::string fmt_num(double value, int digits) {
  char text[64];
  std::snprintf(text, sizeof(text), "%.*f", digits, value);
  return text;
}

std::string fmt_bytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB"};
  int unit = 0;
  while (bytes >= 1024 && unit < 3) {
    bytes /= 1024;
    ++unit;
  }
  char text[64];
  std::snprintf(text, sizeof(text), bytes == static_cast<long long>(bytes) ? "%.0f %s" : "%.1f %s", bytes, units[unit]);
  return text;
}

}  // namespace edit::bench
