#include "bundle.h"

#include <nlohmann/json.hpp>

#include <fstream>
#include <sstream>
#include <sys/stat.h>

#include "errors.h"
#include "safetensors.h"
#include "sha256.h"

namespace apclip {
namespace {

constexpr int kFormatVersion = 1;
const char* kRerun = "; re-run apclip-export";

Error bundle_error(const std::string& message) { return Error(ErrorKind::Bundle, message + kRerun); }

bool is_dir(const std::string& path) {
    struct stat st {};
    return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

nlohmann::json read_json(const std::string& path, const std::string& dir) {
    std::ifstream in(path);
    if (!in) throw bundle_error("bundle " + dir + " has no manifest.json; it is not a complete apclip bundle");
    nlohmann::json json = nlohmann::json::parse(in, nullptr, false);
    if (json.is_discarded() || !json.is_object()) throw bundle_error("bundle manifest " + path + " is unreadable");
    return json;
}

Preprocessing parse_preprocessing(const nlohmann::json& p) {
    Preprocessing out;
    out.profile = p.value("profile", std::string("apclip"));
    out.frames = p.at("frames").get<int>();
    out.clips = p.at("clips").get<int>();
    out.crops = p.at("crops").get<int>();
    out.resolution = p.at("resolution").get<int>();
    const auto& n = p.at("normalization");
    for (int c = 0; c < 3; ++c) {
        out.normalization.mean[c] = n.at("mean").at(c).get<double>();
        out.normalization.std[c] = n.at("std").at(c).get<double>();
    }
    out.normalization.scale = n.at("scale").get<double>();
    if (out.profile != "apclip" && out.profile != "vificlip" && out.profile != "clip")
        throw std::invalid_argument("unknown preprocessing profile " + out.profile);
    if (out.frames < 1 || out.clips < 1 || out.crops < 1 || out.crops > 3 || out.resolution < 1)
        throw std::invalid_argument("frames, clips, crops or resolution out of range");
    return out;
}

// Same values, whatever the JSON spelling: the class matrix header keeps the preprocessing it was compiled for.
bool same_preprocessing(const Preprocessing& a, const Preprocessing& b) {
    const auto& x = a.normalization;
    const auto& y = b.normalization;
    bool norm = x.scale == y.scale;
    for (int c = 0; c < 3; ++c) norm = norm && x.mean[c] == y.mean[c] && x.std[c] == y.std[c];
    return norm && a.profile == b.profile && a.frames == b.frames && a.clips == b.clips && a.crops == b.crops &&
           a.resolution == b.resolution;
}

void verify_file(const nlohmann::json& files, const std::string& dir, const std::string& name) {
    const std::string path = dir + "/" + name;
    if (!files.contains(name)) throw bundle_error("bundle manifest " + dir + "/manifest.json does not list " + name);
    struct stat st {};
    if (stat(path.c_str(), &st) != 0) throw bundle_error("bundle file " + path + " is missing");
    if (sha256_file(path) != files.at(name).value("sha256", std::string()))
        throw bundle_error("bundle file " + path + " does not match its sha256 in the manifest (modified or corrupt)");
}

ClassMatrix read_class_matrix(const std::string& path, const std::string& labels_hash, const Preprocessing& pre) {
    SafetensorsFile file = read_safetensors(path);
    const auto& meta = file.header.metadata;
    auto hash = meta.find("labels_sha256");
    if (hash != meta.end() && hash->second != labels_hash)
        throw bundle_error("bundle manifest: its labels_sha256 does not match the one " + path + " was compiled for (edited by hand?)");
    auto bound = meta.find("preprocessing");
    if (bound != meta.end()) {
        nlohmann::json stored = nlohmann::json::parse(bound->second, nullptr, false);
        bool same = false;
        try {
            same = !stored.is_discarded() && same_preprocessing(parse_preprocessing(stored), pre);
        } catch (const std::exception&) {
        }
        if (!same) throw bundle_error("bundle manifest: its preprocessing does not match the one " + path + " was compiled for (edited by hand?)");
    }
    ClassMatrix m;
    std::vector<int64_t> shape, count_shape;
    m.embeddings = file.tensor<float>("embeddings", "F32", &shape);
    m.counts = file.tensor<int32_t>("counts", "I32", &count_shape);
    if (shape.size() != 3 || count_shape.size() != 1 || count_shape[0] != shape[0])
        throw bundle_error(path + " must hold embeddings [K, P, E] and counts [K]");
    m.classes = static_cast<int>(shape[0]);
    m.prompts = static_cast<int>(shape[1]);
    m.dim = static_cast<int>(shape[2]);
    for (int32_t c : m.counts)
        if (c < 1 || c > m.prompts) throw bundle_error(path + " has a class with " + std::to_string(c) + " prompts");
    return m;
}

}  // namespace

std::string labels_sha256(const std::vector<std::string>& labels) {
    // json.dumps(list, ensure_ascii=False): "[" + items joined by ", " + "]"
    std::string text = "[";
    for (size_t i = 0; i < labels.size(); ++i) {
        if (i) text += ", ";
        text += nlohmann::json(labels[i]).dump();
    }
    text += "]";
    return sha256_hex(text.data(), text.size());
}

Bundle open_bundle(const std::string& dir, const std::string& precision) {
    if (!is_dir(dir)) throw Error(ErrorKind::Bundle, "bundle " + dir + " does not exist (create one with apclip-export --ckpt ...)");
    const std::string manifest_path = dir + "/manifest.json";
    nlohmann::json raw = read_json(manifest_path, dir);
    if (raw.value("format", std::string()) != "apclip-bundle")
        throw Error(ErrorKind::Bundle, manifest_path + " is not an apclip bundle manifest");
    if (raw.value("format_version", -1) > kFormatVersion)
        throw Error(ErrorKind::Bundle, "bundle " + dir + " has a format version newer than this runtime understands; upgrade apclip");
    Bundle b;
    b.dir = dir;
    std::string labels_hash;
    nlohmann::json files;
    try {
        b.preprocessing = parse_preprocessing(raw.at("preprocessing"));
        b.labels = raw.at("labels").get<std::vector<std::string>>();
        files = raw.at("files");
        labels_hash = raw.value("labels_sha256", std::string());
        if (raw.contains("scoring") && raw["scoring"].is_object()) {
            const auto& s = raw["scoring"];
            b.scoring.protocol = s.value("protocol", std::string("maka"));
            if (s.contains("logit_scale") && s["logit_scale"].is_number()) b.scoring.logit_scale = s["logit_scale"].get<double>();
        }
        if (b.scoring.protocol != "maka" && b.scoring.protocol != "vificlip")
            throw std::invalid_argument("unknown scoring protocol " + b.scoring.protocol);
        if (b.scoring.protocol == "vificlip" && !(b.scoring.logit_scale > 0))
            throw std::invalid_argument("the vificlip protocol needs logit_scale > 0");
        const nlohmann::json vision = raw.value("io", nlohmann::json::object()).value("vision", nlohmann::json::object());
        b.batch_max = vision.value("batch_max", 0);
        if (raw.at("model").at("image_resolution").get<int>() != b.preprocessing.resolution)
            throw std::invalid_argument("preprocessing resolution differs from the model's");
    } catch (const std::exception& exc) {
        throw bundle_error("bundle manifest " + manifest_path + " is missing or has a bad field (" + exc.what() + ")");
    }
    if (labels_hash.empty() || labels_sha256(b.labels) != labels_hash)
        throw bundle_error("bundle manifest " + manifest_path + ": its labels do not match labels_sha256 (edited by hand?)");

    const std::string vision_file = precision == "int8" ? "vision.int8.onnx" : "vision.onnx";
    if (precision != "fp32" && precision != "int8")
        throw Error(ErrorKind::Argument, "unknown precision " + precision + "; choose fp32 or int8");
    if (precision == "int8" && !files.contains(vision_file))
        throw Error(ErrorKind::Bundle, "bundle " + dir + " has no int8 encoders; re-export it with apclip-export --precision fp32,int8");
    verify_file(files, dir, vision_file);
    verify_file(files, dir, "classes.safetensors");
    b.vision_path = dir + "/" + vision_file;
    b.classes = read_class_matrix(dir + "/classes.safetensors", labels_hash, b.preprocessing);
    if (b.classes.classes != static_cast<int>(b.labels.size()))
        throw bundle_error("bundle " + dir + ": classes.safetensors has " + std::to_string(b.classes.classes) +
                           " classes for " + std::to_string(b.labels.size()) + " labels");
    return b;
}

}  // namespace apclip
