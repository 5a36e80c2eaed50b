# image: planforge/server:0.1.0
# The CUDA server target's pinned environment: TensorRT 10 (Python API + trtexec), CUDA, Python 3.12
# (NGC 25.01), plus this project with the onnxruntime-gpu and serving extras. Triton's own server runs
# from the tritonserver image of the same release (see README, "Containers").
#   docker build -f envs/containers/server.Dockerfile -t planforge/server:0.1.0 .
#   snakemake --profile profiles/server --sdm apptainer results/summary.md
FROM nvcr.io/nvidia/tensorrt:25.01-py3
WORKDIR /opt/planforge
COPY pyproject.toml README.md ./
COPY workflow_scripts ./workflow_scripts
RUN pip install --no-cache-dir "torch==2.6.0" "torchvision==0.21.0" \
 && pip install --no-cache-dir -e ".[serving]" onnxruntime-gpu nvidia-ml-py \
 && python -c "import tensorrt, torch; print(tensorrt.__version__, torch.__version__)"
