"""The demo checkpoints' trainers (run by hand; the pipeline's steps never import them)."""
