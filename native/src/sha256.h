// SHA-256 of a file or a buffer (OpenSSL's EVP), as lowercase hex: the bundle manifest's `sha256`.
#pragma once

#include <string>

namespace apclip {

std::string sha256_hex(const void* data, size_t size);
std::string sha256_file(const std::string& path);  // throws Error(Bundle) when unreadable

}  // namespace apclip
