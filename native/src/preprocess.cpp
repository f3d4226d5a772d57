#include "preprocess.h"

#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <cmath>

#include "errors.h"
#include "resize_pil.h"

namespace apclip {
namespace {

// apclip profile: short side to R, long side rounded half up (at least R).
std::pair<int, int> resized_size(int h, int w, int short_side) {
    if (h <= w) return {short_side, std::max(short_side, static_cast<int>(w * static_cast<double>(short_side) / h + 0.5))};
    return {std::max(short_side, static_cast<int>(h * static_cast<double>(short_side) / w + 0.5)), short_side};
}

// vificlip profile: mmcv.rescale_size, scale = S / short side, each side int(side * scale + 0.5).
std::pair<int, int> mmcv_rescaled_size(int h, int w, int short_side) {
    const double scale = static_cast<double>(short_side) / std::min(h, w);
    return {static_cast<int>(h * scale + 0.5), static_cast<int>(w * scale + 0.5)};
}

// clip profile: torchvision's Resize(R): the long side truncated.
std::pair<int, int> torchvision_resized_size(int h, int w, int short_side) {
    if (w <= h) return {static_cast<int>(short_side * static_cast<double>(h) / w), short_side};
    return {short_side, static_cast<int>(short_side * static_cast<double>(w) / h)};
}

int vificlip_short_side(int resolution, int crops) {
    return crops == 3 ? resolution : static_cast<int>(256.0 / 224.0 * resolution);
}

cv::Mat resize_short_side(const cv::Mat& image, int short_side) {
    auto [h, w] = resized_size(image.rows, image.cols, short_side);
    if (h == image.rows && w == image.cols) return image;
    const bool shrinking = static_cast<int64_t>(h) * w < static_cast<int64_t>(image.rows) * image.cols;
    cv::Mat out;
    cv::resize(image, out, cv::Size(w, h), 0, 0, shrinking ? cv::INTER_AREA : cv::INTER_CUBIC);
    return out;
}

}  // namespace

cv::Mat resize_frame(const cv::Mat& bgr, const Preprocessing& spec) {
    const int r = spec.resolution;
    if (spec.profile == "vificlip") {
        auto [h, w] = mmcv_rescaled_size(bgr.rows, bgr.cols, vificlip_short_side(r, spec.crops));
        cv::Mat out;
        cv::resize(bgr, out, cv::Size(w, h), 0, 0, cv::INTER_LINEAR);  // mmcv's 'bilinear'
        return out;
    }
    if (spec.profile == "clip") {
        auto [h, w] = torchvision_resized_size(bgr.rows, bgr.cols, r);
        return resize_pil_bicubic(bgr, h, w);
    }
    return resize_short_side(bgr, r);
}

std::vector<std::pair<int, int>> crop_boxes(int height, int width, int size, int crops, const std::string& profile) {
    if (profile == "vificlip") {
        if (crops == 3) {  // mmaction ThreeCrop: left/top, right/bottom, middle
            if (height == size) {
                const int step = (width - size) / 2;
                return {{0, 0}, {0, 2 * step}, {0, step}};
            }
            if (width == size) {
                const int step = (height - size) / 2;
                return {{0, 0}, {2 * step, 0}, {step, 0}};
            }
            throw Error(ErrorKind::Internal, "ThreeCrop needs a frame with one side " + std::to_string(size));
        }
        return {{(height - size) / 2, (width - size) / 2}};  // mmaction CenterCrop (floor division)
    }
    if (profile == "clip") {  // torchvision CenterCrop: Python's round(), half to even
        return {{static_cast<int>(std::nearbyint((height - size) / 2.0)), static_cast<int>(std::nearbyint((width - size) / 2.0))}};
    }
    if (std::min(height, width) < size) throw Error(ErrorKind::Internal, "frame is smaller than the crop");
    const int extra = std::max(height, width) - size;  // room along the long side
    std::vector<int> along;
    if (crops == 1) along = {extra / 2};
    else if (crops == 2) along = {0, extra};
    else along = {0, extra / 2, extra};
    const int top_margin = (height - size) / 2, left_margin = (width - size) / 2;
    std::vector<std::pair<int, int>> out;
    for (int offset : along) out.push_back(width >= height ? std::make_pair(top_margin, offset) : std::make_pair(offset, left_margin));
    return out;
}

void write_views(const std::vector<std::vector<cv::Mat>>& clips, const Preprocessing& spec, float* out) {
    const int r = spec.resolution, crops = spec.crops, frames = spec.frames;
    const size_t plane = static_cast<size_t>(r) * r;
    // (pixel * scale - mean) / std folded into one multiply-add, rounded to float as numpy does
    float gain[3], bias[3];
    for (int c = 0; c < 3; ++c) {
        gain[c] = static_cast<float>(spec.normalization.scale / spec.normalization.std[c]);
        bias[c] = static_cast<float>(-spec.normalization.mean[c] / spec.normalization.std[c]);
    }
    for (size_t n = 0; n < clips.size(); ++n) {
        for (int t = 0; t < frames; ++t) {
            const cv::Mat& frame = clips[n][t];
            const auto boxes = crop_boxes(frame.rows, frame.cols, r, crops, spec.profile);
            for (int c = 0; c < crops; ++c) {
                const size_t view = n * crops + c;  // clip-major view order
                float* dst = out + (view * frames + t) * 3 * plane;  // [V, T, 3, R, R]
                const auto [top, left] = boxes[c];
                for (int y = 0; y < r; ++y) {
                    const uint8_t* row = frame.ptr<uint8_t>(top + y) + 3 * left;
                    for (int x = 0; x < r; ++x) {
                        for (int rgb = 0; rgb < 3; ++rgb) {
                            float value = static_cast<float>(row[3 * x + 2 - rgb]) * gain[rgb];  // BGR -> RGB
                            value += bias[rgb];
                            dst[rgb * plane + static_cast<size_t>(y) * r + x] = value;
                        }
                    }
                }
            }
        }
    }
}

}  // namespace apclip
