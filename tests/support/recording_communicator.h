// A communicator that hands every call on to a real group and writes it down: which collective,
// its dtype and size, and the phase of the step the test was in when it was issued and waited.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "edit/comm/communicator.h"

namespace edit::testing_support {

using edit::comm::Communicator;
using edit::comm::WorkPtr;

// What the groups of a test were asked to do: per call the collective, its dtype and size, the
// phase of the step the test was in when it was issued and when its Work was first waited for.
// A blocking host exchange (all_gather_values) is issued and waited in one phase by definition.
struct CallLog {
  struct Call {
    std::string group, op;
    at::ScalarType dtype = at::kFloat;
    std::int64_t numel = 0;
    std::string issued_in, waited_in;  // waited_in empty: never waited
  };
  std::vector<Call> calls;
  std::string phase;
};

class RecordedWork final : public edit::comm::Work {
 public:
  RecordedWork(WorkPtr inner, std::shared_ptr<CallLog> log, size_t index)
      : inner_(std::move(inner)), log_(std::move(log)), index_(index) {}
  void wait() override {
    inner_->wait();
    auto& call = log_->calls[index_];
    if (call.waited_in.empty()) call.waited_in = log_->phase;
  }
  bool is_completed() override { return inner_->is_completed(); }

 private:
  WorkPtr inner_;
  std::shared_ptr<CallLog> log_;
  size_t index_;
};

// Hands every call on to a real group and writes it down in a CallLog.
class RecordingCommunicator final : public Communicator {
 public:
  RecordingCommunicator(std::shared_ptr<Communicator> inner, std::shared_ptr<CallLog> log)
      : inner_(std::move(inner)), log_(std::move(log)) {}
  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  const std::string& name() const override { return inner_->name(); }
  WorkPtr all_reduce(at::Tensor tensor, edit::comm::AllReduceOptions options) override {
    return record("all_reduce", tensor, inner_->all_reduce(tensor, options));
  }
  WorkPtr all_gather(at::Tensor output, at::Tensor input) override {
    return record("all_gather", output, inner_->all_gather(output, input));
  }
  WorkPtr reduce_scatter(at::Tensor output, at::Tensor input,
                         edit::comm::ReduceScatterOptions options) override {
    return record("reduce_scatter", input, inner_->reduce_scatter(output, input, options));
  }
  WorkPtr broadcast(at::Tensor tensor, int root) override {
    return record("broadcast", tensor, inner_->broadcast(tensor, root));
  }
  WorkPtr barrier() override { return record("barrier", at::Tensor(), inner_->barrier()); }
  std::vector<double> all_gather_values(const std::vector<double>& mine) override {
    auto values = inner_->all_gather_values(mine);
    log_->calls.push_back({name(), "all_gather_values", at::kDouble, static_cast<std::int64_t>(values.size()),
                           log_->phase, log_->phase});
    return values;
  }
  edit::comm::CommStats stats() const override { return inner_->stats(); }
  void reset_stats() override { inner_->reset_stats(); }

 private:
  WorkPtr record(const char* op, const at::Tensor& tensor, WorkPtr work) {
    log_->calls.push_back({name(), op, tensor.defined() ? tensor.scalar_type() : at::kByte,
                           tensor.defined() ? tensor.numel() : 0, log_->phase, ""});
    return std::make_shared<RecordedWork>(std::move(work), log_, log_->calls.size() - 1);
  }
  std::shared_ptr<Communicator> inner_;
  std::shared_ptr<CallLog> log_;
};

}  // namespace edit::testing_support
