rule accuracy:
    input:
        artifact=w(PLAN.measure.model_artifact),
        companions=w(PLAN.measure.artifact_companions),
        info="artifacts/checkpoints/{model}.json",
        val=val_annotations,
        baseline=w(PLAN.measure.baseline_accuracy),
        code=measure_code("accuracy"),
    output:
        "results/{target}/accuracy/{model}/{backend}_{precision}.json",
    log:
        "logs/accuracy/{target}/{model}/{backend}_{precision}.log",
    wildcard_constraints:
        model=_one_of(PLAN.ctx.other_models("vla")),
    conda:
        "../envs/bench.yaml"
    container:
        target_container
    resources:
        gpu=gpus,
    params:
        family=family,
        dataset=dataset_dir,
        settings=settings(PLAN.measure.accuracy_settings),
        python=w(PLAN.ctx.job_python),
        baseline=optional_arg("--baseline", "baseline"),
    shell:
        "{params.python:q} -m workflow_scripts.accuracy --model {wildcards.model} --family {params.family}"
        " --artifact {input.artifact} --checkpoint-info {input.info} --backend {wildcards.backend}"
        " --precision {wildcards.precision} --dataset {params.dataset} --target {wildcards.target}"
        " {params.baseline} --settings {params.settings:q} --out {output} > {log} 2>&1"


rule accuracy_vla:
    """vla models: also save the actions; the baseline's are the reference the others are scored against."""
    input:
        artifact=w(PLAN.measure.model_artifact),
        companions=w(PLAN.measure.artifact_companions),
        info="artifacts/checkpoints/{model}.json",
        val=val_annotations,
        baseline=w(PLAN.measure.baseline_accuracy),
        reference=w(PLAN.measure.reference_outputs),
        code=measure_code("accuracy"),
    output:
        json="results/{target}/accuracy/{model}/{backend}_{precision}.json",
        actions="results/{target}/accuracy/{model}/{backend}_{precision}.actions.npz",
    log:
        "logs/accuracy/{target}/{model}/{backend}_{precision}.log",
    wildcard_constraints:
        model=_one_of(PLAN.ctx.models_of_task("vla")),
    conda:
        "../envs/bench.yaml"
    container:
        target_container
    resources:
        gpu=gpus,
    params:
        family=family,
        dataset=dataset_dir,
        settings=settings(PLAN.measure.accuracy_settings),
        python=w(PLAN.ctx.job_python),
        baseline=optional_arg("--baseline", "baseline"),
        reference=optional_arg("--reference", "reference"),
    shell:
        "{params.python:q} -m workflow_scripts.accuracy --model {wildcards.model} --family {params.family}"
        " --artifact {input.artifact} --checkpoint-info {input.info} --backend {wildcards.backend}"
        " --precision {wildcards.precision} --dataset {params.dataset} --target {wildcards.target}"
        " {params.baseline} {params.reference} --save-outputs {output.actions}"
        " --settings {params.settings:q} --out {output.json} > {log} 2>&1"
