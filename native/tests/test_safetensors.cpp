// The safetensors header: a well-formed file, and the malformed ones the parser must refuse.
#include <cstring>
#include <string>
#include <vector>

#include "../src/safetensors.h"
#include "check.h"

static std::vector<uint8_t> make_file(const std::string& header, size_t data_bytes) {
    std::vector<uint8_t> out(8 + header.size() + data_bytes, 0);
    uint64_t length = header.size();
    for (int i = 0; i < 8; ++i) out[i] = static_cast<uint8_t>(length >> (8 * i));
    std::memcpy(out.data() + 8, header.data(), header.size());
    return out;
}

int main() {
    const std::string header =
        R"({"__metadata__":{"labels_sha256":"abc"},"embeddings":{"dtype":"F32","shape":[2,1,2],"data_offsets":[0,16]},)"
        R"("counts":{"dtype":"I32","shape":[2],"data_offsets":[16,24]}})";
    apclip::SafetensorsFile file;
    file.bytes = make_file(header, 24);
    float values[4] = {1.0f, 0.0f, 0.6f, 0.8f};
    int32_t counts[2] = {1, 1};
    std::memcpy(file.bytes.data() + 8 + header.size(), values, 16);
    std::memcpy(file.bytes.data() + 8 + header.size() + 16, counts, 8);
    file.header = apclip::parse_safetensors_header(file.bytes.data(), file.bytes.size(), "t");
    CHECK(file.header.data_offset == 8 + header.size());
    CHECK(file.header.metadata.at("labels_sha256") == "abc");
    std::vector<int64_t> shape;
    const auto embeddings = file.tensor<float>("embeddings", "F32", &shape);
    CHECK((shape == std::vector<int64_t>{2, 1, 2}));
    CHECK(embeddings.size() == 4 && embeddings[3] == 0.8f);
    CHECK(file.tensor<int32_t>("counts", "I32", nullptr)[1] == 1);
    CHECK_THROWS(file.tensor<int32_t>("embeddings", "I32", nullptr));  // wrong dtype
    CHECK_THROWS(file.tensor<float>("missing", "F32", nullptr));

    auto parse = [](const std::vector<uint8_t>& bytes) { apclip::parse_safetensors_header(bytes.data(), bytes.size(), "t"); };
    CHECK_THROWS(parse(std::vector<uint8_t>(5, 0)));  // shorter than the length field
    std::vector<uint8_t> too_long = make_file(header, 24);
    too_long[0] = 0xff;
    too_long[3] = 0xff;
    CHECK_THROWS(parse(too_long));                                                                       // length past the end
    CHECK_THROWS(parse(make_file(header, 20)));                                                          // data cut short
    CHECK_THROWS(parse(make_file(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8)));     // shape x dtype != bytes
    CHECK_THROWS(parse(make_file(R"({"a":{"dtype":"Q7","shape":[1],"data_offsets":[0,1]}})", 1)));      // unknown dtype
    CHECK_THROWS(parse(make_file("[1, 2]", 0)));                                                         // not an object
    CHECK_THROWS(parse(make_file("{not json", 0)));
    return check_result();
}
