# The front door. `make help` lists the targets; variables are passed as NAME=value.
# Plain `=`: a variable takes its value from the command line or the default here, never from an environment
# variable of the same name (`?=` would let an unrelated OUT or PY in the shell steer the targets).
PY = .venv/bin/python
DIVISION = closed
BENCH = resnet
PRESET =
SYSTEM =
DATA =
CKPT =
RUNS =
OUT =
SEEDS =
NPROC = 1
FORCE =
INDEX =
LAUNCH =
NODE =
LOG =
SUB =
SRC =
EVAL =
PACK =
MAX_PER_PACK =
MAX_PRED_PER_PACK =
RESULT_ID =
RESULT_SYSTEM =
RESULTS =
QUICK =
THREADS =
BENCH_JSON =
BUDGET =
STEPS =
# `make wheels`: the folder, and the Python and platform its binary wheels are for (README "On a GPU")
WHEELS = .whl
WHEEL_PYTHON = 3.12
WHEEL_PLATFORM = manylinux_2_28_x86_64
# distributions the target machine already has, left out of the folder (space-separated)
PREINSTALLED =

submit_args = --division $(DIVISION) --bench $(BENCH) --nproc $(NPROC) \
	$(if $(PRESET),--preset $(PRESET)) $(if $(SYSTEM),--system $(SYSTEM)) $(if $(DATA),--data $(DATA)) \
	$(if $(CKPT),--ckpt $(CKPT)) $(if $(RUNS),--runs $(RUNS)) $(if $(OUT),--out $(OUT)) $(if $(SEEDS),--seeds $(SEEDS))
run_args = $(submit_args) --index $(INDEX) $(if $(LAUNCH),--launcher '$(LAUNCH)') $(if $(NODE),--node $(NODE))

.PHONY: help setup horovod test lint submit run package time-to-target check score audit reproduce systems describe-system data clean bench report gpu-check wheels bench-twice rehearse

help:
	@echo "make setup                         create .venv and install the package with its pinned dependencies"
	@echo "make horovod                       optional: build Horovod 0.28.1 (torch, gloo) into .venv (3-7 min)"
	@echo "make test                          ruff, then the pytest suite"
	@echo "make submit DIVISION= BENCH=       train the runs, check, package, score and archive a submission"
	@echo "           [PRESET= SYSTEM= DATA= RUNS= OUT= SEEDS= NPROC= CKPT= FORCE=1]   the same command again resumes OUT;"
	@echo "           FORCE=1 starts OUT over; CKPT: the BERT phase-1 checkpoint"
	@echo "make run DIVISION= BENCH= INDEX=i OUT=dir [same options, LAUNCH='torchrun ...' NODE=n]"
	@echo "                                   train run i of the plan in OUT (one job per run; the first writes the plan)"
	@echo "make package OUT=dir               package, check and score OUT's runs once they all pass"
	@echo "make check LOG=\"a.txt b.txt\"       official compliance checker (ruleset 1.1.0) on result logs"
	@echo "make score SUB=folder              olympic-mean minutes and RCP verdict of a submission tree"
	@echo "make audit SUB=folder|file.tar.gz [RESULT_ID=1.1-2040] [OUT=]   re-check and re-score, as 4.1.68 and"
	@echo "           the v1.1 round's tools judge it; RESULT_ID compares with the published minutes"
	@echo "           (RESULT_ID= RESULTS=<checkout of training_results_v1.1> instead of SUB= finds its folder)"
	@echo "make audit RESULTS=<checkout>      every submitter folder: a report each and one summary table"
	@echo "make reproduce RESULT_ID=1.1-2040 RESULTS=dir | SUB=folder [RESULT_SYSTEM= BENCH= RUNS= DATA= SYSTEM= OUT=]"
	@echo "           re-run an audited result with its seeds and mapped hyperparameters (smoke scale without DATA)"
	@echo "make bench [QUICK=1 THREADS= OUT=] throughput vs peers side by side (out/bench/bench.{json,md}; ~16 min"
	@echo "           on 2 cores; THREADS=1 on a shared machine; QUICK=1 toy sizes in seconds)"
	@echo "make gpu-check [OUT= BUDGET=540]   on a CUDA GPU: environment, smoke runs eager and compiled, bench GPU rows"
	@echo "                                   (out/gpu-check/gpu_check.{json,md}; <10 min on one H200; no GPU: skips)"
	@echo "make wheels [WHEELS=.whl WHEEL_PYTHON=3.12 WHEEL_PLATFORM=manylinux_2_28_x86_64 PREINSTALLED=\"numpy ...\"]"
	@echo "                                   every dependency but torch and the package itself as wheels, for a machine"
	@echo "                                   without network (README, \"On a GPU\")"
	@echo "make bench-twice [QUICK=1 THREADS= OUT=out/bench-twice]   the bench twice, then per ratio whether the"
	@echo "                                   two runs' values agree within 10 % (OUT/compare.md)"
	@echo "make report [SUB=\"a b\" BENCH_JSON= OUT=]   results page: HTML with PNG plots (out/report/index.html)"
	@echo "make time-to-target BENCH= [SEEDS=1,2,3]   open vs closed smoke presets, minutes to the target, same seeds"
	@echo "make rehearse BENCH= PRESET= [DIVISION= SYSTEM= DATA= CKPT= STEPS=2 BUDGET=300 OUT= LAYOUT=jpeg|tfds]   a real preset"
	@echo "           for a few steps on generated full-format data (or DATA): stages timed, RCP forecast"
	@echo "make systems                       official system description checker on systems/*.json"
	@echo "make describe-system OUT=f.json    describe this machine as a system JSON"
	@echo "make data BENCH=resnet SRC=dir     check and index ImageNet (counts, checksums)"
	@echo "make data BENCH=resnet SRC=downloads OUT=dir [NO_VERIFY=1]   the three ILSVRC2012 archives: md5, extract, arrange, index"
	@echo "make data BENCH=resnet|bert ... VERIFY=1   re-hash every file against the manifest (a run checks only sizes and times)"
	@echo "make data BENCH=bert               make the smoke phase-1 checkpoint (once; cached in out/cache)"
	@echo "make data BENCH=bert SRC='train/part-*' EVAL=eval_10k OUT=dir   convert the MLPerf BERT TFRecords"
	@echo "make data BENCH=bert PACK=nnlshp|spfhp SRC=converted OUT=dir [MAX_PER_PACK=3] [MAX_PRED_PER_PACK=Q]   pack both splits"

