rule synthetic_dataset:
    input:
        code=PLAN.ctx.step_code("make_dataset"),
    output:
        "artifacts/data/{dataset}/instances_{split}.json",
    log:
        "logs/data/{dataset}_{split}.log",
    wildcard_constraints:
        dataset=_one_of(PLAN.data.datasets_of_kind("synthetic")),
    conda:
        "../envs/data.yaml"
    params:
        # only what makes this split's pixels: its own size, not the other splits' sizes
        settings=settings(PLAN.data.split_settings),
        folder=w(PLAN.data.folder),
    shell:
        "python -m workflow_scripts.make_dataset --settings {params.settings:q} --out {params.folder}"
        " --split {wildcards.split} > {log} 2>&1"


rule coco_download:
    """The only networked job: one official COCO archive, checked by MD5 (see workflow_scripts/coco.py)."""
    output:
        protected("artifacts/data/coco/downloads/{archive}"),
    log:
        "logs/data/coco_download_{archive}.log",
    wildcard_constraints:
        archive=r"annotations_trainval2017\.zip|val2017\.zip",
    conda:
        "../envs/data.yaml"
    shell:
        "python -m workflow_scripts.coco download --name {wildcards.archive} --out {output} > {log} 2>&1"


rule coco_dataset:
    input:
        archives=[
            ancient("artifacts/data/coco/downloads/annotations_trainval2017.zip"),
            ancient("artifacts/data/coco/downloads/val2017.zip"),
        ],
        code=PLAN.ctx.step_code("coco"),
    output:
        "artifacts/data/{dataset}/instances_{split}.json",
    log:
        "logs/data/{dataset}_{split}.log",
    wildcard_constraints:
        dataset=_one_of(PLAN.data.datasets_of_kind("coco")),
    conda:
        "../envs/data.yaml"
    params:
        settings=settings(PLAN.data.coco_settings),
        folder=w(PLAN.data.folder),
    shell:
        "python -m workflow_scripts.coco build --downloads artifacts/data/coco/downloads --out {params.folder}"
        " --split {wildcards.split} --settings {params.settings:q} > {log} 2>&1"


rule download_weights:
    """Networked: an ultralytics release checkpoint named in a config (config/coco.yaml: yolov8n.pt)."""
    output:
        protected("artifacts/weights/{name}.pt"),
    log:
        "logs/weights/{name}.log",
    wildcard_constraints:
        name=r"yolo[A-Za-z0-9._-]*",
    conda:
        "../envs/export.yaml"
    shell:
        "python -m workflow_scripts.coco weights --name {wildcards.name}.pt --out {output} > {log} 2>&1"


rule episodes_dataset:
    """The vla task's episodes (kind episodes): index JSON + arrays, from the seed (workflow_scripts/tasks/vla.py)."""
    input:
        code=PLAN.ctx.step_code("make_episodes"),
    output:
        index="artifacts/data/{dataset}/episodes_{split}.json",
        arrays="artifacts/data/{dataset}/episodes_{split}.npz",
    log:
        "logs/data/{dataset}_episodes_{split}.log",
    wildcard_constraints:
        dataset=_one_of(PLAN.data.datasets_of_kind("episodes")),
    conda:
        "../envs/data.yaml"
    params:
        settings=settings(PLAN.data.episodes_settings),
        folder=w(PLAN.data.folder),
    shell:
        "python -m workflow_scripts.make_episodes --settings {params.settings:q} --out {params.folder}"
        " --split {wildcards.split} > {log} 2>&1"


rule videos_dataset:
    """The tracking task's videos (kind videos): index JSON + arrays, from the seed (workflow_scripts/tasks/tracking.py)."""
    input:
        code=PLAN.ctx.step_code("make_videos"),
    output:
        index="artifacts/data/{dataset}/videos_{split}.json",
        arrays="artifacts/data/{dataset}/videos_{split}.npz",
    log:
        "logs/data/{dataset}_videos_{split}.log",
    wildcard_constraints:
        dataset=_one_of(PLAN.data.datasets_of_kind("videos")),
    conda:
        "../envs/data.yaml"
    params:
        settings=settings(PLAN.data.videos_settings),
        folder=w(PLAN.data.folder),
    shell:
        "python -m workflow_scripts.make_videos --settings {params.settings:q} --out {params.folder}"
        " --split {wildcards.split} > {log} 2>&1"
