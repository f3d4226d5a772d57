// Frame embeddings -> one score per class, by the bundle's protocol (apclip/scoring.py):
//   maka      1/2 * ( mean_i max_j v_i.c_j  +  mean_j max_i v_i.c_j ) over all V*T frames pooled and the
//             class's real prompts (padding rows never win a maximum nor enter a mean)
//   vificlip  per view: mean of its T raw features, L2-normalised, logit_scale x cosine with the class's one
//             prompt, softmax over classes; summed over views
#pragma once

#include <vector>

#include "bundle.h"

namespace apclip {

// frames: [Nv, E] L2-normalised -> [K]
std::vector<double> maka_scores(const std::vector<float>& frames, int num_frames, const ClassMatrix& classes);

// frames: [V * T, E] view-major raw features -> [K]
std::vector<double> vificlip_scores(const std::vector<float>& frames, int num_frames, int frames_per_view,
                                    double logit_scale, const ClassMatrix& classes);

std::vector<double> score(const Scoring& scoring, const std::vector<float>& frames, int num_frames, int frames_per_view,
                          const ClassMatrix& classes);

}  // namespace apclip
