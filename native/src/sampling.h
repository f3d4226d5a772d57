// Which frames make a clip: engine/video/sampling.py's test-mode segment sampling, and the nearest-kept
// fallback for sources whose frame count is unknown or wrong.
//
//   index[j][i] = min(int(i * avg + avg * (2j + 1) / (2N)), F - 1),  avg = F / T,  i < T, j < N
//
// computed with the same double operations as the Python engine, so both pick the same frames.
#pragma once

#include <cstddef>
#include <cstdint>
#include <iterator>
#include <map>
#include <vector>

namespace apclip {

using IndexGrid = std::vector<std::vector<int64_t>>;  // [N clips][T frames]

IndexGrid sample_segment_indices(int64_t num_frames, int frames, int clips);

// Each target replaced by the nearest kept index (the lower one on ties); `kept` sorted ascending.
IndexGrid nearest_kept(const IndexGrid& targets, const std::vector<int64_t>& kept);

// Every `stride`-th item of a sequence of unknown length in at most `capacity` slots: when the slots
// overflow the stride doubles and the items off the new stride are dropped.
template <typename Item>
class StridedReservoir {
public:
    explicit StridedReservoir(size_t capacity) : capacity_(capacity) {}
    bool wants(int64_t index) const { return index % stride_ == 0; }
    void add(int64_t index, Item item) {
        items_.emplace(index, std::move(item));
        if (items_.size() > capacity_) {
            stride_ *= 2;
            for (auto it = items_.begin(); it != items_.end();)
                it = it->first % stride_ ? items_.erase(it) : std::next(it);
        }
    }
    int64_t stride() const { return stride_; }
    std::map<int64_t, Item>& items() { return items_; }

private:
    size_t capacity_;
    int64_t stride_ = 1;
    std::map<int64_t, Item> items_;
};

}  // namespace apclip
