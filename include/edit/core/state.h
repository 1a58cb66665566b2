// Stateful: how a component saves and restores itself (docs/architecture.md, train/).
//
// The model's shards, the inner optimizer, the sync strategy (with its outer optimizer and
// penalty), the data cursor, the RNG and the trainer's step each hand their state over as a
// StateDict of named tensors and numbers, and take it back from one. The checkpointer registers
// components under a name and writes what they hand it; it knows none of their keys, so a new
// strategy's state (A-EDiT's clocks, Streaming DiLoCo's fragments in flight) needs no change there.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace edit {

struct StateDict {
  // Tensors may alias live state: the saver copies them out before the component runs again.
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  std::map<std::string, double> scalars;  // counters, EMA statistics, cursors (exact up to 2^53)

  void put(std::string key, at::Tensor tensor) { tensors.emplace_back(std::move(key), std::move(tensor)); }
  void put(const std::string& key, double value) { scalars[key] = value; }
  void put(const std::string& key, std::int64_t value) { scalars[key] = static_cast<double>(value); }

  // Lookups throw edit::Error naming `owner`, the key, and that the checkpoint came from a
  // different configuration.
  const at::Tensor& tensor(const std::string& owner, const std::string& key) const;
  double scalar(const std::string& owner, const std::string& key) const;
  std::int64_t integer(const std::string& owner, const std::string& key) const;
  bool has_scalar(const std::string& key) const { return scalars.count(key) != 0; }
  // Copies the saved tensor `key` into `live` in place, checking dtype and shape.
  void copy_into(const std::string& owner, const std::string& key, at::Tensor& live) const;
};

class Stateful {
 public:
  virtual ~Stateful() = default;
  // The state to save now. Non-const: a component may first complete work in flight.
  virtual StateDict state_dict() = 0;
  // Restores what state_dict() handed out (read back from disk): throws naming what does not fit.
  virtual void load_state_dict(const StateDict& state) = 0;
};

}  // namespace edit
