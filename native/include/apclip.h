/* apclip.h: the C API of the apclip native runtime (C, Go, Rust and C++ programs link libapclip_runtime).
 *
 * A model is an exported bundle (apclip-export): manifest.json, vision.onnx, classes.safetensors.
 * apclip_open checks every file it uses against the manifest's sha256 and refuses a tampered bundle;
 * apclip_predict_file decodes a video file, camera index ("0") or stream URL, samples and preprocesses
 * clips with the bundle's profile, encodes them and scores every class with the bundle's protocol,
 * giving the answers the Python engine (apclip-infer) gives.
 *
 * Every function that can fail returns an apclip_status; on failure apclip_last_error() holds a one-line
 * message (per thread) naming the input and what to do. Nothing is printed and nothing aborts.
 * A model may be used by one thread at a time.
 */
#ifndef APCLIP_H
#define APCLIP_H

#if defined(APCLIP_BUILDING) && defined(__GNUC__)
#define APCLIP_API __attribute__((visibility("default")))
#else
#define APCLIP_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

typedef enum apclip_status {
    APCLIP_OK = 0,
    APCLIP_ERROR_ARGUMENT = 1, /* a NULL pointer, an empty path, topk < 1 */
    APCLIP_ERROR_BUNDLE = 2,   /* a missing, unreadable, inconsistent or tampered bundle */
    APCLIP_ERROR_SOURCE = 3,   /* a video that cannot be opened or has no decodable frames */
    APCLIP_ERROR_BACKEND = 4,  /* the inference engine cannot load or run the model */
    APCLIP_ERROR_INTERNAL = 5  /* anything else (out of memory, a bug) */
} apclip_status;

typedef struct apclip_model apclip_model;   /* an opened bundle with its compiled vision encoder */
typedef struct apclip_result apclip_result; /* one prediction: the top-k classes with their scores */

/* Open the bundle directory and compile its vision encoder. *model is set only on APCLIP_OK. */
APCLIP_API apclip_status apclip_open(const char *bundle_dir, apclip_model **model);

/* Predict one video file (or a stream with an end) and keep the top `topk` classes. */
APCLIP_API apclip_status apclip_predict_file(apclip_model *model, const char *source, int topk, apclip_result **result);

/* The same from its first `max_frames` frames; a camera index ("0") or a live stream URL needs max_frames > 0. */
APCLIP_API apclip_status apclip_predict_source(apclip_model *model, const char *source, long long max_frames, int topk,
                                               apclip_result **result);

APCLIP_API int apclip_result_count(const apclip_result *result);                /* classes kept (<= topk) */
APCLIP_API const char *apclip_result_label(const apclip_result *result, int rank); /* NULL when rank is out of range */
APCLIP_API float apclip_result_score(const apclip_result *result, int rank);       /* NaN when rank is out of range */
APCLIP_API int apclip_result_frames(const apclip_result *result);               /* frame embeddings scored (views x T) */

APCLIP_API void apclip_result_free(apclip_result *result); /* NULL is fine */
APCLIP_API void apclip_close(apclip_model *model);         /* NULL is fine */

/* The message of the last failed call on this thread ("" when none). Valid until the next failing call. */
APCLIP_API const char *apclip_last_error(void);
APCLIP_API const char *apclip_version(void);

#ifdef __cplusplus
}
#endif

#endif /* APCLIP_H */
