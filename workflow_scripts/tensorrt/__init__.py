"""TensorRT: engine planning and building, trtexec parsing, and the calibration cache (nothing here imports tensorrt at module level)."""
