rule bench:
    input:
        artifact=model_artifact,
        val=val_annotations,
        code=measure_code("bench"),
    output:
        "results/{target}/bench/{model}/{backend}_{precision}_b{batch}.json",
    log:
        "logs/bench/{target}/{model}/{backend}_{precision}_b{batch}.log",
    conda:
        "../envs/bench.yaml"
    container:
        target_container
    threads: exclusive_threads()
    resources:
        bench=1,
        gpu=gpus,
    params:
        family=lambda w: MODELS[w.model]["family"],
        dataset=dataset_of,
        imgsz=lambda w: MODELS[w.model]["imgsz"],
        settings=bench_settings,
    shell:
        "python -m workflow_scripts.bench --model {wildcards.model} --family {params.family}"
        " --artifact {input.artifact} --backend {wildcards.backend} --precision {wildcards.precision}"
        " --batch {wildcards.batch} --imgsz {params.imgsz} --dataset {params.dataset}"
        " --target {wildcards.target} --settings {params.settings:q} --out {output} > {log} 2>&1"
