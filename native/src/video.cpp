#include "video.h"

#include <opencv2/imgproc.hpp>
#include <opencv2/videoio.hpp>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <set>
#include <sys/stat.h>

#include "errors.h"
#include "preprocess.h"

namespace apclip {
namespace {

// Consecutive failed reads after which a source counts as ended (corrupted packets fail a few reads).
constexpr int kFileMaxFailures = 64;
constexpr int kLiveMaxFailures = 5;
constexpr size_t kMinKept = 64;  // reservoir slots: at least this, and 4 per sampled frame

bool is_camera(const std::string& s) { return !s.empty() && std::all_of(s.begin(), s.end(), ::isdigit); }

bool is_stream(const std::string& s) {
    for (const char* scheme : {"rtsp://", "rtsps://", "http://", "https://"})
        if (s.rfind(scheme, 0) == 0) return true;
    return false;
}

cv::Mat to_bgr8(const cv::Mat& image) {
    cv::Mat eight = image;
    if (image.depth() == CV_16U) image.convertTo(eight, CV_8U, 1.0 / 256.0);  // the 8 most significant bits
    cv::Mat out;
    if (eight.channels() == 1) cv::cvtColor(eight, out, cv::COLOR_GRAY2BGR);
    else if (eight.channels() == 4) cv::cvtColor(eight, out, cv::COLOR_BGRA2BGR);
    else out = eight;
    return out;
}

cv::VideoCapture open_capture(const std::string& source, std::string& kind) {
    cv::VideoCapture capture;
    if (is_camera(source)) {
        kind = "camera";
        capture.open(std::stoi(source));
    } else {
        kind = is_stream(source) ? "stream" : "file";
        struct stat st {};
        if (kind == "file" && stat(source.c_str(), &st) != 0) throw Error(ErrorKind::Source, source + ": no such file");
        if (kind == "file" && S_ISDIR(st.st_mode))
            throw Error(ErrorKind::Source, source + " is a folder; the native runtime reads video files, cameras and streams");
        capture.open(source, cv::CAP_FFMPEG);
    }
    if (!capture.isOpened())
        throw Error(ErrorKind::Source, "cannot open " + source + " (not a video OpenCV can decode, or unreachable)");
    capture.set(cv::CAP_PROP_ORIENTATION_AUTO, 1);  // rotation metadata (phones) applied by the decoder
    return capture;
}

}  // namespace

SampledClip load_clip(const std::string& source, const Preprocessing& spec, int64_t max_frames) {
    std::string kind;
    cv::VideoCapture capture = open_capture(source, kind);
    SampledClip clip;
    clip.name = kind == "camera" ? "camera " + source : source;
    const double announced = capture.get(cv::CAP_PROP_FRAME_COUNT);
    int64_t count = 0;  // 0: unknown
    if (kind != "camera" && std::isfinite(announced) && announced > 0 && announced < std::pow(2.0, 40))
        count = static_cast<int64_t>(announced);
    if (count == 0 && kind != "file" && max_frames == 0)
        throw Error(ErrorKind::Source, clip.name + " is a live source without an end: pass a frame limit");
    const int64_t planned_count = max_frames > 0 && (count == 0 || max_frames < count) ? max_frames : count;

    IndexGrid planned;
    std::set<int64_t> wanted;
    if (planned_count > 0) {
        planned = sample_segment_indices(planned_count, spec.frames, spec.clips);
        for (const auto& row : planned) wanted.insert(row.begin(), row.end());
    }
    std::map<int64_t, cv::Mat> kept;
    StridedReservoir<cv::Mat> reservoir(std::max<size_t>(kMinKept, 4 * static_cast<size_t>(spec.frames) * spec.clips));
    const int max_failures = kind == "file" ? kFileMaxFailures : kLiveMaxFailures;
    int64_t decoded = 0;
    int failures = 0;
    while (max_frames == 0 || decoded < max_frames) {
        if (!capture.grab()) {
            // With a known count, a failure past it is the end; before it, maybe a corrupted packet.
            if (++failures >= max_failures || (count > 0 && decoded >= count)) break;
            continue;
        }
        failures = 0;
        const int64_t index = decoded++;
        const bool take = planned_count > 0 ? wanted.count(index) > 0 : reservoir.wants(index);
        if (!take) continue;
        cv::Mat image;
        if (!capture.retrieve(image) || image.empty()) continue;
        cv::Mat resized = resize_frame(to_bgr8(image), spec);
        if (planned_count > 0) kept.emplace(index, resized.clone());
        else reservoir.add(index, resized.clone());
    }
    if (planned_count == 0) kept = std::move(reservoir.items());
    if (kept.empty()) throw Error(ErrorKind::Source, "no decodable frames in " + clip.name);
    clip.decoded_frames = decoded;
    bool complete = planned_count > 0;
    for (int64_t index : wanted) complete = complete && kept.count(index);
    if (complete) {
        clip.indices = planned;
    } else {
        // Unknown count, or the file ended early: sample what decoded, served by the nearest kept frames.
        std::vector<int64_t> available;
        for (const auto& entry : kept) available.push_back(entry.first);
        clip.indices = nearest_kept(sample_segment_indices(decoded, spec.frames, spec.clips), available);
        clip.approximate = planned_count > 0 || reservoir.stride() > 1;
    }
    for (const auto& row : clip.indices) {
        std::vector<cv::Mat> frames;
        for (int64_t index : row) frames.push_back(kept.at(index));
        clip.frames.push_back(std::move(frames));
    }
    return clip;
}

}  // namespace apclip
