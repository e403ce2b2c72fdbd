# Set-up is part of every target: scripts/setup_venv.sh creates or refreshes .venv (a no-op when
# nothing changed), so `make demo` and `make test` work on a fresh machine.
VENV := .venv
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl

.PHONY: setup demo test lint bench clean

setup:
	@bash scripts/setup_venv.sh

demo: setup
	$(VENV)/bin/ami-ros demo

# pytest exits 5 when it collects no test: report it instead of failing the build
test: setup
	@$(VENV)/bin/python -m pytest -q -p no:cacheprovider test $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests"; exit 0; fi; exit $$rc

bench: setup
	$(VENV)/bin/ami-ros bench

lint: setup
	$(VENV)/bin/python -m pytest -q test/test_lint.py

clean:
	rm -rf $(VENV) build install log
