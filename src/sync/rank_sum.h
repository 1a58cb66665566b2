// Sums over the ranks of a group that every rank gets bit for bit: each rank holds every rank's
// values (gathered) and adds them in rank order, in double. An all_reduce does not promise that
// (its order may differ per rank), and a penalty decision or a clip scale that differed in the
// last bit between ranks would let their anchors drift apart. The pseudo-gradient norms and the
// clip norm are summed over the shard group this way by every Local SGD strategy.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "edit/comm/communicator.h"

namespace edit::sync {

// (n,) float64 host tensor holding `values`: small exchanges (norms) go out as host tensors, so
// they take the host transport (MPI) on every mesh, as all_gather_values() does.
at::Tensor host_values(const std::vector<double>& values);

// all = every rank's n float64 values, rank r's at [r n, (r + 1) n): the sum over ranks of value k.
double sum_over_ranks(const at::Tensor& all, std::int64_t n, std::int64_t k);

// Each of `mine` summed over `group` (blocking; a group of one returns `mine`).
std::vector<double> sum_over_ranks(comm::Communicator& group, const std::vector<double>& mine);

// This worker's L2 norm of each of several units, from its shards' squared norms of them: the
// square root of each sum over the shard group (blocking, the same bits on every rank of it).
std::vector<double> norms_over_shards(comm::Communicator& shard_group, const std::vector<double>& sqnorms);

}  // namespace edit::sync
