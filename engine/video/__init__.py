"""Video ingest: sources, frame sampling, preprocessing, clips and sliding windows."""
