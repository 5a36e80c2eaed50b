# image: planforge/jetson:0.1.0
# The Jetson targets' pinned environment: JetPack 6 (L4T r36.4) with TensorRT 10 and trtexec, CUDA and
# cuDNN from the host's JetPack. JetPack 6's Python is 3.10, older than this project needs (3.11+), so
# the image builds engines with trtexec and times them with the host's tegrastats (see "On a Jetson").
#   docker build -f envs/containers/jetson.Dockerfile -t planforge/jetson:0.1.0 .   # on the Jetson
FROM nvcr.io/nvidia/l4t-jetpack:r36.4.0
RUN test -x /usr/src/tensorrt/bin/trtexec && ln -sf /usr/src/tensorrt/bin/trtexec /usr/local/bin/trtexec
