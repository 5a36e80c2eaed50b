# planforge: model checkpoints → ONNX, engines, benchmarks, accuracy, pictures and one summary per target (see ARCHITECTURE.md).
import sys

from snakemake.utils import min_version

min_version("9.0")

sys.path.insert(
    0, workflow.basedir
)  # the workflow's own workflow_scripts, also from a copy


# --configfile replaces the embedded default instead of being merged into it; --config still extends it.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/export.smk"
include: "rules/quantize.smk"
include: "rules/engines.smk"
include: "rules/bench.smk"
include: "rules/accuracy.smk"
include: "rules/serving.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        PLAN.final_outputs(),
