// MAKA and the vificlip protocol on values worked out by hand.
#include <cmath>
#include <vector>

#include "../src/scoring.h"
#include "check.h"

int main() {
    // Two frames, one class with 3 real prompts and a padding row that would win frame 2 if it counted.
    apclip::ClassMatrix classes;
    classes.classes = 1;
    classes.prompts = 4;
    classes.dim = 2;
    classes.embeddings = {1, 0, 0.6f, 0.8f, 0.8f, 0.6f, 0, 1};
    classes.counts = {3};
    const std::vector<float> frames = {1, 0, 0, 1};
    // per frame best: 1 and 0.8 -> 0.9; per prompt best: 1, 0.8, 0.8 -> 2.6 / 3; MAKA = (0.9 + 2.6/3) / 2
    const auto maka = apclip::maka_scores(frames, 2, classes);
    CHECK_NEAR(maka[0], 0.5 * (0.9 + 2.6 / 3.0), 1e-7);

    // vificlip: two classes with one prompt each, two views of two frames.
    apclip::ClassMatrix text;
    text.classes = 2;
    text.prompts = 1;
    text.dim = 2;
    text.embeddings = {1, 0, 0, 1};
    text.counts = {1, 1};
    const std::vector<float> features = {2, 0, 4, 0,   // view 0: mean (3, 0) -> (1, 0)
                                         0, 1, 1, 0};  // view 1: mean (0.5, 0.5) -> (0.707, 0.707)
    const double scale = 10.0;
    const auto scores = apclip::vificlip_scores(features, 4, 2, scale, text);
    const double p0 = 1.0 / (1.0 + std::exp(-scale));  // view 0: softmax(10, 0)
    CHECK_NEAR(scores[0], p0 + 0.5, 1e-9);             // view 1 splits evenly
    CHECK_NEAR(scores[1], (1 - p0) + 0.5, 1e-9);
    CHECK_NEAR(scores[0] + scores[1], 2.0, 1e-12);  // probabilities sum to V
    return check_result();
}
