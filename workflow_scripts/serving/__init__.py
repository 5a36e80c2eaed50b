"""Triton serving: the server environment, the server manager, the model repository and its python models, the perf_analyzer sweep, served accuracy and its plot."""
