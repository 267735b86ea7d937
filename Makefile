# The front door. `make help` lists the targets; variables are passed as NAME=value.
PY ?= .venv/bin/python
DIVISION ?= closed
BENCH ?= resnet
PRESET ?=
SYSTEM ?=
DATA ?=
RUNS ?=
OUT ?=
SEEDS ?=
NPROC ?= 1
LOG ?=
SUB ?=
SRC ?=
EVAL ?=

submit_args = --division $(DIVISION) --bench $(BENCH) --nproc $(NPROC) \
	$(if $(PRESET),--preset $(PRESET)) $(if $(SYSTEM),--system $(SYSTEM)) $(if $(DATA),--data $(DATA)) \
	$(if $(RUNS),--runs $(RUNS)) $(if $(OUT),--out $(OUT)) $(if $(SEEDS),--seeds $(SEEDS))

.PHONY: help setup test lint submit check score systems describe-system data clean

help:
	@echo "make setup                         create .venv and install the package with its pinned dependencies"
	@echo "make test                          ruff, then the pytest suite"
	@echo "make submit DIVISION= BENCH=       train the runs, check, package, score and archive a submission"
	@echo "           [PRESET= SYSTEM= DATA= RUNS= OUT= SEEDS= NPROC=]"
	@echo "make check LOG=\"a.txt b.txt\"       official compliance checker (ruleset 1.1.0) on result logs"
	@echo "make score SUB=folder              olympic-mean minutes and RCP verdict of a submission tree"
	@echo "make systems                       official system description checker on systems/*.json"
	@echo "make describe-system OUT=f.json    describe this machine as a system JSON"
	@echo "make data BENCH=resnet SRC=dir     check and index ImageNet (counts, checksums)"
	@echo "make data BENCH=bert SRC='train/part-*' EVAL=eval_10k OUT=dir   convert the MLPerf BERT TFRecords"

setup:
	python3 -m venv .venv
	$(PY) -m pip install --upgrade pip setuptools wheel
	$(PY) -m pip install -e '.[dev]'

test: lint
	$(PY) -m pytest

lint:
	$(PY) -m ruff check .

submit:
	$(PY) -m mlperf_submission.compliance submit $(submit_args)

check:
	$(PY) -m mlperf_submission.compliance check $(LOG)

score:
	$(PY) -m mlperf_submission.compliance score $(SUB)

systems:
	$(PY) -m mlperf_submission.compliance systems

describe-system:
	$(PY) -m mlperf_submission.systems describe $(if $(OUT),--out $(OUT))

data:
ifeq ($(BENCH),resnet)
	$(PY) -m mlperf_submission.common.data.imagenet $(SRC) --out $(or $(OUT),$(SRC))
else
	$(PY) -m mlperf_submission.common.data.bert_wiki convert --train '$(SRC)' --eval $(EVAL) --out $(OUT)
endif

clean:
	rm -rf out .pytest_cache .ruff_cache
