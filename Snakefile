# disttgl workflow: raw events -> graph store -> static memory + batch cache -> training -> report.
# Rules are thin: each runs one `disttgl` command; the logic lives in the disttgl package.

from snakemake.utils import min_version, validate

min_version("9.0")

configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/batches.smk"


rule all:
    input:
        expand(graph_path("{dataset}"), dataset=config["datasets"]),
