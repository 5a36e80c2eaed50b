"""planforge workflow steps: each module is a small CLI that Snakemake calls as `python -m`."""

__version__ = "0.1.0"
