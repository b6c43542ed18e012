# Two entry points: `make demo` (the main job on built-in defaults) and `make test`. See README.md.
PYTHON ?= python3
WORK   ?= work/demo

.PHONY: install demo test test-slow bench clean

install:            ## torch's CPU wheel first (a bare `torch` requirement pulls CUDA), then bevport with its extras
	$(PYTHON) -m pip install --quiet torch==2.13.0
	$(PYTHON) -m pip install --quiet -e '.[export,dev]'

demo:               ## synthetic checkpoint + scenes -> ONNX, calibration, FP32 + INT8 IRs, report, predictions, pictures, bench
	$(PYTHON) -m bevport synth-ckpt --seed 0 --out $(WORK)/synthetic_seed0.pth
	$(PYTHON) -m bevport export --ckpt $(WORK)/synthetic_seed0.pth --out $(WORK)/onnx
	$(PYTHON) -m bevport synth-data --frames 40 --seed 0 --out $(WORK)/scenes --overwrite
	$(PYTHON) -m bevport calibrate --onnx $(WORK)/onnx --data $(WORK)/scenes --num-samples 32 --holdout 8 --out $(WORK)/calib
	$(PYTHON) -m bevport quantize --onnx $(WORK)/onnx --calib $(WORK)/calib --out $(WORK)/ir
	$(PYTHON) -m bevport synth-data --frames 8 --seed 1 --out $(WORK)/heldout --overwrite
	$(PYTHON) -m bevport infer --bundle $(WORK)/ir --data $(WORK)/heldout --pred-dir $(WORK)/preds --vis-dir $(WORK)/vis --video
	$(PYTHON) -m bevport bench --bundle $(WORK)/ir --data $(WORK)/heldout --num-samples 4

test:
	$(PYTHON) -m pytest -q

test-slow:
	$(PYTHON) -m pytest -q -m slow

bench:
	$(PYTHON) benchmarks/export.py
	$(PYTHON) benchmarks/pool.py
	cd benchmarks && $(PYTHON) quantize.py --out results/quantize.json
	cd benchmarks && $(PYTHON) infer.py --out results/infer.json

clean:
	rm -rf work benchmarks/results .pytest_cache
