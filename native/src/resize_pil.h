// Pillow's antialiased bicubic resize (Image.resize(size, Image.BICUBIC), src/libImaging/Resample.c),
// ported for the `clip` profile: OpenAI CLIP's transform resizes with PIL, which OpenCV does not reproduce.
#pragma once

#include <opencv2/core.hpp>

namespace apclip {

// [H, W, C] uint8 (any channel order: channels are resampled independently) -> [height, width, C] uint8.
cv::Mat resize_pil_bicubic(const cv::Mat& image, int height, int width);

}  // namespace apclip
