#include "rank_sum.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>

#include "edit/core/check.h"

namespace edit::sync {
namespace {

double sum_over_ranks(const double* all, std::int64_t count, std::int64_t n, std::int64_t k) {
  double total = 0.0;
  for (std::int64_t i = k; i < count; i += n) total += all[i];  // rank order
  return total;
}

}  // namespace

at::Tensor host_values(const std::vector<double>& values) {
  at::Tensor t = at::empty({static_cast<std::int64_t>(values.size())}, at::kDouble);
  std::copy(values.begin(), values.end(), t.data_ptr<double>());
  return t;
}

double sum_over_ranks(const at::Tensor& all, std::int64_t n, std::int64_t k) {
  EDIT_CHECK(all.scalar_type() == at::kDouble && all.is_contiguous() && all.device().is_cpu() && n >= 1 &&
                 k >= 0 && k < n && all.numel() % n == 0,
             "sum_over_ranks needs a contiguous host float64 tensor of ranks x ", n,
             " values and k < n; got ", all.numel(), " values of ", all.scalar_type(), ", k ", k);
  return sum_over_ranks(all.data_ptr<double>(), all.numel(), n, k);
}

std::vector<double> sum_over_ranks(comm::Communicator& group, const std::vector<double>& mine) {
  if (group.size() == 1 || mine.empty()) return mine;
  // Host float64 tensors take the host transport on every mesh, as all_gather_values() does, but
  // as an ordinary all_gather: the exchange shows (and is waited) like every other collective.
  const auto n = static_cast<std::int64_t>(mine.size());
  at::Tensor all = at::empty({group.size() * n}, at::kDouble);
  group.all_gather(all, host_values(mine))->wait();
  std::vector<double> out(mine.size());
  for (std::int64_t k = 0; k < n; ++k) {
    out[static_cast<size_t>(k)] = sum_over_ranks(all.data_ptr<double>(), all.numel(), n, k);
  }
  return out;
}

std::vector<double> norms_over_shards(comm::Communicator& shard_group, const std::vector<double>& sqnorms) {
  std::vector<double> norms = sum_over_ranks(shard_group, sqnorms);
  for (double& norm : norms) norm = std::sqrt(norm);
  return norms;
}

}  // namespace edit::sync
