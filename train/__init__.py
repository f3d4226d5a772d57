"""Fine-tuning (apclip-train), accuracy on labelled videos (apclip-eval) and the generated training dataset."""
