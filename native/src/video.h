// Source -> sampled, resized frames: engine/video/sources.py + clips.py (test mode) in C++.
//
// A source is a video file, a camera index ("0") or a stream URL (rtsp://, http://, ...). It is decoded
// once; with a known frame count the sampled indices are fixed before decoding and only those frames are
// converted and resized. Without one (cameras, streams, some containers) a StridedReservoir of resized
// frames stands in and the indices for the decoded count are served by the nearest kept frames; a file
// that ends before its announced count is re-sampled over the frames that decoded, likewise.
#pragma once

#include <opencv2/core.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "bundle.h"
#include "sampling.h"

namespace apclip {

struct SampledClip {
    std::string name;                         // how messages refer to the source
    std::vector<std::vector<cv::Mat>> frames;  // [N][T] resized frames (the profile's resize_frame)
    IndexGrid indices;                        // [N][T] decoded-frame index of each
    int64_t decoded_frames = 0;
    bool approximate = false;                 // nearest kept frames stood in for the formula's indices
};

// max_frames: decode at most this many frames (required for cameras and live streams; 0: no limit).
// Throws Error(Source) with one line naming the source.
SampledClip load_clip(const std::string& source, const Preprocessing& spec, int64_t max_frames = 0);

}  // namespace apclip
