# Triton: a model repository per target, served by a real tritonserver, measured with perf_analyzer.


rule triton_env:
    input:
        code=PLAN.ctx.step_code("serving.env"),
    output:
        "artifacts/envs/triton.json",
    log:
        "logs/triton_env.log",
    conda:
        "../envs/serving.yaml"
    shell:
        "python -m workflow_scripts.serving.env --out {output} > {log} 2>&1"


rule triton_repository:
    input:
        onnx=w(PLAN.serving.triton_onnx),
        checkpoints=w(PLAN.serving.triton_checkpoints),
        engines=w(PLAN.serving.triton_engine_files),
        code=PLAN.serving.triton_code(),
    output:
        directory("artifacts/triton/{target}"),
    log:
        "logs/triton/{target}.log",
    conda:
        "../envs/serving.yaml"
    params:
        models=settings(PLAN.serving.triton_models),
        settings=settings(PLAN.serving.triton_settings),
    shell:
        "python -m workflow_scripts.serving.repository --target {wildcards.target} --models {params.models:q}"
        " --settings {params.settings:q} --out {output} > {log} 2>&1"


rule serving:
    input:
        repository="artifacts/triton/{target}",
        env="artifacts/envs/triton.json",
        val=val_annotations,
        bench_b1=w(PLAN.serving.bench_b1),
        code=PLAN.ctx.step_code("serving.sweep"),
    output:
        json="results/{target}/serving/{model}.json",
        csv="results/{target}/serving/{model}.csv",
    log:
        job="logs/serving/{target}/{model}.log",
        server="results/{target}/serving/{model}.tritonserver.log",
    conda:
        "../envs/serving.yaml"
    container:
        target_container
    threads: exclusive_threads()
    resources:
        bench=1,
    params:
        dataset=dataset_dir,
        settings=settings(PLAN.serving.settings),
        bench_b1=optional_arg("--bench-b1", "bench_b1"),
    shell:
        "python -m workflow_scripts.serving.sweep --repository {input.repository} --model {wildcards.model}"
        " --target {wildcards.target} --dataset {params.dataset} {params.bench_b1} --settings {params.settings:q}"
        " --server-log {log.server} --out {output.json} > {log.job} 2>&1"


rule serving_accuracy:
    input:
        repository="artifacts/triton/{target}",
        env="artifacts/envs/triton.json",
        info="artifacts/checkpoints/{model}.json",
        val=val_annotations,
        reference=w(PLAN.serving.reference),
        code=PLAN.ctx.step_code("serving.accuracy"),
    output:
        "results/{target}/serving/{model}_accuracy.json",
    log:
        job="logs/serving/{target}/{model}_accuracy.log",
        server="results/{target}/serving/{model}_accuracy.tritonserver.log",
    conda:
        "../envs/serving.yaml"
    container:
        target_container
    threads: exclusive_threads()
    resources:
        bench=1,
    params:
        dataset=dataset_dir,
        settings=settings(PLAN.serving.accuracy_settings),
        reference=optional_arg("--reference", "reference"),
    shell:
        "python -m workflow_scripts.serving.accuracy --repository {input.repository} --model {wildcards.model}"
        " --target {wildcards.target} --dataset {params.dataset} --checkpoint-info {input.info}"
        " {params.reference} --settings {params.settings:q} --server-log {log.server}"
        " --out {output} > {log.job} 2>&1"


rule serving_coserving:
    input:
        repository="artifacts/triton/{target}",
        env="artifacts/envs/triton.json",
        vla=lambda w: PLAN.ctx.val_annotations(PLAN.serving.coserving(w.target)[0]),
        detection=lambda w: PLAN.ctx.val_annotations(
            PLAN.serving.coserving(w.target)[1]
        ),
        code=PLAN.ctx.step_code("serving.coserving"),
    output:
        "results/{target}/serving/coserving.json",
    log:
        job="logs/serving/{target}/coserving.log",
        server="results/{target}/serving/coserving.tritonserver.log",
    conda:
        "../envs/serving.yaml"
    container:
        target_container
    threads: exclusive_threads()
    resources:
        bench=1,
    params:
        m=w(PLAN.serving.coserving_settings),
        settings=settings(PLAN.serving.settings),
    shell:
        "python -m workflow_scripts.serving.coserving --repository {input.repository} --target {wildcards.target}"
        " --vla-model {params.m[vla]} --vla-dataset {params.m[vla_data]} --detection-model {params.m[det]}"
        " --detection-dataset {params.m[det_data]} --settings {params.settings:q} --server-log {log.server}"
        " --out {output} > {log.job} 2>&1"


rule serving_plot:
    input:
        serving=lambda w: PLAN.serving.results(w.target),
        code=PLAN.ctx.step_code("serving.plot"),
    output:
        report(
            "results/plots/{target}_serving_throughput_vs_p99.png",
            category="Plots",
            subcategory="{target}",
            caption="../report/plots.rst",
        ),
    log:
        "logs/plots/{target}_serving.log",
    conda:
        "../envs/report.yaml"
    shell:
        "python -m workflow_scripts.serving.plot --target {wildcards.target} --serving {input.serving}"
        " --out {output} > {log} 2>&1"
