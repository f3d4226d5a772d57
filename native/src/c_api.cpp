// The C API (apclip.h) over the internal C++ Recognizer: exceptions become status codes and a per-thread
// last-error message, so no C++ exception ever crosses into C.
#include "apclip.h"

#include <cmath>
#include <new>
#include <string>

#include "errors.h"
#include "recognizer.h"

struct apclip_model {
    apclip::Recognizer recognizer;
};

struct apclip_result {
    apclip::Prediction prediction;
};

namespace {

thread_local std::string last_error;

apclip_status fail(apclip_status status, const std::string& message) {
    last_error = message;
    return status;
}

template <typename Body>
apclip_status guarded(Body body) {
    try {
        body();
        return APCLIP_OK;
    } catch (const apclip::Error& exc) {
        return fail(static_cast<apclip_status>(exc.kind), exc.what());
    } catch (const std::bad_alloc&) {
        return fail(APCLIP_ERROR_INTERNAL, "out of memory");
    } catch (const std::exception& exc) {
        return fail(APCLIP_ERROR_INTERNAL, exc.what());
    }
}

}  // namespace

extern "C" {

apclip_status apclip_open(const char* bundle_dir, apclip_model** model) {
    if (!bundle_dir || !*bundle_dir || !model) return fail(APCLIP_ERROR_ARGUMENT, "apclip_open: bundle_dir and model are required");
    return guarded([&] { *model = new apclip_model{apclip::Recognizer(bundle_dir)}; });
}

apclip_status apclip_predict_source(apclip_model* model, const char* source, long long max_frames, int topk,
                                    apclip_result** result) {
    if (!model || !source || !*source || !result)
        return fail(APCLIP_ERROR_ARGUMENT, "apclip_predict: model, source and result are required");
    return guarded([&] { *result = new apclip_result{model->recognizer.predict(source, topk, max_frames)}; });
}

apclip_status apclip_predict_file(apclip_model* model, const char* source, int topk, apclip_result** result) {
    return apclip_predict_source(model, source, 0, topk, result);
}

int apclip_result_count(const apclip_result* result) { return result ? static_cast<int>(result->prediction.top.size()) : 0; }

const char* apclip_result_label(const apclip_result* result, int rank) {
    if (!result || rank < 0 || rank >= apclip_result_count(result)) return nullptr;
    return result->prediction.top[rank].label.c_str();
}

float apclip_result_score(const apclip_result* result, int rank) {
    if (!result || rank < 0 || rank >= apclip_result_count(result)) return NAN;
    return static_cast<float>(result->prediction.top[rank].score);
}

int apclip_result_frames(const apclip_result* result) { return result ? result->prediction.frames : 0; }

void apclip_result_free(apclip_result* result) { delete result; }

void apclip_close(apclip_model* model) { delete model; }

const char* apclip_last_error(void) { return last_error.c_str(); }

const char* apclip_version(void) { return APCLIP_VERSION; }

}  // extern "C"
