#include "recognizer.h"

#include <algorithm>
#include <chrono>
#include <numeric>
#include <set>

#include "errors.h"
#include "preprocess.h"
#include "scoring.h"
#include "video.h"

namespace apclip {
namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

Views make_views(const SampledClip& clip, const Preprocessing& spec) {
    Views v;
    v.views = spec.views();
    v.frames = spec.frames;
    v.resolution = spec.resolution;
    v.pixels.resize(static_cast<size_t>(v.views) * v.frames * 3 * v.resolution * v.resolution);
    write_views(clip.frames, spec, v.pixels.data());
    return v;
}

}  // namespace

Recognizer::Recognizer(const std::string& bundle_dir, const EncoderOptions& options, const std::string& precision)
    : bundle_(open_bundle(bundle_dir, precision)), encoder_(make_encoder(bundle_, options)) {}

Views Recognizer::preprocess(const std::string& source) {
    return make_views(load_clip(source, bundle_.preprocessing), bundle_.preprocessing);
}

Prediction Recognizer::predict(const std::string& source, int topk, int64_t max_frames) {
    if (topk < 1) throw Error(ErrorKind::Argument, "topk " + std::to_string(topk) + ": show at least 1 class");
    if (max_frames < 0) throw Error(ErrorKind::Argument, "max_frames must be >= 0 (0: the whole video)");
    const Preprocessing& spec = bundle_.preprocessing;
    Prediction pred;
    auto start = std::chrono::steady_clock::now();
    const SampledClip clip = load_clip(source, spec, max_frames);
    const Views views = make_views(clip, spec);
    pred.timings.emplace_back("decode+preprocess", seconds_since(start));

    start = std::chrono::steady_clock::now();
    std::vector<float> embeddings;  // [V*T, E]
    int dim = 0;
    pred.frames = views.views * views.frames;
    encoder_->encode(views.pixels.data(), pred.frames, views.resolution, embeddings, dim);
    if (dim != bundle_.classes.dim)
        throw Error(ErrorKind::Bundle, "vision encoder gives " + std::to_string(dim) + "-d embeddings, the class matrix " +
                                           std::to_string(bundle_.classes.dim) + "-d; re-run apclip-export");
    pred.timings.emplace_back("encode", seconds_since(start));

    start = std::chrono::steady_clock::now();
    const std::vector<double> scores = score(bundle_.scoring, embeddings, pred.frames, spec.frames, bundle_.classes);
    pred.timings.emplace_back("score", seconds_since(start));

    std::vector<int> order(scores.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return scores[a] > scores[b]; });
    for (int i = 0; i < std::min<int>(topk, static_cast<int>(order.size())); ++i)
        pred.top.push_back({bundle_.labels[order[i]], scores[order[i]]});
    pred.source = clip.name;
    pred.approximate = clip.approximate;
    std::set<int64_t> distinct;
    for (const auto& row : clip.indices) distinct.insert(row.begin(), row.end());
    pred.distinct_frames = static_cast<int>(distinct.size());
    return pred;
}

}  // namespace apclip
