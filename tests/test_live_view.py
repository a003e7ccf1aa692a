"""The Ray dashboard shows a running study: its REST API, called with the token the study says to log in
with (`ray get-auth-token`), lists the trial's actor by trial id and searched values and, in the Train
view's endpoint, the trial's Ray Train run under the same name."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import SEARCH_SPACES, study_command, study_env

pytestmark = pytest.mark.slow

WORKER_GROUP = ["base.train.epochs=1", "base.resources.num_workers=2", "base.resources.in_trial_process=false"]
DASHBOARD_LINE = re.compile(r"^Ray dashboard: http://(\S+) — log in with the token that `ray get-auth-token` prints.*"
                            r"from a laptop: ssh -L (\d+):localhost:(\d+) \S+", re.MULTILINE)


def one_worker_group_trial(tmp_path: Path) -> Path:
    tree = yaml.safe_load((SEARCH_SPACES / "gc.yaml").read_text())
    tree["name"] = "live"
    tree["search"] = {"method": "grid", "metric": "zeroshot/synthetic_shapes/top1", "mode": "max", "seeds": [0],
                      "space": {"regularizers.gc": {"type": "grid", "values": [0.5]}}}
    path = tmp_path / "live.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def get_json(url: str, token: str) -> dict:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_dashboard_lists_the_named_trial_actor_and_its_train_run(tmp_path: Path, start_study):
    token = subprocess.run([Path(sys.executable).parent / "ray", "get-auth-token"], env=study_env(),
                           capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    results = tmp_path / "results"
    study = start_study(study_command(one_worker_group_trial(tmp_path), results, "--no-report",
                                      overrides=WORKER_GROUP))
    study.wait_for(lambda: DASHBOARD_LINE.search(study.output()) is not None, 120, "the dashboard line")
    address, local_port, remote_port = DASHBOARD_LINE.search(study.output()).groups()
    assert local_port == remote_port == address.rsplit(":", 1)[1]

    seen: dict[str, object] = {}

    def listed() -> bool:
        time.sleep(1)  # a loaded machine: the dashboard answers slowly, and the study needs the CPUs
        try:
            actors = get_json(f"http://{address}/api/v0/actors?detail=1&limit=10000", token)["data"]["result"]["result"]
            runs = get_json(f"http://{address}/api/train/v2/runs/v1", token)["train_runs"]
        except (OSError, KeyError, ValueError) as exc:  # the dashboard, or the Train state actor, still starting
            seen["error"] = repr(exc)
            return False
        seen["actors"] = sorted({(a["class_name"], a["state"]) for a in actors})
        seen["trials"] = [a for a in actors if a["class_name"] == "StudyTrial" and a["state"] == "ALIVE"]
        seen["runs"] = [run["name"] for run in runs]
        return bool(seen["trials"]) and any(name.startswith("trial_") for name in seen["runs"])

    try:
        study.wait_for(listed, 150, "the trial actor and its Train run in the dashboard")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nlast seen: {seen}") from None
    (trial,) = seen["trials"]
    trial_id = trial["repr_name"].split()[0]
    assert trial["repr_name"] == f"{trial_id} regularizers.gc=0.5 train.seed=0"
    assert re.fullmatch(r"trial_\w+_00000", trial_id)
    # the Train view names the run as the trial: the same `trial_<id>` as the actor, `train/trial_<id>/`
    assert trial_id in seen["runs"], seen["runs"]
    assert (results / "trials" / trial_id).is_dir()
    # the study itself (which then finishes) is the other worker-group tests' subject; the fixture stops it here
