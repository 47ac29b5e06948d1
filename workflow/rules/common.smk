# Configuration checks and path helpers shared by every stage.

from disttgl.workflow_config import check_config

validate(config, "../schemas/config.schema.yaml")
check_config(config)

DATA = config["data_dir"]
RESULTS = config["results_dir"]


def graph_path(dataset):
    return f"{DATA}/{dataset}/graph.h5"
