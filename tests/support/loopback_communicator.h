// A Communicator for a group of one, so single-process tests need no MPI: every collective is
// the identity (up to the prescale), and broadcast from rank 0 changes nothing. CPU tensors only.
#pragma once

#include <ATen/ATen.h>

#include <memory>
#include <string>

#include "edit/comm/communicator.h"
#include "edit/core/check.h"

namespace edit::testing_support {

using edit::comm::AllReduceOptions;
using edit::comm::CommStats;
using edit::comm::Communicator;
using edit::comm::ReduceScatterOptions;
using edit::comm::Work;
using edit::comm::WorkPtr;

class DoneWork final : public Work {
 public:
  void wait() override {}
  bool is_completed() override { return true; }
};

class LoopbackCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  const std::string& name() const override { return name_; }

  WorkPtr all_reduce(at::Tensor tensor, AllReduceOptions options) override {
    if (options.prescale != 1.0) tensor.mul_(options.prescale);
    return done();
  }
  WorkPtr all_gather(at::Tensor output, at::Tensor input) override {
    EDIT_CHECK(output.numel() == input.numel(), "loopback all_gather: output and input sizes differ");
    output.copy_(input.reshape(output.sizes()));
    return done();
  }
  WorkPtr reduce_scatter(at::Tensor output, at::Tensor input, ReduceScatterOptions) override {
    EDIT_CHECK(output.numel() == input.numel(), "loopback reduce_scatter: output and input sizes differ");
    output.copy_(input.reshape(output.sizes()));
    return done();
  }
  WorkPtr broadcast(at::Tensor, int root) override {
    EDIT_CHECK(root == 0, "loopback broadcast: root ", root, " is not rank 0");
    return done();
  }
  WorkPtr barrier() override { return done(); }
  std::vector<double> all_gather_values(const std::vector<double>& mine) override { return mine; }
  CommStats stats() const override { return stats_; }
  void reset_stats() override { stats_ = CommStats{}; }

 private:
  WorkPtr done() {
    ++stats_.ops;
    return std::make_shared<DoneWork>();
  }
  std::string name_ = "loopback";
  CommStats stats_;
};

}  // namespace edit::testing_support
