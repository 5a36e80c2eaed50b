rule prepare_checkpoint:
    input:
        src=checkpoint_source,
        code=lambda w: [
            *step_code("prepare_checkpoint"),
            family_file(MODELS[w.model]["family"]),
        ],
    output:
        ckpt="artifacts/checkpoints/{model}.pt",
        info="artifacts/checkpoints/{model}.json",
    log:
        "logs/checkpoints/{model}.log",
    conda:
        "../envs/export.yaml"
    params:
        family=lambda w: MODELS[w.model]["family"],
        src=lambda w: MODELS[w.model]["checkpoint"],
    shell:
        "python -m workflow_scripts.prepare_checkpoint --family {params.family} --src {params.src:q}"
        " --out {output.ckpt} --info {output.info} > {log} 2>&1"


rule export_onnx:
    input:
        ckpt="artifacts/checkpoints/{model}.pt",
        val=val_annotations,
        code=lambda w: [*step_code("export"), family_file(MODELS[w.model]["family"])],
    output:
        onnx="artifacts/onnx/{model}/fp32.onnx",
        report="artifacts/onnx/{model}/fp32.json",
    log:
        "logs/onnx/{model}/fp32.log",
    conda:
        "../envs/export.yaml"
    params:
        family=lambda w: MODELS[w.model]["family"],
        dataset=dataset_of,
        imgsz=lambda w: MODELS[w.model]["imgsz"],
        opset=CFG["export"]["opset"],
        batch_flag="" if CFG["export"]["dynamic_batch"] else "--static-batch",
        simplify=CFG["export"]["simplify"],
        check_images=CFG["export"]["check_images"],
        max_abs_error=CFG["export"]["max_abs_error"],
    shell:
        "python -m workflow_scripts.export --family {params.family} --checkpoint {input.ckpt}"
        " --dataset {params.dataset} --out {output.onnx} --report {output.report} --imgsz {params.imgsz}"
        " --opset {params.opset} {params.batch_flag} --simplify {params.simplify}"
        " --check-images {params.check_images} --max-abs-error {params.max_abs_error} > {log} 2>&1"
