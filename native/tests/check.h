// A minimal check macro for the ctest executables: report every failure, exit non-zero if any.
#pragma once

#include <cmath>
#include <iostream>

inline int& check_failures() {
    static int failures = 0;
    return failures;
}

#define CHECK(cond)                                                                   \
    do {                                                                              \
        if (!(cond)) {                                                                \
            std::cerr << __FILE__ << ":" << __LINE__ << ": CHECK failed: " #cond "\n"; \
            ++check_failures();                                                       \
        }                                                                             \
    } while (0)

#define CHECK_NEAR(a, b, tol) CHECK(std::fabs(static_cast<double>(a) - static_cast<double>(b)) <= (tol))

#define CHECK_THROWS(expr)      \
    do {                        \
        bool thrown = false;    \
        try {                   \
            expr;               \
        } catch (...) {         \
            thrown = true;      \
        }                       \
        CHECK(thrown && #expr); \
    } while (0)

inline int check_result() {
    if (check_failures()) std::cerr << check_failures() << " check(s) failed\n";
    return check_failures() ? 1 : 0;
}
