rule accuracy:
    input:
        artifact=model_artifact,
        info="artifacts/checkpoints/{model}.json",
        val=val_annotations,
        baseline=baseline_accuracy,
        code=measure_code("accuracy"),
    output:
        "results/{target}/accuracy/{model}/{backend}_{precision}.json",
    log:
        "logs/accuracy/{target}/{model}/{backend}_{precision}.log",
    conda:
        "../envs/bench.yaml"
    container:
        target_container
    resources:
        gpu=gpus,
    params:
        family=lambda w: MODELS[w.model]["family"],
        dataset=dataset_of,
        imgsz=lambda w: MODELS[w.model]["imgsz"],
        settings=accuracy_settings,
        baseline=baseline_arg,
    shell:
        "python -m workflow_scripts.accuracy --model {wildcards.model} --family {params.family}"
        " --artifact {input.artifact} --checkpoint-info {input.info} --backend {wildcards.backend}"
        " --precision {wildcards.precision} --imgsz {params.imgsz} --dataset {params.dataset}"
        " --target {wildcards.target} {params.baseline} --settings {params.settings:q} --out {output} > {log} 2>&1"
