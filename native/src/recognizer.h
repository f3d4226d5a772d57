// The pipeline the C API and the CLI share: bundle + encoder -> a Prediction per source.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "bundle.h"
#include "encoder.h"

namespace apclip {

struct LabelScore {
    std::string label;
    double score;
};

struct Prediction {
    std::string source;
    std::vector<LabelScore> top;      // best first; ties keep label order (a stable sort, as numpy's)
    int frames = 0;                   // frame embeddings scored (V x T)
    int distinct_frames = 0;          // different decoded frames among them
    bool approximate = false;
    std::vector<std::pair<std::string, double>> timings;  // stage -> seconds, in stage order
};

struct Views {
    std::vector<float> pixels;  // [V, T, 3, R, R]
    int views = 0, frames = 0, resolution = 0;
};

class Recognizer {
public:
    Recognizer(const std::string& bundle_dir, const EncoderOptions& options = {}, const std::string& precision = "fp32");

    // max_frames: decode at most this many frames (cameras and live streams need it; 0: the whole video)
    Prediction predict(const std::string& source, int topk, int64_t max_frames = 0);
    Views preprocess(const std::string& source);  // the encoder's input, for parity checks (--dump-pixels)

    const Bundle& bundle() const { return bundle_; }
    std::string backend() const { return encoder_->name(); }

private:
    Bundle bundle_;
    std::unique_ptr<VisionEncoder> encoder_;
};

}  // namespace apclip
