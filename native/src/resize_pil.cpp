// Pillow's two-pass separable resampling, 8 bits per channel:
//   1. per output pixel, filter weights over the input pixels within the filter support, scaled by the
//      downscale factor (this is the antialiasing), normalised to sum 1 (precompute_coeffs);
//   2. weights as fixed point with 22 fractional bits (normalize_coeffs_8bpc), accumulated in int with a
//      rounding half, clipped to 0..255 (clip8);
//   3. horizontal pass over the rows the vertical pass needs, then the vertical pass; a pass whose size
//      does not change is skipped.
#include "resize_pil.h"

#include <cmath>
#include <cstdint>
#include <vector>

namespace apclip {
namespace {

constexpr int kPrecisionBits = 32 - 8 - 2;
constexpr double kBicubicSupport = 2.0;

double bicubic_filter(double x) {  // Keys' cubic convolution with a = -0.5, as Pillow writes it
    const double a = -0.5;
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

struct Coefficients {
    int ksize = 0;
    std::vector<int> bounds;      // [out, 2]: first input pixel, pixel count
    std::vector<int32_t> weights;  // [out, ksize] fixed point
};

Coefficients precompute_coeffs(int in_size, int out_size) {
    const float in0 = 0.0f, in1 = static_cast<float>(in_size);  // the box is the whole image
    double scale = static_cast<double>(in1 - in0) / out_size;
    double filterscale = scale < 1.0 ? 1.0 : scale;
    const double support = kBicubicSupport * filterscale;
    Coefficients c;
    c.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
    c.bounds.resize(2 * out_size);
    c.weights.assign(static_cast<size_t>(out_size) * c.ksize, 0);
    std::vector<double> k(c.ksize);
    for (int xx = 0; xx < out_size; ++xx) {
        const double center = in0 + (xx + 0.5) * scale;
        const double ss = 1.0 / filterscale;
        int xmin = static_cast<int>(center - support + 0.5);  // Pillow's rounding: truncation of +0.5
        if (xmin < 0) xmin = 0;
        int xmax = static_cast<int>(center + support + 0.5);
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        double ww = 0.0;
        for (int x = 0; x < xmax; ++x) {
            k[x] = bicubic_filter((x + xmin - center + 0.5) * ss);
            ww += k[x];
        }
        for (int x = 0; x < xmax; ++x) {
            const double w = ww != 0.0 ? k[x] / ww : k[x];
            // normalize_coeffs_8bpc: round half away from zero into fixed point
            c.weights[static_cast<size_t>(xx) * c.ksize + x] =
                static_cast<int32_t>(w < 0 ? -0.5 + w * (1 << kPrecisionBits) : 0.5 + w * (1 << kPrecisionBits));
        }
        c.bounds[2 * xx] = xmin;
        c.bounds[2 * xx + 1] = xmax;
    }
    return c;
}

uint8_t clip8(int value) {
    if (value >= (1 << kPrecisionBits << 8)) return 255;
    if (value <= 0) return 0;
    return static_cast<uint8_t>(value >> kPrecisionBits);
}

// rows [first, first + out.rows) of `in` resampled along x into `out`
void resample_horizontal(const cv::Mat& in, cv::Mat& out, int first, const Coefficients& c) {
    const int channels = in.channels();
    for (int y = 0; y < out.rows; ++y) {
        const uint8_t* src = in.ptr<uint8_t>(y + first);
        uint8_t* dst = out.ptr<uint8_t>(y);
        for (int xx = 0; xx < out.cols; ++xx) {
            const int xmin = c.bounds[2 * xx], count = c.bounds[2 * xx + 1];
            const int32_t* k = &c.weights[static_cast<size_t>(xx) * c.ksize];
            for (int ch = 0; ch < channels; ++ch) {
                int sum = 1 << (kPrecisionBits - 1);
                for (int x = 0; x < count; ++x) sum += src[(x + xmin) * channels + ch] * k[x];
                dst[xx * channels + ch] = clip8(sum);
            }
        }
    }
}

// `in` resampled along y into `out`; bounds are relative to in's first row minus `first`
void resample_vertical(const cv::Mat& in, cv::Mat& out, int first, const Coefficients& c) {
    const int row_values = out.cols * out.channels();
    for (int yy = 0; yy < out.rows; ++yy) {
        const int ymin = c.bounds[2 * yy] - first, count = c.bounds[2 * yy + 1];
        const int32_t* k = &c.weights[static_cast<size_t>(yy) * c.ksize];
        uint8_t* dst = out.ptr<uint8_t>(yy);
        for (int i = 0; i < row_values; ++i) {
            int sum = 1 << (kPrecisionBits - 1);
            for (int y = 0; y < count; ++y) sum += in.ptr<uint8_t>(y + ymin)[i] * k[y];
            dst[i] = clip8(sum);
        }
    }
}

}  // namespace

cv::Mat resize_pil_bicubic(const cv::Mat& image, int height, int width) {
    CV_Assert(image.depth() == CV_8U);
    if (image.rows == height && image.cols == width) return image;  // PIL returns an unchanged copy
    const bool horizontal = width != image.cols, vertical = height != image.rows;
    const Coefficients cx = precompute_coeffs(image.cols, width);
    const Coefficients cy = precompute_coeffs(image.rows, height);
    // Only the rows the vertical pass reads go through the horizontal pass.
    const int first = cy.bounds[0];
    const int last = cy.bounds[2 * height - 2] + cy.bounds[2 * height - 1];
    cv::Mat current = image;
    int offset = 0;
    if (horizontal) {
        cv::Mat temp(last - first, width, image.type());
        resample_horizontal(image, temp, first, cx);
        current = temp;
        offset = first;
    }
    if (!vertical) return current;
    cv::Mat out(height, width, image.type());
    resample_vertical(current, out, offset, cy);
    return out;
}

}  // namespace apclip
