// The exported bundle as the runtime reads it (apclip/bundle.py defines the format): manifest.json,
// the vision graph and the class matrix, each checked against its sha256 in the manifest.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace apclip {

struct Normalization {
    double mean[3];  // RGB
    double std[3];
    double scale;  // 1/255 (CLIP, 0-1 RGB) or 1 (ImageNet constants on 0-255 RGB)
};

struct Preprocessing {
    std::string profile = "apclip";  // apclip | vificlip | clip (apclip/preprocessing.py)
    int frames = 8;                  // T, frames per temporal clip
    int clips = 2;                   // N, temporal clips per video
    int crops = 2;                   // C, spatial crops per frame
    int resolution = 224;            // R, crop side in pixels
    Normalization normalization{};
    int views() const { return clips * crops; }
};

struct Scoring {
    std::string protocol = "maka";  // maka | vificlip (apclip/scoring_protocol.py)
    double logit_scale = 0.0;       // vificlip multiplies cosines by it
};

struct ClassMatrix {
    int classes = 0, prompts = 0, dim = 0;  // K, P_max, E
    std::vector<float> embeddings;          // [K, P, E] L2-normalised rows, zero padding
    std::vector<int32_t> counts;            // [K] real prompts per class
};

struct Bundle {
    std::string dir;
    Preprocessing preprocessing;
    Scoring scoring;
    std::vector<std::string> labels;  // class order of the matrix
    std::string vision_path;          // vision.onnx (or vision.int8.onnx)
    std::string vision_input = "pixels";
    std::string vision_output = "embeddings";
    int batch_max = 0;                // largest vision batch the graph was exported for (0: no limit)
    ClassMatrix classes;
};

// Read and verify a bundle: format, labels hash, the class matrix bound to the manifest, and the sha256
// of every file used. precision "fp32" reads vision.onnx, "int8" vision.int8.onnx.
// Throws Error(Bundle) with one line naming the file and "re-run apclip-export".
Bundle open_bundle(const std::string& dir, const std::string& precision = "fp32");

// sha256 of a label list's JSON form, as apclip.labels.labels_sha256 computes it (json.dumps, ensure_ascii=False).
std::string labels_sha256(const std::vector<std::string>& labels);

}  // namespace apclip
