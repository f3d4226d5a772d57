// The backend boundary: everything above it (bundle, video, preprocessing, scoring) is backend-free.
// A backend turns a batch of preprocessed images [N, 3, R, R] into embeddings [N, E]. OpenVINO is the
// one implemented (openvino_encoder.cpp); a TensorRT one for Jetson would implement the same class from
// an engine built on the device and be chosen by make_encoder (docs/native.md).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "bundle.h"

namespace apclip {

class VisionEncoder {
public:
    virtual ~VisionEncoder() = default;
    virtual std::string name() const = 0;  // e.g. "openvino-cpu"
    // pixels: count x 3 x R x R floats -> count x dim floats (appended to `out`); dim set on return.
    virtual void encode(const float* pixels, int count, int resolution, std::vector<float>& out, int& dim) = 0;
};

struct EncoderOptions {
    std::string device = "CPU";  // OpenVINO device name
    int threads = 0;             // 0: the backend's default (all cores)
    int batch_size = 32;         // images per call (capped by the bundle's batch_max), as the Python engine batches
    std::string cache_dir;       // where OpenVINO keeps compiled models ("": compile every time): 3x faster start-up
};

std::unique_ptr<VisionEncoder> make_encoder(const Bundle& bundle, const EncoderOptions& options);

}  // namespace apclip
