#pragma once
// The forgetting metrics of docs/methods.md §2.3-2.5 on decoded or teacher-forced outputs.
#include <cstdint>
#include <span>
#include <string_view>

namespace moelab {

// M_in: the share of positions where the greedy continuation equals the true continuation,
// over n samples of len tokens each (Biderman et al. 2023's memorisation score).
double metric_m_in(std::span<const int32_t> generated, std::span<const int32_t> target, int64_t n,
                   int64_t len);

// M_ex for one sample: 1 if the entity string occurs in the decoded continuation. Normalisation:
// the entity is trimmed of surrounding whitespace (tokenisers attach a leading space to it in
// running text) and searched case-sensitively as a substring of the decoded UTF-8 text.
bool metric_m_ex_hit(std::string_view decoded, std::string_view entity);

// The index of the largest logit, the lowest on ties (as greedy decoding breaks them); two
// vectorised sweeps instead of std::max_element's dependent compare chain. V >= 1: callers
// check it once outside their parallel loops (a throw inside one would abort).
int32_t logits_argmax(const float* z, int64_t V);

// M(f): teacher-forced top-1 accuracy; logits [N, V], targets [N] (< 0 ignored). Ties go to
// the lowest id, as in greedy decoding.
double metric_top1(std::span<const float> logits, std::span<const int32_t> targets, int64_t V);

}  // namespace moelab
