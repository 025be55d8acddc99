#include "train/step_stats.hpp"

#include <algorithm>

namespace moelab {

void step_stats_add_router(std::vector<RouterStats>& router, const Losses& l,
                           const std::vector<std::vector<int64_t>>& counts) {
  size_t i = 0;
  for (size_t layer = 0; layer < counts.size(); layer++) {
    if (counts[layer].empty()) continue;
    if (i == router.size()) router.push_back({.layer = int64_t(layer)});
    router[i].aux += l.layers[layer].aux_raw, router[i++].z += l.layers[layer].z_raw;
  }
}

void step_stats_finish_router(std::vector<RouterStats>& router,
                              const std::vector<std::vector<int64_t>>& counts, double accum) {
  size_t i = 0;
  for (const std::vector<int64_t>& c : counts) {
    if (c.empty()) continue;
    RouterStats& s = router[i++];
    s.aux /= accum, s.z /= accum;
    int64_t total = 0, most = 0;
    for (int64_t n : c) total += n, most = std::max(most, n);
    s.max_load = total > 0 ? double(most) * double(c.size()) / double(total) : 0.0;
  }
}

void step_stats_sum(Collective& comm, StepStats& r) {
  std::vector<double> v = {r.lm, r.aux, r.z};
  for (const RouterStats& s : r.router) {
    v.push_back(s.aux);
    v.push_back(s.z);
  }
  comm.sum(v);
  r.lm = v[0], r.aux = v[1], r.z = v[2];
  for (size_t i = 0; i < r.router.size(); i++) {
    r.router[i].aux = v[3 + 2 * i];
    r.router[i].z = v[4 + 2 * i];
  }
}

void step_stats_log(const StepStats& r, nlohmann::ordered_json& line) {
  line["loss"] = r.lm;
  line["lr"] = r.lr;
  line["grad_norm"] = r.grad_norm;
  if (r.expert_load.empty()) {
    return;
  }
  line["aux_loss"] = r.aux;
  line["z_loss"] = r.z;
  line["expert_load"] = r.expert_load;
  nlohmann::ordered_json router = nlohmann::ordered_json::array();
  for (const RouterStats& s : r.router) {
    router.push_back({{"layer", s.layer}, {"aux", s.aux}, {"z", s.z}, {"max_load", s.max_load}});
  }
  line["router"] = router;
}

}  // namespace moelab
