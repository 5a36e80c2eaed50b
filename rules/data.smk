rule synthetic_dataset:
    input:
        code=step_code("make_dataset"),
    output:
        "artifacts/data/{dataset}/instances_{split}.json",
    log:
        "logs/data/{dataset}_{split}.log",
    conda:
        "../envs/data.yaml"
    params:
        # only what makes this split's pixels: its own size, not the other splits' sizes
        settings=lambda w: _as_json(split_settings(w.dataset, w.split)),
        folder=lambda w: f"artifacts/data/{w.dataset}",
    shell:
        "python -m workflow_scripts.make_dataset --settings {params.settings:q} --out {params.folder}"
        " --split {wildcards.split} > {log} 2>&1"
