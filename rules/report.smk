rule summary:
    input:
        bench=bench_outputs(),
        accuracy=accuracy_outputs(),
        code=step_code("summary"),
    output:
        summary=report(
            "results/summary.md",
            category="Summary",
            caption="../report/summary.rst",
        ),
        plots=report(
            plot_outputs(),
            category="Plots",
            caption="../report/plots.rst",
        ),
    log:
        "logs/summary.log",
    conda:
        "../envs/report.yaml"
    params:
        unavailable=_as_json(unavailable_lines()),
        gate=CFG["accuracy"]["gate"],
        baseline=f"{BASELINE['backend']}_{BASELINE['precision']}",
    shell:
        "python -m workflow_scripts.summary --bench {input.bench} --accuracy {input.accuracy}"
        " --unavailable {params.unavailable:q} --gate {params.gate} --baseline {params.baseline}"
        " --out {output.summary} --plots {output.plots} > {log} 2>&1"
