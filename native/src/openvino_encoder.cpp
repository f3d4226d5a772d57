// The OpenVINO backend: reads the bundle's ONNX graph directly and compiles it for a device (CPU by
// default) with f32 inference precision, so that CPUs with bf16 units do not silently round.
#include <openvino/openvino.hpp>

#include <algorithm>
#include <cstring>

#include "encoder.h"
#include "errors.h"

namespace apclip {
namespace {

class OpenVinoEncoder : public VisionEncoder {
public:
    OpenVinoEncoder(const Bundle& bundle, const EncoderOptions& options)
        : device_(options.device), input_(bundle.vision_input), output_(bundle.vision_output) {
        batch_size_ = bundle.batch_max > 0 ? std::min(options.batch_size, bundle.batch_max) : options.batch_size;
        try {
            ov::Core core;
            // A compiled model is keyed by OpenVINO itself (model, device, settings, version): a stale one is never used.
            if (!options.cache_dir.empty()) core.set_property(ov::cache_dir(options.cache_dir));
            ov::AnyMap config{ov::hint::inference_precision(ov::element::f32),
                              ov::hint::performance_mode(ov::hint::PerformanceMode::LATENCY)};
            if (options.threads > 0) config.emplace(ov::inference_num_threads(options.threads));
            compiled_ = core.compile_model(bundle.vision_path, device_, config);
            request_ = compiled_.create_infer_request();
        } catch (const std::exception& exc) {
            throw Error(ErrorKind::Backend, "OpenVINO cannot load " + bundle.vision_path + " on " + device_ + " (" +
                                                first_line(exc.what()) + "); re-run apclip-export");
        }
    }

    std::string name() const override {
        std::string lower = device_;
        std::transform(lower.begin(), lower.end(), lower.begin(), ::tolower);
        return "openvino-" + lower;
    }

    void encode(const float* pixels, int count, int resolution, std::vector<float>& out, int& dim) override {
        const size_t image = 3 * static_cast<size_t>(resolution) * resolution;
        try {
            for (int start = 0; start < count; start += batch_size_) {
                const int n = std::min(batch_size_, count - start);
                // Wraps the caller's memory: no copy of the pixels.
                ov::Tensor input(ov::element::f32, ov::Shape{static_cast<size_t>(n), 3, static_cast<size_t>(resolution),
                                                           static_cast<size_t>(resolution)},
                                 const_cast<float*>(pixels + start * image));
                request_.set_tensor(input_, input);
                request_.infer();
                const ov::Tensor result = request_.get_tensor(output_);
                dim = static_cast<int>(result.get_shape().back());
                const float* data = result.data<const float>();
                out.insert(out.end(), data, data + static_cast<size_t>(n) * dim);
            }
        } catch (const std::exception& exc) {
            throw Error(ErrorKind::Backend, "OpenVINO failed to run the vision encoder (" + first_line(exc.what()) + ")");
        }
    }

private:
    static std::string first_line(const std::string& text) {
        const size_t end = text.find('\n');
        return end == std::string::npos ? text : text.substr(0, end);
    }

    std::string device_, input_, output_;
    int batch_size_ = 32;
    ov::CompiledModel compiled_;
    ov::InferRequest request_;
};

}  // namespace

std::unique_ptr<VisionEncoder> make_encoder(const Bundle& bundle, const EncoderOptions& options) {
    return std::make_unique<OpenVinoEncoder>(bundle, options);
}

}  // namespace apclip
