rule calibrate:
    input:
        onnx="artifacts/onnx/{model}/fp32.onnx",
        calib=lambda w: PLAN.calib_annotations(w.model),
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
        settings=settings(PLAN.calibration_settings),
    shell:
        "python -m workflow_scripts.calibrate --family {params.family} --onnx {input.onnx} --dataset {params.dataset}"
        " --imgsz {params.imgsz} --method {wildcards.calib} --settings {params.settings:q} --ranges {output.ranges}"
        " --report {output.report} > {log} 2>&1"


rule trt_calibration_cache:
    input:
        ranges="artifacts/calib/{model}/{calib}.ranges.json",
        code=PLAN.step_code("tensorrt.calib_cache"),
    output:
        "artifacts/calib/{model}/{calib}.cache",
    log:
        "logs/calib/{model}/{calib}_cache.log",
    conda:
        "../envs/export.yaml"
    params:
        trt_version=PLAN.cfg["quantize"]["trt_version"],
    shell:
        "python -m workflow_scripts.tensorrt.calib_cache --ranges {input.ranges} --method {wildcards.calib}"
        " --trt-version {params.trt_version} --out {output} > {log} 2>&1"


rule quantize_onnx:
    input:
        fp32="artifacts/onnx/{model}/fp32.onnx",
        ranges="artifacts/calib/{model}/{calib}.ranges.json",
        code=model_code("quantize"),
    output:
        onnx="artifacts/onnx/{model}/int8_{calib}.onnx",
        report="artifacts/onnx/{model}/int8_{calib}.json",
    log:
        "logs/onnx/{model}/int8_{calib}.log",
    conda:
        "../envs/export.yaml"
    params:
        family=family,
        settings=settings(PLAN.quantize_settings),
    shell:
        "python -m workflow_scripts.quantize --family {params.family} --fp32 {input.fp32} --ranges {input.ranges}"
        " --method {wildcards.calib} --settings {params.settings:q} --out {output.onnx} --report {output.report}"
        " > {log} 2>&1"
