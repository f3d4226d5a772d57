"""apclip.scale: beyond one process. Ray Data batch inference over video archives (apclip-batch) and
serving through NVIDIA Triton Inference Server (apclip-serve, apclip-triton-repo).

Nothing here is imported by the engine; ray, pyarrow and tritonclient are imported inside the
functions that need them (the `scale` extra).
"""
