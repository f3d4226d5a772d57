"""The MAKA tail of a `vision+maka` engine: embeddings [N, E] -> class scores [B, K] inside TensorRT.

After the parser has built the vision network, the hook unmarks its `embeddings` output, reshapes it
to whole videos ([N, E] -> [B, V, T, E], V and T from the bundle's preprocessing), casts to fp16 and
feeds the apclip::maka plugin (kernels/maka_trt_plugin.py, AOT PTX) together with the class matrix
as engine constants; `scores` [B, K] fp32 is the engine's one output. Such an engine serves
trtexec and Triton Inference Server without Python; its class matrix is the bundle's, so its cache
key covers classes.safetensors too (engine/runners/engine_cache.py).
"""
from __future__ import annotations

import numpy as np

from apclip.bundle import CLASSES_FILE, EMBEDDINGS_OUTPUT, SCORER_OUTPUT, Manifest
from apclip.engine.runners.engine_cache import Profile


def maka_inputs(manifest: Manifest) -> tuple[np.ndarray, np.ndarray]:
    """The class matrix as the plugin takes it: fp16 [K, P, E] (contiguous) and int32 counts [K]."""
    from apclip.class_matrix import load_class_matrix

    matrix = load_class_matrix(manifest.file(CLASSES_FILE), manifest.labels)
    return (np.ascontiguousarray(matrix.embeddings, dtype=np.float16),
            np.ascontiguousarray(matrix.counts, dtype=np.int32))


def maka_network_hook(manifest: Manifest, profile: Profile, views: str = "pool"):
    pre = manifest.preprocessing
    v, t = pre.views, pre.frames
    classes, counts = maka_inputs(manifest)
    k, p, e = classes.shape

    def hook(trt, network) -> None:
        import tensorrt.plugin as trtp

        from apclip.kernels.maka_trt_plugin import register

        register()
        embeddings = next(network.get_output(i) for i in range(network.num_outputs)
                          if network.get_output(i).name == EMBEDDINGS_OUTPUT)
        network.unmark_output(embeddings)
        half = network.add_cast(embeddings, trt.float16).get_output(0)
        videos = network.add_shuffle(half)
        videos.reshape_dims = (-1, v, t, e)  # [N, E] -> [B, V, T, E]
        # TensorRT keeps a pointer to the weights until the build ends: the arrays live in this closure.
        class_rows = network.add_constant((k, p, e), trt.Weights(classes)).get_output(0)
        class_counts = network.add_constant((k,), trt.Weights(counts)).get_output(0)
        layer = network.add_plugin(trtp.op.apclip.maka(videos.get_output(0), class_rows, class_counts,
                                                        mean_views=int(views == "mean"),
                                                        opt_batch=max(1, profile.opt_batch // (v * t))), aot=True)
        scores = layer.get_output(0)
        scores.name = SCORER_OUTPUT
        network.mark_output(scores)

    return hook