setup:
	python3 -m venv .venv
	$(PY) -m pip install --upgrade pip setuptools wheel
	$(PY) -m pip install -e '.[dev,bench]'

# Optional, never part of setup or CI: compiles Horovod from source with the C++17 fix (see the module).
horovod:
	$(PY) -m pip install -e '.[horovod]'
	$(PY) -m mlperf_submission.common.runtime.horovod_build

test: lint
	$(PY) -m pytest

lint:
	$(PY) -m ruff check .

submit:
	$(PY) -m mlperf_submission.compliance submit $(submit_args) $(if $(FORCE),--force)

run:
	$(if $(INDEX),,$(error give INDEX=<run number, 0-based> and OUT=<submission folder>))
	$(PY) -m mlperf_submission.compliance run $(run_args)

package:
	$(if $(OUT),,$(error give OUT=<the submission folder of make submit or make run>))
	$(PY) -m mlperf_submission.compliance package --out $(OUT)

check:
	$(PY) -m mlperf_submission.compliance check $(LOG)

score:
	$(PY) -m mlperf_submission.compliance score $(SUB)

# SUB= one folder or archive; RESULT_ID= (with SUB= or RESULTS=) one result; RESULTS= alone every submitter.
audit:
	$(PY) -m mlperf_submission.compliance audit $(SUB) $(if $(RESULT_ID),--result-id $(RESULT_ID)) \
		$(if $(RESULTS),--results-root $(RESULTS)) $(if $(OUT),--out $(OUT))

# BENCH defaults to resnet for the other targets: here it only counts when given on the command line.
reproduce:
	$(PY) -m mlperf_submission.compliance reproduce $(if $(RESULT_ID),--result-id $(RESULT_ID)) \
		$(if $(SUB),--sub $(SUB)) $(if $(RESULTS),--results-root $(RESULTS)) \
		$(if $(RESULT_SYSTEM),--result-system $(RESULT_SYSTEM)) \
		$(if $(filter command line,$(origin BENCH)),--bench $(BENCH)) $(if $(RUNS),--runs $(RUNS)) \
		$(if $(DATA),--data $(DATA)) $(if $(CKPT),--ckpt $(CKPT)) $(if $(SYSTEM),--system $(SYSTEM)) --nproc $(NPROC) \
		$(if $(OUT),--out $(OUT))

