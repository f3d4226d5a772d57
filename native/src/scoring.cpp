#include "scoring.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "errors.h"

namespace apclip {

std::vector<double> maka_scores(const std::vector<float>& frames, int num_frames, const ClassMatrix& classes) {
    const int e = classes.dim, p_max = classes.prompts;
    std::vector<double> out(classes.classes);
    std::vector<double> best_frame(p_max);
    for (int k = 0; k < classes.classes; ++k) {
        const int prompts = classes.counts[k];
        const float* c = &classes.embeddings[static_cast<size_t>(k) * p_max * e];  // [P, E]
        std::fill(best_frame.begin(), best_frame.end(), -std::numeric_limits<double>::infinity());
        double sum_best_prompt = 0.0;
        for (int i = 0; i < num_frames; ++i) {
            const float* v = &frames[static_cast<size_t>(i) * e];
            double best_prompt = -std::numeric_limits<double>::infinity();
            for (int j = 0; j < prompts; ++j) {
                double sim = 0.0;
                for (int d = 0; d < e; ++d) sim += static_cast<double>(v[d]) * c[static_cast<size_t>(j) * e + d];
                best_prompt = std::max(best_prompt, sim);
                best_frame[j] = std::max(best_frame[j], sim);
            }
            sum_best_prompt += best_prompt;
        }
        double sum_best_frame = 0.0;
        for (int j = 0; j < prompts; ++j) sum_best_frame += best_frame[j];
        out[k] = 0.5 * (sum_best_prompt / num_frames + sum_best_frame / prompts);
    }
    return out;
}

std::vector<double> vificlip_scores(const std::vector<float>& frames, int num_frames, int frames_per_view,
                                    double logit_scale, const ClassMatrix& classes) {
    const int e = classes.dim, k_count = classes.classes;
    if (frames_per_view < 1 || num_frames % frames_per_view)
        throw Error(ErrorKind::Internal, "frames are not a whole number of views");
    std::vector<double> out(k_count, 0.0), video(e), logits(k_count);
    for (int view = 0; view < num_frames / frames_per_view; ++view) {
        std::fill(video.begin(), video.end(), 0.0);
        for (int t = 0; t < frames_per_view; ++t)
            for (int d = 0; d < e; ++d) video[d] += frames[static_cast<size_t>(view * frames_per_view + t) * e + d];
        double norm = 0.0;
        for (double& x : video) {
            x /= frames_per_view;
            norm += x * x;
        }
        norm = std::sqrt(norm);
        double top = -std::numeric_limits<double>::infinity();
        for (int k = 0; k < k_count; ++k) {
            const float* text = &classes.embeddings[static_cast<size_t>(k) * classes.prompts * e];  // prompt 0
            double dot = 0.0;
            for (int d = 0; d < e; ++d) dot += video[d] / norm * text[d];
            logits[k] = logit_scale * dot;
            top = std::max(top, logits[k]);
        }
        double total = 0.0;
        for (double& l : logits) total += (l = std::exp(l - top));
        for (int k = 0; k < k_count; ++k) out[k] += logits[k] / total;
    }
    return out;
}

std::vector<double> score(const Scoring& scoring, const std::vector<float>& frames, int num_frames, int frames_per_view,
                          const ClassMatrix& classes) {
    if (scoring.protocol == "vificlip")
        return vificlip_scores(frames, num_frames, frames_per_view, scoring.logit_scale, classes);
    return maka_scores(frames, num_frames, classes);
}

}  // namespace apclip
