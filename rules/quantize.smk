rule calibrate:
    input:
        onnx="artifacts/onnx/{model}/fp32.onnx",
        calib=lambda w: PLAN.ctx.calib_annotations(w.model),
        code=model_code("calibrate"),
    output:
        ranges="artifacts/calib/{model}/{calib}.ranges.json",
        report="artifacts/calib/{model}/{calib}.json",
    log:
        "logs/calib/{model}/{calib}.log",
    conda:
        "../envs/export.yaml"
    params:
        family=family,
        dataset=dataset_dir,
        imgsz=imgsz,
        settings=settings(PLAN.quantize.calibration_settings),
    shell:
        "python -m workflow_scripts.calibrate --family {params.family} --onnx {input.onnx} --dataset {params.dataset}"
        " --imgsz {params.imgsz} --method {wildcards.calib} --settings {params.settings:q} --ranges {output.ranges}"
        " --report {output.report} > {log} 2>&1"


rule trt_calibration_cache:
    input:
        ranges="artifacts/calib/{model}/{calib}.ranges.json",
        code=PLAN.ctx.step_code("tensorrt.calib_cache"),
    output:
        "artifacts/calib/{model}/{calib}.cache",
    log:
        "logs/calib/{model}/{calib}_cache.log",
    conda:
        "../envs/export.yaml"
    params:
        trt_version=PLAN.quantize.trt_version(),
    shell:
        "python -m workflow_scripts.tensorrt.calib_cache --ranges {input.ranges} --method {wildcards.calib}"
        " --trt-version {params.trt_version} --out {output} > {log} 2>&1"


rule quantize_onnx:
    """A QDQ variant: int8_<calib> (U8S8) or int8_<calib>_u8u8 (CPUs whose u8s8 kernels saturate; plan.int8_scheme)."""
    input:
        fp32="artifacts/onnx/{model}/fp32.onnx",
        ranges=w(PLAN.quantize.qdq_ranges),
        code=model_code("quantize"),
    output:
        onnx="artifacts/onnx/{model}/{qdq}.onnx",
        report="artifacts/onnx/{model}/{qdq}.json",
    log:
        "logs/onnx/{model}/{qdq}.log",
    wildcard_constraints:
        qdq=_one_of(qdq_variants(fallback=False)),
    conda:
        "../envs/export.yaml"
    params:
        family=family,
        method=w(PLAN.quantize.method),
        settings=settings(PLAN.quantize.quantize_settings),
    shell:
        "python -m workflow_scripts.quantize --family {params.family} --fp32 {input.fp32} --ranges {input.ranges}"
        " --method {params.method} --settings {params.settings:q} --out {output.onnx} --report {output.report}"
        " > {log} 2>&1"


checkpoint int8_fallback:
    """Every scored INT8 row's float-fallback variant: the plain QDQ model where the row passes the gate, else
    the fewest blocks kept in float that make it pass. A checkpoint: only a needed fallback adds bench and
    accuracy rows (int8_fallback_rows), so the summary lists no copy of a passing row, and a second dry run
    after a complete one is empty."""
    input:
        unpack(w(PLAN.quantize.fallback_inputs)),
        fp32="artifacts/onnx/{model}/fp32.onnx",
        qdq="artifacts/onnx/{model}/{qdq}.onnx",
        qdq_report="artifacts/onnx/{model}/{qdq}.json",
        ranges=w(PLAN.quantize.qdq_ranges),
        info="artifacts/checkpoints/{model}.json",
        val=val_annotations,
        calib=lambda w: PLAN.ctx.calib_annotations(w.model),
        code=w(PLAN.quantize.fallback_code),
    output:
        onnx="artifacts/onnx/{model}/{qdq}_fb.onnx",
        report="artifacts/onnx/{model}/{qdq}_fb.json",
    log:
        "logs/onnx/{model}/{qdq}_fb.log",
    wildcard_constraints:
        qdq=_one_of(qdq_variants(fallback=False)),
    conda:
        "../envs/bench.yaml"
    params:
        family=family,
        dataset=dataset_dir,
        method=w(PLAN.quantize.method),
        baseline=optional_arg("--baseline", "baseline"),
        settings=settings(PLAN.quantize.fallback_settings),
    shell:
        "python -m workflow_scripts.sensitivity --model {wildcards.model} --family {params.family}"
        " --fp32 {input.fp32} --qdq {input.qdq} --ranges {input.ranges} --method {params.method}"
        " --dataset {params.dataset} --checkpoint-info {input.info} --accuracy {input.accuracy} {params.baseline}"
        " --settings {params.settings:q} --out {output.onnx} --report {output.report} > {log} 2>&1"
