rule bench:
    input:
        artifact=w(PLAN.measure.model_artifact),
        companions=w(PLAN.measure.artifact_companions),
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
        family=family,
        dataset=dataset_dir,
        settings=settings(PLAN.measure.bench_settings),
        python=w(PLAN.ctx.job_python),
        trtexec=flag("--trtexec", PLAN.measure.bench_timer),
    shell:
        "{params.python:q} -m workflow_scripts.bench --model {wildcards.model} --family {params.family}"
        " --artifact {input.artifact} --backend {wildcards.backend} --precision {wildcards.precision}"
        " --batch {wildcards.batch} --dataset {params.dataset} --target {wildcards.target}"
        " --settings {params.settings:q} {params.trtexec} --out {output} > {log} 2>&1"
