"""Test helpers: a fake trainer that writes MLPerf logs through the lifecycle API (in this process, or as the
command that trains a run of a plan), and fixture paths."""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

import yaml
from mlperf_logging.mllog import constants

from mlperf_submission.common.mllog import MLLog
from mlperf_submission.common.run import QUALITY_TARGETS, Run, Submission

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures" / "mlperf-v1.1"


def one_line_error(code: int, err: str, message: str) -> None:
    """A refused command: exit 2 and one `error: ...` line on stderr that contains `message`."""
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and message in err, (code, err)
RULES = Path(constants.__file__).resolve().parents[1] / "compliance_checker" / "training_1.1.0"


def reference_tensors(benchmark: str) -> list[str]:
    """The weights_initialization tensor list of the 1.1.0 closed rules, read from the checker's yaml."""
    for rule in yaml.safe_load((RULES / f"closed_{benchmark}.yaml").read_text()):
        if "END" in rule:
            return re.findall(r'"([^"]+)"', rule["END"]["CHECK"])
    raise AssertionError(f"no END rule in closed_{benchmark}.yaml")


LARS = {"global_batch_size": 3264, "gradient_accumulation_steps": 1, "opt_name": "lars",
        "lars_opt_base_learning_rate": 10.5, "lars_opt_end_learning_rate": 0.0001,
        "lars_opt_learning_rate_decay_poly_power": 2, "lars_opt_learning_rate_decay_steps": 14523,
        "lars_epsilon": 0.0, "lars_opt_learning_rate_warmup_epochs": 2, "lars_opt_momentum": 0.9,
        "lars_opt_weight_decay": 5e-05}
SGD = {"global_batch_size": 3264, "gradient_accumulation_steps": 1, "opt_name": "sgd",
       "sgd_opt_base_learning_rate": 0.256, "sgd_opt_end_learning_rate": 0.0001,
       "sgd_opt_learning_rate_decay_poly_power": 2, "sgd_opt_learning_rate_decay_steps": 10000,
       "sgd_opt_weight_decay": 0.0001, "sgd_opt_momentum": 0.9, "model_bn_span": 64,
       "opt_learning_rate_warmup_epochs": 5}
BERT = {"global_batch_size": 3072, "gradient_accumulation_steps": 1, "opt_base_learning_rate": 0.002,
        "opt_epsilon": 1e-06, "opt_learning_rate_training_steps": 1141, "opt_learning_rate_warmup_steps": 100,
        "num_warmup_steps": 100, "start_warmup_step": 0, "opt_lamb_beta_1": 0.66, "opt_lamb_beta_2": 0.998,
        "opt_lamb_weight_decay_rate": 0.01}


class FakeClock:
    def __init__(self, start: float = 1.7e9):
        self.now = start

    def __call__(self) -> float:
        return self.now


def fake_run(path: Path, *, benchmark="resnet", division="closed", hyperparameters=None, seed=1,
             accuracy=0.76, status="onprem", clock=None, init_seconds=5.0, run_minutes=1.0,
             tensors=None, minutes_per_eval=None, evals=None, after_start: Callable[[], None] | None = None) -> Path:
    """Write a whole run's log as a trainer would, with a fake clock; `after_start` runs in the timed region."""
    clock = clock or FakeClock()
    hp = hyperparameters if hyperparameters is not None else (
        {} if division == "open" else (BERT if benchmark == "bert" else LARS))
    sub = Submission(org="acme", platform="1xTEST", division=division, status=status, benchmark=benchmark)
    samples = (1281167, 50000) if benchmark == "resnet" else (2_800_000, 10000)
    with Run(MLLog(path, clock=clock), sub, seed=seed, hyperparameters=hp, train_samples=samples[0],
             eval_samples=samples[1]) as run:
        if tensors is None and division == "closed":
            tensors = reference_tensors(benchmark)
        run.weights_initialization(tensors or [])
        clock.now += init_seconds
        run.start()
        if after_start is not None:
            after_start()
        points = evals or ([(36, accuracy)] if benchmark == "resnet" else [(2_800_000, accuracy)])
        run.block_start(first_epoch_num=1, epoch_count=4)
        for epoch_num, acc in points:
            clock.now += run_minutes * 60 / len(points)
            run.eval_start(epoch_num)
            run.eval_stop(epoch_num, acc)
        run.block_stop(first_epoch_num=1)
        run.stop("success" if points[-1][1] >= QUALITY_TARGETS[benchmark] else "aborted")
    return path


FAKE_TRAINER = Path(__file__).with_name("fake_trainer.py")


def fake_train_command(plan, i: int, *, system: Path, log: Path, nproc: int = 1, launcher: str = "",
                       **fake_run_kwargs) -> list[str]:
    """runs.train_command's stand-in: the fake trainer writes run i's log (keyword arguments: fake_run's)."""
    return [sys.executable, str(FAKE_TRAINER), "--seed", str(plan.seeds[i]), "--result-log", str(log),
            "--fake-run", json.dumps(fake_run_kwargs)]


# Imported first by every Python process that has its folder on PYTHONPATH: the process that asked for the hook
# (and no child, since it takes the variable away) trains its runs with the fake trainer.
SITECUSTOMIZE = """
import os
tests = os.environ.pop("FAKE_TRAINER_HOOK", "")
if tests:
    import sys
    sys.path.append(tests)
    from fakes import fake_train_command
    from mlperf_submission.compliance import runs
    runs.train_command = fake_train_command
"""


def fake_trainer_env(folder: Path, **variables: str) -> dict[str, str]:
    """The environment in which `python -m mlperf_submission.compliance ...` (or `make submit`) trains with the
    fake trainer; `variables` adds the fake trainer's faults (FAKE_TRAINER_PAUSE, FAKE_TRAINER_RAISE)."""
    hooks = folder / "fake-trainer-hook"
    hooks.mkdir(exist_ok=True)
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
    path = os.pathsep.join(p for p in (str(hooks), os.environ.get("PYTHONPATH", "")) if p)
    return os.environ | {"PYTHONPATH": path, "FAKE_TRAINER_HOOK": str(FAKE_TRAINER.parent)} | variables
