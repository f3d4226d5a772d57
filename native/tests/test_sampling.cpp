// Test-mode indices against values printed by engine/video/sampling.py, the nearest-kept fallback and the
// reservoir.
#include "../src/sampling.h"
#include "check.h"

using apclip::IndexGrid;

int main() {
    CHECK((apclip::sample_segment_indices(90, 8, 2) ==
           IndexGrid{{2, 14, 25, 36, 47, 59, 70, 81}, {8, 19, 30, 42, 53, 64, 75, 87}}));
    CHECK((apclip::sample_segment_indices(5, 8, 1) == IndexGrid{{0, 0, 1, 2, 2, 3, 4, 4}}));  // fewer frames than T
    CHECK((apclip::sample_segment_indices(7, 3, 3) == IndexGrid{{0, 2, 5}, {1, 3, 5}, {1, 4, 6}}));
    CHECK((apclip::sample_segment_indices(1, 4, 2) == IndexGrid{{0, 0, 0, 0}, {0, 0, 0, 0}}));
    CHECK_THROWS(apclip::sample_segment_indices(0, 8, 1));
    CHECK((apclip::nearest_kept(IndexGrid{{0, 3, 5, 9}}, {0, 4, 8}) == IndexGrid{{0, 4, 4, 8}}));  // ties: lower
    CHECK_THROWS(apclip::nearest_kept(IndexGrid{{1}}, {}));

    apclip::StridedReservoir<int> reservoir(4);
    for (int i = 0; i < 20; ++i)
        if (reservoir.wants(i)) reservoir.add(i, i * 10);
    CHECK(reservoir.stride() == 8);  // 20 items into 4 slots: the stride doubled three times
    CHECK(reservoir.items().size() == 3);
    CHECK(reservoir.items().count(16) == 1 && reservoir.items().at(16) == 160);
    return check_result();
}
