// Decoded BGR frames -> encoder input, as engine/video/preprocess.py does for each profile:
//   resize_frame  (per frame, as soon as it is decoded): the profile's resize
//   crop_boxes    (top, left) of each R x R view crop
//   write_views   N clips x T frames -> [V = N * C, T, 3, R, R] float32, clip-major, RGB, normalised
#pragma once

#include <opencv2/core.hpp>

#include <utility>
#include <vector>

#include "bundle.h"

namespace apclip {

cv::Mat resize_frame(const cv::Mat& bgr, const Preprocessing& spec);

std::vector<std::pair<int, int>> crop_boxes(int height, int width, int size, int crops, const std::string& profile);

// clips[n][t]: frames already through resize_frame. `out` receives V * T * 3 * R * R floats.
void write_views(const std::vector<std::vector<cv::Mat>>& clips, const Preprocessing& spec, float* out);

}  // namespace apclip
