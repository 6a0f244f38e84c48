# The two commands a new user needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Debian packages the tests use as independent peers: coap-client (libcoap3-bin), socat, udevadm (udev);
# chromium (with a font) for the console's browser tests, driven by Playwright (which cannot fetch its own browser);
# postgresql for the lender's PostgreSQL store (tests start a throwaway server of their own, tests/kit/postgres.py);
# swtpm (a software TPM 2.0, started per test session by tests/tpm), tpm2-tools, and libtss2-dev that tpm2-pytss builds against.
DEBIAN_PACKAGES := libcoap3-bin socat udev chromium fonts-dejavu-core postgresql swtpm swtpm-tools tpm2-tools libtss2-dev

.PHONY: test hil fuzz demo bench system-deps clean

$(STAMP): pyproject.toml | system-deps
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	$(BIN)/python -m pip install -q -e '.[tpm]' \
	  || echo "note: tpm2-pytss did not build (it needs libtss2-dev); the TPM tests will skip"
	touch $@

# Best effort: installs the Debian peers when running as root with apt; tests that
# need a missing one skip and say which package to install.
system-deps:
	@missing=""; for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null) \
	      || echo "warning: could not install$$missing; tests that need them will skip"; \
	  else echo "note: install$$missing (sudo apt-get install$$missing) to run every test"; fi; \
	fi

# the unit and integration suite, then the short HIL scenarios on the simulated bench;
# the HIL report (reports/hil/index.html, with timelines) is the page to read after a run
test: $(STAMP) system-deps
	$(BIN)/python -m pytest
	$(BIN)/pledgewatch hil run --env hil/envs/sim.toml --report reports/hil

# the long HIL scenarios (~80 min): a compressed day, a day-long outage, 15 min of flaky link, 100 power cuts
hil: $(STAMP) system-deps
	$(BIN)/pledgewatch hil run --env hil/envs/sim.toml --report reports/hil-long --long

# the lender's fuzzer at 10^7 inputs (make test runs 10^5), a new seed each run: for nightly use (~1 h)
fuzz: $(STAMP)
	$(BIN)/python -m tests.kit.fuzz --inputs 10000000

# DEMO_ARGS=--serve keeps the lender and its web console running after the summary, until Ctrl-C
demo: $(STAMP)
	$(BIN)/pledgewatch demo $(DEMO_ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench core

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
