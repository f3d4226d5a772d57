// apclip-infer-native BUNDLE SOURCE... [--topk K] [--json FILE|-] [--threads N] [--precision fp32|int8]
//                     [--max-frames N] [--cache-dir DIR | --no-cache] [--dump-pixels FILE.npy]
// Compiled models are cached (default $XDG_CACHE_HOME/apclip/openvino): the second start of a bundle skips compiling.
// The native twin of `apclip-infer` in clip mode: one prediction per source, a table on stdout (stderr when
// --json -), JSON lines with apclip-infer's field names, a bad source reported in one line and skipped.
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "errors.h"
#include "recognizer.h"

namespace {

const char* kUsage =
    "usage: apclip-infer-native BUNDLE SOURCE... [--topk K] [--json FILE|-] [--threads N] "
    "[--precision fp32|int8] [--max-frames N] [--cache-dir DIR | --no-cache] [--dump-pixels FILE.npy]\n";

// $APCLIP_CACHE_DIR/openvino, else $XDG_CACHE_HOME/apclip/openvino, else ~/.cache/apclip/openvino: beside the
// Python engine's label cache (engine/scoring/vocabulary.py cache_dir)
std::string default_cache_dir() {
    const char* own = std::getenv("APCLIP_CACHE_DIR");
    if (own && *own) return std::string(own) + "/openvino";
    const char* xdg = std::getenv("XDG_CACHE_HOME");
    const char* home = std::getenv("HOME");
    if (xdg && *xdg) return std::string(xdg) + "/apclip/openvino";
    return home && *home ? std::string(home) + "/.cache/apclip/openvino" : "";
}

struct Args {
    std::string bundle, json, dump_pixels, precision = "fp32", cache_dir = default_cache_dir();
    std::vector<std::string> sources;
    int topk = 5, threads = 0;
    long long max_frames = 0;
};

struct UsageError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

int parse_int(const std::string& flag, const std::string& value) {
    size_t used = 0;
    int out = 0;
    try {
        out = std::stoi(value, &used);
    } catch (const std::exception&) {
        used = 0;
    }
    if (used != value.size() || value.empty()) throw UsageError(flag + " " + value + ": not a whole number");
    return out;
}

Args parse(int argc, char** argv) {
    Args args;
    std::vector<std::string> positional;
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc) throw UsageError(arg + " needs a value");
            return argv[++i];
        };
        if (arg == "-h" || arg == "--help") {
            std::cout << kUsage;
            std::exit(0);
        } else if (arg == "--topk") args.topk = parse_int(arg, value());
        else if (arg == "--threads") args.threads = parse_int(arg, value());
        else if (arg == "--max-frames") args.max_frames = parse_int(arg, value());
        else if (arg == "--json") args.json = value();
        else if (arg == "--precision") args.precision = value();
        else if (arg == "--dump-pixels") args.dump_pixels = value();
        else if (arg == "--cache-dir") args.cache_dir = value();
        else if (arg == "--no-cache") args.cache_dir.clear();
        else if (arg.size() > 1 && arg[0] == '-' && arg.rfind("--", 0) == 0) throw UsageError("unknown option " + arg);
        else positional.push_back(arg);
    }
    if (positional.size() < 2) throw UsageError("give a bundle and at least one source");
    if (args.topk < 1) throw UsageError("--topk " + std::to_string(args.topk) + ": show at least 1 class");
    if (args.max_frames < 0) throw UsageError("--max-frames: use 1 or more (0 or leaving it out: the whole video)");
    if (args.threads < 0) throw UsageError("--threads: use 1 or more (or leave it out for all cores)");
    if (args.precision != "fp32" && args.precision != "int8") throw UsageError("--precision: choose fp32 or int8");
    args.bundle = positional[0];
    args.sources.assign(positional.begin() + 1, positional.end());
    if (!args.dump_pixels.empty() && args.sources.size() != 1) throw UsageError("--dump-pixels takes exactly one source");
    return args;
}

double round6(double x) { return std::round(x * 1e6) / 1e6; }

// The fields apclip-infer --json writes (engine/predictions.py Prediction.to_dict), in its order.
nlohmann::ordered_json record(const apclip::Prediction& pred, const std::string& source, const std::string& backend,
                              const std::string& protocol) {
    nlohmann::ordered_json out;
    out["source"] = source;
    out["top"] = nlohmann::ordered_json::array();
    for (const auto& t : pred.top) out["top"].push_back({{"label", t.label}, {"score", round6(t.score)}});
    out["backend"] = backend;
    out["scorer"] = "native";
    out["protocol"] = protocol;
    out["frames"] = pred.frames;
    out["approximate"] = pred.approximate;
    out["distinct_frames"] = pred.distinct_frames;
    out["timings_ms"] = nlohmann::ordered_json::object();
    for (const auto& [stage, seconds] : pred.timings) out["timings_ms"][stage] = std::round(seconds * 1e6) / 1e3;
    return out;
}

