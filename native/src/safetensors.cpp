#include "safetensors.h"

#include <nlohmann/json.hpp>

#include <cstring>
#include <fstream>
#include <iterator>

#include "errors.h"

namespace apclip {
namespace {

uint64_t dtype_bytes(const std::string& dtype) {
    static const std::map<std::string, uint64_t> sizes = {
        {"BOOL", 1}, {"U8", 1}, {"I8", 1}, {"F16", 2}, {"BF16", 2}, {"I16", 2}, {"U16", 2},
        {"F32", 4}, {"I32", 4}, {"U32", 4}, {"F64", 8}, {"I64", 8}, {"U64", 8}};
    auto it = sizes.find(dtype);
    return it == sizes.end() ? 0 : it->second;
}

}  // namespace

SafetensorsHeader parse_safetensors_header(const uint8_t* data, uint64_t size, const std::string& name) {
    auto bad = [&](const std::string& why) { return Error(ErrorKind::Bundle, name + " is not a valid safetensors file (" + why + ")"); };
    if (size < 8) throw bad("shorter than its 8-byte header length");
    uint64_t length = 0;
    for (int i = 7; i >= 0; --i) length = (length << 8) | data[i];  // little-endian
    if (length > size - 8) throw bad("header length " + std::to_string(length) + " exceeds the file");
    nlohmann::json json = nlohmann::json::parse(data + 8, data + 8 + length, nullptr, false);
    if (json.is_discarded() || !json.is_object()) throw bad("header is not a JSON object");
    SafetensorsHeader header;
    header.data_offset = 8 + length;
    const uint64_t data_size = size - header.data_offset;
    try {
        for (auto& [key, value] : json.items()) {
            if (key == "__metadata__") {
                for (auto& [mkey, mvalue] : value.items()) header.metadata[mkey] = mvalue.get<std::string>();
                continue;
            }
            TensorEntry entry;
            entry.dtype = value.at("dtype").get<std::string>();
            entry.shape = value.at("shape").get<std::vector<int64_t>>();
            auto offsets = value.at("data_offsets").get<std::vector<uint64_t>>();
            if (offsets.size() != 2 || offsets[0] > offsets[1] || offsets[1] > data_size)
                throw bad("tensor " + key + " lies outside the file");
            entry.begin = offsets[0];
            entry.end = offsets[1];
            uint64_t elements = 1;
            for (int64_t dim : entry.shape) {
                if (dim < 0) throw bad("tensor " + key + " has a negative dimension");
                elements *= static_cast<uint64_t>(dim);
            }
            const uint64_t item = dtype_bytes(entry.dtype);
            if (item == 0) throw bad("tensor " + key + " has unknown dtype " + entry.dtype);
            if (elements * item != entry.end - entry.begin)
                throw bad("tensor " + key + " has " + std::to_string(entry.end - entry.begin) + " bytes for its shape");
            header.tensors[key] = entry;
        }
    } catch (const nlohmann::json::exception& exc) {
        throw bad(exc.what());
    }
    return header;
}

template <typename T>
std::vector<T> SafetensorsFile::tensor(const std::string& key, const char* dtype, std::vector<int64_t>* shape) const {
    auto it = header.tensors.find(key);
    if (it == header.tensors.end()) throw Error(ErrorKind::Bundle, "safetensors file has no tensor " + key);
    const TensorEntry& entry = it->second;
    if (entry.dtype != dtype || sizeof(T) != dtype_bytes(dtype))
        throw Error(ErrorKind::Bundle, "tensor " + key + " is " + entry.dtype + ", expected " + dtype);
    std::vector<T> out((entry.end - entry.begin) / sizeof(T));
    std::memcpy(out.data(), bytes.data() + header.data_offset + entry.begin, entry.end - entry.begin);
    if (shape) *shape = entry.shape;
    return out;
}

template std::vector<float> SafetensorsFile::tensor<float>(const std::string&, const char*, std::vector<int64_t>*) const;
template std::vector<int32_t> SafetensorsFile::tensor<int32_t>(const std::string&, const char*, std::vector<int64_t>*) const;

SafetensorsFile read_safetensors(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw Error(ErrorKind::Bundle, "cannot read " + path);
    SafetensorsFile file;
    file.bytes.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    file.header = parse_safetensors_header(file.bytes.data(), file.bytes.size(), path);
    return file;
}

}  // namespace apclip
