#pragma once
// The model a run trains, beyond its fresh weights: [train] freeze (tensors not trained) and
// [model] init_from (another run's weights on a fresh start), with the lines they print.
#include <cstdint>

#include "model/model.hpp"
#include "train/experiment.hpp"

namespace moelab {

// [train] freeze on the model's layout, before the optimizer lays out its moments (it keeps
// them for trainable tensors only). Returns the layout for the optimizer.
const ParamLayout& model_setup_freeze(Model<float>& model, const Experiment& x);
// The frozen tensors, one line on stderr (nothing without [train] freeze).
void model_setup_print_frozen(const Model<float>& model, const Experiment& x);
// [model] init_from: another run's weights, on a fresh start only (a resumed run has its own);
// its tokenizer must be the data's (`fingerprint`).
void model_setup_init_from(Model<float>& model, const Experiment& x, uint64_t fingerprint);

}  // namespace moelab
