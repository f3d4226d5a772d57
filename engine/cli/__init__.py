"""apclip-infer and apclip-bundle: argument parsing, runs, outputs (JSON lines, CSV, HTML report, overlay)."""
