rule synthetic_dataset:
    input:
        code=step_code("make_dataset"),
    output:
        train="artifacts/data/{dataset}/instances_train.json",
        val="artifacts/data/{dataset}/instances_val.json",
        calib="artifacts/data/{dataset}/instances_calib.json",
    log:
        "logs/data/{dataset}.log",
    conda:
        "../envs/data.yaml"
    params:
        settings=lambda w: _as_json(DATASETS[w.dataset]),
        folder=lambda w: f"artifacts/data/{w.dataset}",
    shell:
        "python -m workflow_scripts.make_dataset --settings {params.settings:q} --out {params.folder} > {log} 2>&1"
