// The safetensors format (huggingface/safetensors): an 8-byte little-endian header length N, N bytes of
// JSON {"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}, then the
// tensor bytes, offsets relative to the end of the header.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace apclip {

struct TensorEntry {
    std::string dtype;           // "F32", "I32", ...
    std::vector<int64_t> shape;
    uint64_t begin = 0, end = 0;  // byte range within the data section
};

struct SafetensorsHeader {
    std::map<std::string, TensorEntry> tensors;
    std::map<std::string, std::string> metadata;  // "__metadata__"
    uint64_t data_offset = 0;                       // 8 + header length: where tensor bytes start
};

// Parse the header of a whole file held in memory; every entry's range is checked against `size`
// and its dtype x shape. Throws Error(Bundle) naming `name` on anything malformed.
SafetensorsHeader parse_safetensors_header(const uint8_t* data, uint64_t size, const std::string& name);

struct SafetensorsFile {
    std::vector<uint8_t> bytes;
    SafetensorsHeader header;

    // One tensor copied out as T, checked to have dtype `dtype` (e.g. "F32" for float).
    template <typename T>
    std::vector<T> tensor(const std::string& key, const char* dtype, std::vector<int64_t>* shape) const;
};

SafetensorsFile read_safetensors(const std::string& path);

}  // namespace apclip