// [V, T, 3, R, R] float32 as a NumPy .npy file (format 1.0), for pixel parity checks.
void write_npy(const std::string& path, const apclip::Views& v) {
    std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + std::to_string(v.views) + ", " +
                         std::to_string(v.frames) + ", 3, " + std::to_string(v.resolution) + ", " +
                         std::to_string(v.resolution) + "), }";
    while ((10 + header.size() + 1) % 64) header += ' ';
    header += '\n';
    const std::string temp = path + ".partial";
    std::ofstream out(temp, std::ios::binary);
    const uint16_t length = static_cast<uint16_t>(header.size());
    out.write("\x93NUMPY\x01\x00", 8);
    out.put(static_cast<char>(length & 0xff)).put(static_cast<char>(length >> 8));
    out << header;
    out.write(reinterpret_cast<const char*>(v.pixels.data()), static_cast<std::streamsize>(v.pixels.size() * sizeof(float)));
    out.close();
    if (!out || std::rename(temp.c_str(), path.c_str()) != 0) {
        std::remove(temp.c_str());
        throw apclip::Error(apclip::ErrorKind::Argument, "cannot write " + path);
    }
}

std::string one_line(const std::string& text) {
    std::string out;
    bool space = false;
    for (char c : text) {
        const bool blank = c == '\n' || c == '\r' || c == '\t' || c == ' ';
        if (blank) space = !out.empty();
        else {
            if (space) out += ' ';
            out += c;
            space = false;
        }
    }
    return out;
}

int run(const Args& args) {
    apclip::EncoderOptions options;
    options.threads = args.threads;
    options.cache_dir = args.cache_dir;
    apclip::Recognizer recognizer(args.bundle, options, args.precision);
    if (!args.dump_pixels.empty()) {
        write_npy(args.dump_pixels, recognizer.preprocess(args.sources[0]));
        return 0;
    }
    const bool json_stdout = args.json == "-";
    std::ostream& table = json_stdout ? std::cerr : std::cout;
    std::ofstream json_file;
    const std::string json_temp = args.json + ".partial";
    if (!args.json.empty() && !json_stdout) {
        json_file.open(json_temp);
        if (!json_file) throw apclip::Error(apclip::ErrorKind::Argument, "--json " + args.json + ": cannot write there");
    }
    std::ostream* json = json_stdout ? &std::cout : (json_file.is_open() ? &json_file : nullptr);
    int done = 0, skipped = 0, seen = 0;
    const int total = static_cast<int>(args.sources.size());
    for (const std::string& source : args.sources) {
        ++seen;
        try {
            const apclip::Prediction pred = recognizer.predict(source, args.topk, args.max_frames);
            ++done;
            table << "[" << seen << "/" << total << "] " << source << ":";
            for (const auto& t : pred.top) table << "  " << t.label << " " << std::to_string(t.score);
            table << std::endl;
            if (json) *json << record(pred, source, recognizer.backend(), recognizer.bundle().scoring.protocol).dump() << std::endl;
        } catch (const apclip::Error& exc) {
            if (exc.kind != apclip::ErrorKind::Source) throw;
            ++skipped;
            std::cerr << "apclip-infer-native: skipped [" << seen << "/" << total << "]: " << one_line(exc.what()) << std::endl;
        }
    }
    if (json_file.is_open()) {
        json_file.close();
        // JSON lines hold predictions only: a run where nothing worked leaves no file behind.
        if (done == 0) std::remove(json_temp.c_str());
        else if (std::rename(json_temp.c_str(), args.json.c_str()) != 0)
            throw apclip::Error(apclip::ErrorKind::Argument, "--json " + args.json + ": cannot write there");
    }
    std::cerr << done << " done, " << skipped << " skipped" << std::endl;
    return skipped ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
    // FFmpeg's own messages ("moov atom not found") would add lines to the one-line report of a bad source.
    setenv("OPENCV_FFMPEG_LOGLEVEL", "-8", 0);  // AV_LOG_QUIET, unless the user asked for a level
    try {
        return run(parse(argc, argv));
    } catch (const UsageError& exc) {
        std::cerr << kUsage << "apclip-infer-native: error: " << exc.what() << std::endl;
        return 2;
    } catch (const std::exception& exc) {
        std::cerr << "apclip-infer-native: error: " << one_line(exc.what()) << std::endl;
        return 1;
    }
}
