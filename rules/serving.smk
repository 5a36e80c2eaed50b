# Triton: a model repository per target, served by a real tritonserver, measured with perf_analyzer.


rule triton_env:
    input:
        code=step_code("triton_env"),
    output:
        "artifacts/envs/triton.json",
    log:
        "logs/triton_env.log",
    conda:
        "../envs/serving.yaml"
    shell:
        "python -m workflow_scripts.triton_env --out {output} > {log} 2>&1"


rule triton_repository:
    input:
        onnx=triton_onnx,
        code=triton_code(),
    output:
        directory("artifacts/triton/{target}"),
    log:
        "logs/triton/{target}.log",
    conda:
        "../envs/serving.yaml"
    params:
        models=triton_models_json,
        settings=triton_settings,
    shell:
        "python -m workflow_scripts.triton_repo --target {wildcards.target} --models {params.models:q}"
        " --settings {params.settings:q} --out {output} > {log} 2>&1"


rule serving:
    input:
        repository="artifacts/triton/{target}",
        env="artifacts/envs/triton.json",
        val=val_annotations,
        bench_b1=serving_bench_b1,
        code=step_code("serving"),
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
        dataset=dataset_of,
        settings=serving_settings,
        bench_b1=bench_b1_arg,
    shell:
        "python -m workflow_scripts.serving --repository {input.repository} --model {wildcards.model}"
        " --target {wildcards.target} --dataset {params.dataset} {params.bench_b1} --settings {params.settings:q}"
        " --server-log {log.server} --out {output.json} > {log.job} 2>&1"


rule serving_accuracy:
    input:
        repository="artifacts/triton/{target}",
        env="artifacts/envs/triton.json",
        info="artifacts/checkpoints/{model}.json",
        val=val_annotations,
        reference=serving_reference,
        code=step_code("serving_accuracy"),
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
        dataset=dataset_of,
        settings=serving_accuracy_settings,
    shell:
        "python -m workflow_scripts.serving_accuracy --repository {input.repository} --model {wildcards.model}"
        " --target {wildcards.target} --dataset {params.dataset} --checkpoint-info {input.info}"
        " --reference {input.reference} --settings {params.settings:q} --server-log {log.server}"
        " --out {output} > {log.job} 2>&1"


rule serving_plot:
    input:
        serving=lambda w: [
            f"results/{w.target}/serving/{m}.json" for m in SERVED_MODELS
        ],
        code=step_code("serving_plot"),
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
        "python -m workflow_scripts.serving_plot --target {wildcards.target} --serving {input.serving}"
        " --out {output} > {log} 2>&1"
