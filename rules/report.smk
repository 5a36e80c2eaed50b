rule plots:
    input:
        bench=target_rows("bench"),
        accuracy=target_rows("accuracy"),
        code=PLAN.ctx.step_code("plots"),
    output:
        latency=report(
            "results/plots/{target}_latency_vs_batch.png",
            category="Plots",
            subcategory="{target}",
            caption="../report/plots.rst",
        ),
        accuracy=report(
            "results/plots/{target}_accuracy_vs_latency.png",
            category="Plots",
            subcategory="{target}",
            caption="../report/plots.rst",
        ),
    log:
        "logs/plots/{target}.log",
    conda:
        "../envs/report.yaml"
    shell:
        "python -m workflow_scripts.plots --target {wildcards.target} --bench {input.bench}"
        " --accuracy {input.accuracy} --latency-png {output.latency} --accuracy-png {output.accuracy} > {log} 2>&1"


rule power_plot:
    input:
        bench=target_rows("bench"),
        code=PLAN.ctx.step_code("plots"),
    output:
        report(
            "results/plots/{target}_latency_vs_power.png",
            category="Plots",
            subcategory="{target}",
            caption="../report/plots.rst",
        ),
    log:
        "logs/plots/{target}_power.log",
    conda:
        "../envs/report.yaml"
    shell:
        "python -m workflow_scripts.plots --target {wildcards.target} --bench {input.bench}"
        " --power-png {output} > {log} 2>&1"


rule pictures:
    input:
        artifact=w(PLAN.measure.model_artifact),
        companions=w(PLAN.measure.artifact_companions),
        info="artifacts/checkpoints/{model}.json",
        val=val_annotations,
        code=w(PLAN.measure.picture_code),
    output:
        report(
            "results/{target}/pictures/{model}/{backend}_{precision}.png",
            category="Pictures",
            subcategory="{target}",
            caption="../report/pictures.rst",
        ),
    log:
        "logs/pictures/{target}/{model}/{backend}_{precision}.log",
    conda:
        "../envs/bench.yaml"
    container:
        target_container
    resources:
        gpu=gpus,
    params:
        family=family,
        dataset=dataset_dir,
        settings=settings(PLAN.measure.picture_settings),
        python=w(PLAN.ctx.job_python),
    shell:
        "{params.python:q} -m workflow_scripts.pictures --model {wildcards.model} --family {params.family}"
        " --artifact {input.artifact} --checkpoint-info {input.info} --backend {wildcards.backend}"
        " --precision {wildcards.precision} --dataset {params.dataset} --target {wildcards.target}"
        " --settings {params.settings:q} --out {output} > {log} 2>&1"


rule summary:
    input:
        bench=PLAN.measure.bench_outputs(),
        accuracy=PLAN.measure.accuracy_outputs(),
        plots=PLAN.report.plot_outputs(),
        pictures=PLAN.measure.picture_outputs(),
        serving=PLAN.serving.outputs(),
        serving_plots=PLAN.serving.plot_outputs(),
        calibration_caches=PLAN.quantize.calibration_cache_outputs(),
        fallback_decisions=PLAN.quantize.fallback_decision_outputs(),
        fallback_bench=int8_fallback_rows("bench"),  # INT8 float-fallback rows, where needed (quantize.smk)
        fallback_accuracy=int8_fallback_rows("accuracy"),
        code=PLAN.ctx.step_code("summary"),
    output:
        report(
            "results/summary.md",
            category="Summary",
            caption="../report/summary.rst",
        ),
    log:
        "logs/summary.log",
    conda:
        "../envs/report.yaml"
    params:
        unavailable=as_json(PLAN.report.unavailable_lines()),
        gate=PLAN.report.gate(),
        baseline=PLAN.report.baseline_label(),
        references=as_json(PLAN.report.references()),
    shell:
        "python -m workflow_scripts.summary --bench {input.bench} {input.fallback_bench}"
        " --accuracy {input.accuracy} {input.fallback_accuracy}"
        " --plots {input.plots} {input.serving_plots} --pictures {input.pictures} --serving {input.serving} --unavailable {params.unavailable:q} --gate {params.gate}"
        " --baseline {params.baseline} --references {params.references:q}"
        " --calibration-caches {input.calibration_caches} --out {output} > {log} 2>&1"
