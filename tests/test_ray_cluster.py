"""Ray with two worker nodes (ray.cluster_utils.Cluster), one removed while the study runs."""

from __future__ import annotations

import time

import numpy as np
import ray
import torch

from fsfsl_utils import experiment, runner


def test_a_node_removed_mid_study_loses_nothing(tiny_pack, tmp_path):
    """Two worker nodes (ray.cluster_utils.Cluster), one removed when the first training has finished
    (the others are running or queued, whatever the machine's speed): Ray retries its tasks on the
    other; every record is there once, valid, and equal to the local runner's."""

    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False,
                                                            "env_vars": {"RAY_AUTH_MODE": "disabled"}})
    keep = cluster.add_node(num_cpus=1)
    lost = cluster.add_node(num_cpus=1)
    todo = [experiment.StepSpec.build("02_flip", "smoke", seed=s, source=tiny_pack) for s in range(4)]
    try:
        ray.init(address=cluster.address, log_to_driver=False,
                 runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled"}})

        removed: list[float] = []

        def remove_at_first_record(record: dict) -> None:
            """The first training has finished: the others are running or queued on both nodes."""
            if not removed:
                cluster.remove_node(lost)
                removed.append(time.time())

        records = runner.RayRunner(num_cpus=1, num_gpus=0).run(todo, tmp_path / "ray", analyse_images=False,
                                                               on_record=remove_at_first_record)
    finally:
        ray.shutdown()
        cluster.shutdown()
    del keep
    import datetime as dt

    finished = [dt.datetime.fromisoformat(r["created"]).timestamp() for r in records]
    assert removed and max(finished) > removed[0], "the study ended before the node was removed: nothing was tested"
    files = sorted(p.name for p in (tmp_path / "ray" / "records").iterdir())
    assert files == [f"02_flip-seed{s}.json" for s in range(4)]                     # once each, nothing half-written
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = runner.LocalRunner().run(todo, tmp_path / "local", analyse_images=False)
    finally:
        torch.set_num_threads(threads)
    for r, lo in zip(records, local):
        assert r["metrics"] == lo["metrics"] and np.array_equal(r["predictions"]["logits"], lo["predictions"]["logits"])
