#include "sampling.h"

#include <algorithm>
#include <cstdlib>
#include <string>

#include "errors.h"

namespace apclip {

IndexGrid sample_segment_indices(int64_t num_frames, int frames, int clips) {
    if (num_frames < 1) throw Error(ErrorKind::Source, "cannot sample from a video with " + std::to_string(num_frames) + " frames");
    if (frames < 1 || clips < 1) throw Error(ErrorKind::Argument, "frames and clips must be >= 1");
    const double avg = static_cast<double>(num_frames) / static_cast<double>(frames);
    IndexGrid out(clips, std::vector<int64_t>(frames));
    for (int j = 0; j < clips; ++j) {
        const double offset = avg * (2 * j + 1) / (2 * clips);  // Python: avg * (2j + 1) / (2N), left to right
        for (int i = 0; i < frames; ++i) {
            const double position = static_cast<double>(i) * avg + offset;
            out[j][i] = std::min(static_cast<int64_t>(position), num_frames - 1);  // truncation, as int() does
        }
    }
    return out;
}

IndexGrid nearest_kept(const IndexGrid& targets, const std::vector<int64_t>& kept) {
    if (kept.empty()) throw Error(ErrorKind::Source, "no frames were kept");
    IndexGrid out = targets;
    const int64_t last = static_cast<int64_t>(kept.size()) - 1;
    for (auto& row : out) {
        for (int64_t& target : row) {
            int64_t right = std::lower_bound(kept.begin(), kept.end(), target) - kept.begin();
            right = std::clamp<int64_t>(right, 0, last);
            const int64_t left = std::clamp<int64_t>(right - 1, 0, last);
            const bool take_left = std::llabs(target - kept[left]) <= std::llabs(kept[right] - target);
            target = take_left ? kept[left] : kept[right];
        }
    }
    return out;
}

}  // namespace apclip
