# disttgl workflow: raw events -> graph store -> batch cache -> static memory -> training -> report
# (and graph store -> snapshots -> snapshot DGNN training -> report; graph store -> partition ->
# RandomTMA/SuperTMA training -> report).
# Rules are thin: each runs one `disttgl` command; the logic lives in the disttgl package, and every
# target and input function of the rules lives in workflow/rules/common.smk (those of the snapshot
# and TMA rules in common_systems.smk, which it includes).

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


# The default target (also of `snakemake --report`): the report over every configured run.
rule all:
    default_target: True
    input:
        final_outputs(),


include: "workflow/rules/data.smk"
include: "workflow/rules/batches.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/pipeline.smk"
include: "workflow/rules/parallel.smk"
include: "workflow/rules/snapshot.smk"
include: "workflow/rules/tma.smk"
include: "workflow/rules/report.smk"
