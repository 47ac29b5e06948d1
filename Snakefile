# disttgl workflow: raw events -> graph store -> batch cache -> static memory -> training -> report.
# Rules are thin: each runs one `disttgl` command; the logic lives in the disttgl package.

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


# `all` must be the first rule (the default target, also for `snakemake --report`).
rule all:
    input:
        f"{RESULTS}/report/accuracy.html",


include: "workflow/rules/data.smk"
include: "workflow/rules/batches.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/parallel.smk"
include: "workflow/rules/report.smk"
