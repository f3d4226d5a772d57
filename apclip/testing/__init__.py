"""Generated inputs shared by the tests, the demo, the benchmarks and export's verification.

Nothing here is downloaded: videos are written with cv2.VideoWriter (`videos`), checkpoints, labels
and prompt banks from random weights and hand-written text (`assets`), kernel cases from seeded
random tensors (`kernel_cases`). `videos` needs only the runtime dependencies; the others need torch.
"""
