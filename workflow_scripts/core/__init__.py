"""Shared pieces every part may use: io, registries, precisions, machine identity, data, metrics, envinfo, code inputs, result tables, and the one place a family meets a runner (pipeline)."""
