"""Model code for Triton's Python backend, copied as `<repository>/<model>/1/model.py`.

`maka.py` and `vision_ort.py` go into repositories for NVIDIA's containers and need only numpy
(and onnxruntime); `clip.py` and `labels.py` are apclip-serve's models and import apclip.
"""
