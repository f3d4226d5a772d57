// The Pillow bicubic port against bytes printed by Pillow (Image.fromarray(img).resize((w, h), Image.BICUBIC))
// for a 7x5 RGB pattern: downscaled, upscaled, and one axis kept.
#include <vector>

#include "../src/resize_pil.h"
#include "check.h"

static cv::Mat pattern() {
    cv::Mat img(5, 7, CV_8UC3);
    for (int y = 0; y < 5; ++y)
        for (int x = 0; x < 7; ++x)
            img.at<cv::Vec3b>(y, x) = cv::Vec3b((x * 37 + y * 11) % 256, (x * x * 13 + y * 29) % 256, ((255 - x * 23 - y * 31) % 256 + 256) % 256);
    return img;
}

static bool equals(const cv::Mat& m, const std::vector<int>& expected) {
    if (static_cast<size_t>(m.total() * m.channels()) != expected.size()) return false;
    for (size_t i = 0; i < expected.size(); ++i)
        if (m.data[i] != expected[i]) return false;
    return true;
}

int main() {
    const cv::Mat img = pattern();
    CHECK(equals(apclip::resize_pil_bicubic(img, 4, 3),
                 {29, 14, 234, 113, 125, 182, 197, 166, 130, 42, 53, 196, 126, 133, 144, 210, 134, 92, 56, 95, 156, 140, 128, 104,
                  227, 69, 49, 69, 130, 118, 160, 167, 60, 158, 113, 94}));
    CHECK(equals(apclip::resize_pil_bicubic(img, 3, 7),
                 {4, 10, 244, 41, 23, 221, 78, 62, 198, 115, 127, 175, 152, 226, 152, 189, 79, 129, 226, 230, 106, 22, 58, 193, 59, 71,
                  170, 96, 110, 147, 133, 175, 124, 170, 64, 101, 207, 127, 78, 254, 68, 45, 40, 106, 142, 77, 119, 119, 114, 158, 96,
                  151, 223, 73, 188, 50, 50, 225, 175, 27, 112, 54, 154}));
    const cv::Mat up = apclip::resize_pil_bicubic(img, 9, 11);
    CHECK(up.rows == 9 && up.cols == 11);
    const std::vector<int> first_row = {0, 0, 255, 12, 1, 250, 39, 13, 233, 63, 37, 218, 86, 71, 204, 110, 115, 189, 134, 189, 174,
                                        157, 177, 160, 181, 70, 145, 208, 143, 128, 224, 220, 118};
    CHECK(equals(up.row(0).clone(), first_row));
    CHECK(up.at<cv::Vec3b>(8, 10) == cv::Vec3b(0, 66, 255) ||
          (std::cerr << "last pixel " << up.at<cv::Vec3b>(8, 10) << "\n", false));
    CHECK(apclip::resize_pil_bicubic(img, 5, 7).data == img.data);  // same size: unchanged
    return check_result();
}
