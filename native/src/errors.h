// One exception type for the runtime; its kind becomes the C API's apclip_status.
#pragma once

#include <stdexcept>
#include <string>

namespace apclip {

enum class ErrorKind { Argument = 1, Bundle = 2, Source = 3, Backend = 4, Internal = 5 };

struct Error : std::runtime_error {
    ErrorKind kind;
    Error(ErrorKind k, const std::string& message) : std::runtime_error(message), kind(k) {}
};

}  // namespace apclip
