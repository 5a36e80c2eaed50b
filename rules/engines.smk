# TensorRT engines: one per target, model, precision and batch profile, with a sidecar JSON.
# Everything that changes an engine is in params (settings: precision, shapes, workspace, DLA core,
# INT8 mode and cache, extra flags, TensorRT version, GPU, Jetson power mode), so a change rebuilds
# exactly the engines it touches. Builds hold the bench resource: tactic selection times kernels,
# and two builds (or a build and a benchmark) on one GPU would disturb each other's timings.


rule build_engine:
    input:
        onnx=w(PLAN.engines.onnx),
        calib=w(PLAN.engines.calibration),
        code=PLAN.ctx.step_code("tensorrt.build_engine"),
    output:
        engine="artifacts/engines/{target}/{model}/{precision}_b{batch}.plan",
        sidecar="artifacts/engines/{target}/{model}/{precision}_b{batch}.json",
    log:
        "logs/engines/{target}/{model}/{precision}_b{batch}.log",
    conda:
        "../envs/engines.yaml"
    container:
        target_container
    threads: exclusive_threads()
    resources:
        bench=1,
    params:
        settings=settings(PLAN.engines.settings),
        python=w(PLAN.ctx.job_python),
        timing_cache=flag("--timing-cache", PLAN.engines.timing_cache),
    shell:
        "{params.python:q} -m workflow_scripts.tensorrt.build_engine --onnx {input.onnx} --settings {params.settings:q}"
        " {params.timing_cache} --engine {output.engine} --sidecar {output.sidecar} > {log} 2>&1"
