rule prepare_checkpoint:
    input:
        src=lambda w: PLAN.export.checkpoint_source(w.model),
        code=model_code("prepare_checkpoint"),
    output:
        ckpt="artifacts/checkpoints/{model}.pt",
        info="artifacts/checkpoints/{model}.json",
    log:
        "logs/checkpoints/{model}.log",
    conda:
        "../envs/export.yaml"
    params:
        family=family,
        src=lambda w: PLAN.export.checkpoint(w.model),
        model_settings=settings(PLAN.export.model_settings),
    shell:
        "python -m workflow_scripts.prepare_checkpoint --family {params.family} --src {params.src:q}"
        " --model-settings {params.model_settings:q} --out {output.ckpt} --info {output.info} > {log} 2>&1"


rule export_onnx:
    input:
        ckpt="artifacts/checkpoints/{model}.pt",
        val=val_annotations,
        code=lambda w: PLAN.export.export_code(w.model),
    output:
        onnx="artifacts/onnx/{model}/fp32.onnx",
        report="artifacts/onnx/{model}/fp32.json",
    log:
        "logs/onnx/{model}/fp32.log",
    wildcard_constraints:
        model=_one_of(PLAN.export.models_without_onnx_parts()),
    conda:
        "../envs/export.yaml"
    params:
        **PLAN.export.options(),
        family=family,
        dataset=dataset_dir,
        imgsz=imgsz,
    shell:
        "python -m workflow_scripts.export --family {params.family} --checkpoint {input.ckpt}"
        " --dataset {params.dataset} --out {output.onnx} --report {output.report} --imgsz {params.imgsz}"
        " --opset {params.opset} {params.batch_flag} --simplify {params.simplify}"
        " --check-images {params.check_images} --max-abs-error {params.max_abs_error} > {log} 2>&1"


use rule export_onnx as export_onnx_parts with:
    output:
        onnx="artifacts/onnx/{model}/fp32.onnx",
        parts=PLAN.export.onnx_part_patterns(),
        report="artifacts/onnx/{model}/fp32.json",
    wildcard_constraints:
        model=_one_of(PLAN.export.models_with_onnx_parts()),