bench_opts = $(if $(QUICK),--quick) $(if $(THREADS),--threads $(THREADS))
twice = $(or $(OUT),out/bench-twice)

bench:
	$(PY) -m mlperf_submission.bench $(bench_opts) $(if $(OUT),--out $(OUT))

# Two whole runs one after the other, then per ratio: do their medians agree within 10 %?
bench-twice:
	$(PY) -m mlperf_submission.bench $(bench_opts) --out $(twice)/1
	$(PY) -m mlperf_submission.bench $(bench_opts) --out $(twice)/2
	$(PY) -m mlperf_submission.bench.compare $(twice)/1/bench.json $(twice)/2/bench.json --out $(twice)/compare.md

gpu-check:
	$(PY) -m mlperf_submission.bench.gpu_check $(if $(OUT),--out $(OUT)) $(if $(BUDGET),--budget $(BUDGET))

wheels:
	$(PY) -m mlperf_submission.bench.offline wheels --out $(WHEELS) --python-version $(WHEEL_PYTHON) \
		--platform $(WHEEL_PLATFORM) $(if $(PREINSTALLED),--preinstalled $(PREINSTALLED))

report:
	$(PY) -m mlperf_submission.compliance report $(SUB) $(if $(BENCH_JSON),--bench $(BENCH_JSON)) $(if $(OUT),--out $(OUT))

time-to-target:
	$(PY) -m mlperf_submission.bench.time_to_target --bench $(BENCH) $(if $(SEEDS),--seeds $(SEEDS)) $(if $(OUT),--out $(OUT))

systems:
	$(PY) -m mlperf_submission.compliance systems

describe-system:
	$(PY) -m mlperf_submission.systems describe $(if $(OUT),--out $(OUT))

data:
ifeq ($(BENCH),resnet)
	$(PY) -m mlperf_submission.common.data.imagenet $(SRC) --out $(or $(OUT),$(SRC)) $(if $(NO_VERIFY),--no-verify) $(if $(VERIFY),--verify)
else ifneq ($(VERIFY),)
	$(if $(PACK),$(PY) -m mlperf_submission.common.data.packing --verify $(OUT),$(PY) -m mlperf_submission.common.data.bert_wiki verify --out $(OUT))
else ifeq ($(SRC),)
	$(PY) -m mlperf_submission.closed.bert.phase1
else ifneq ($(PACK),)
	$(PY) -m mlperf_submission.common.data.packing --algorithm $(PACK) $(if $(MAX_PER_PACK),--max-per-pack $(MAX_PER_PACK)) $(if $(MAX_PRED_PER_PACK),--max-pred-per-pack $(MAX_PRED_PER_PACK)) $(SRC) $(OUT)
else
	$(PY) -m mlperf_submission.common.data.bert_wiki convert --train '$(SRC)' --eval $(EVAL) --out $(OUT)
	$(if $(CKPT),$(PY) -m mlperf_submission.closed.bert.checkpoint --eval $(OUT) $(CKPT))
endif

# Rehearsal (issue 22): a real preset for a few steps on any hardware, measured, with the RCP forecast.
rehearse:
	$(if $(PRESET),,$(error give PRESET=<a real preset, e.g. 1xH200>))
	$(PY) -m mlperf_submission.compliance rehearse --bench $(BENCH) --division $(DIVISION) --preset $(PRESET) \
		$(if $(SYSTEM),--system $(SYSTEM)) $(if $(DATA),--data $(DATA)) $(if $(CKPT),--ckpt $(CKPT)) \
		$(if $(STEPS),--steps $(STEPS)) $(if $(BUDGET),--budget $(BUDGET)) $(if $(OUT),--out $(OUT)) \
		$(if $(LAYOUT),--imagenet-layout $(LAYOUT))

clean:
	rm -rf out .pytest_cache .ruff_cache
