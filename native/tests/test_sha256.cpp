// SHA-256 against FIPS 180-2's test vectors, and a file hashed in blocks equals the buffer's hash.
#include <cstdio>
#include <fstream>
#include <string>

#include "../src/sha256.h"
#include "check.h"

int main() {
    CHECK(apclip::sha256_hex("abc", 3) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    CHECK(apclip::sha256_hex("", 0) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    const std::string text(3 << 20, 'x');  // over the 1 MiB read block
    const std::string path = "sha256_test.bin";
    std::ofstream(path, std::ios::binary) << text;
    CHECK(apclip::sha256_file(path) == apclip::sha256_hex(text.data(), text.size()));
    std::remove(path.c_str());
    CHECK_THROWS(apclip::sha256_file("no/such/file"));
    return check_result();
}
