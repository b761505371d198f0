#!/usr/bin/env bash
# nanoNG entry point.
#   bash run.sh setup                 create .venv and install requirements.txt (done by every command)
#   bash run.sh demo [nss|neuropbr|prism|gamengen|all]  generate built-in data, train, evaluate vs baselines, export
#   bash run.sh play [play.py flags]  play the GameNGen model in a window (installs pygame; default: the shipped weights)
#   bash run.sh smoke                 the test suite (pytest), what CI runs
#   bash run.sh gpucheck              the CUDA suite (tests/test_cuda.py) on a GPU machine -> runs/gpucheck.log
#   bash run.sh stress                the long tests: kill -9, signals, 5,000 fuzzed files per reader; the int8
#                                     exports of all four use cases; bench nss --quick
#   bash run.sh bench [nss|neuropbr|prism|gamengen|all] [--quick]  train each for a fixed budget, measure quality,
#                                     speed and cost against the baselines -> bench/results.md + results.json
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)
VENV=${NANONG_VENV:-$ROOT/.venv}
PY=$VENV/bin/python

vulkan_for_vgf() {
    # Running a .vgf without an Arm GPU needs Mesa's lavapipe Vulkan driver under Arm's emulation layer.
    dpkg -s mesa-vulkan-drivers libvulkan1 >/dev/null 2>&1 && return 0
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        echo "[run.sh] installing Debian mesa-vulkan-drivers libvulkan1 (lavapipe, to run .vgf files on the CPU)"
        { apt-get install -y -q mesa-vulkan-drivers libvulkan1 || { apt-get update -q && apt-get install -y -q mesa-vulkan-drivers libvulkan1; }; } >/dev/null 2>&1 \
            || echo "[run.sh] note: could not install mesa-vulkan-drivers; .vgf files will be exported but not run"
    else
        echo "[run.sh] note: no root apt; install mesa-vulkan-drivers libvulkan1 to run .vgf files (export still works)"
    fi
}

setup() {
    if [ ! -x "$PY" ]; then
        echo "[run.sh] creating $VENV"
        python3 -m venv "$VENV"
    fi
    local stamp=$VENV/.requirements.sha
    local want
    want=$(cat requirements.txt "$@" 2>/dev/null | sha256sum | cut -d' ' -f1)
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        echo "[run.sh] installing requirements.txt $* into $VENV (first run: a few minutes)"
        local reqs=(-r requirements.txt)
        for f in "$@"; do reqs+=(-r "$f"); done
        "$PY" -m pip install --disable-pip-version-check -q "${reqs[@]}"
        echo "$want" > "$stamp"
    fi
    vulkan_for_vgf
    # Arm's VGF backend finds model-converter with shutil.which: put the venv's bin first.
    export PATH="$VENV/bin:$PATH"
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
}

cmd=${1:-help}; shift || true
case "$cmd" in
    setup) setup ;;
    demo)
        which=${1:-nss}
        case "$which" in
            nss|neuropbr) setup; "$PY" "$which/demo.py" "${@:2}" ;;
            prism) setup prism/requirements.txt; "$PY" prism/demo.py "${@:2}" ;;
            gamengen) setup gamengen/requirements.txt; "$PY" gamengen/demo.py "${@:2}" ;;
            all) setup nss/requirements.txt prism/requirements.txt gamengen/requirements.txt; "$PY" nss/demo.py --out runs/demo/nss \
                    && "$PY" neuropbr/demo.py --out runs/demo/neuropbr && "$PY" prism/demo.py --out runs/demo/prism \
                    && "$PY" gamengen/demo.py --out runs/demo/gamengen ;;
            *) echo "error: demo: unknown use case '$which' (have: nss, neuropbr, prism, gamengen, all)" >&2; exit 2 ;;
        esac ;;
    play)
        setup gamengen/requirements.txt gamengen/requirements-play.txt
        "$PY" gamengen/play.py "$@" ;;
    smoke)
        setup nss/requirements.txt prism/requirements.txt gamengen/requirements.txt
        set +e
        # the formatter and linter (ruff.toml) first: a style failure fails smoke, after the tests have run
        "$VENV/bin/ruff" check --quiet . && "$VENV/bin/ruff" format --check --quiet .
        lint=$?
        [ $lint -ne 0 ] && echo "[run.sh] ruff: fix with \`.venv/bin/ruff check --fix . && .venv/bin/ruff format .\`" >&2
        # two workers, one torch thread each (2 cores); each test file stays on one worker, tests marked slow run
        # first, each on its own, in collection order (tests/conftest.py)
        OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} "$PY" -m pytest -q -n ${NANONG_TEST_WORKERS:-2} --dist loadgroup --no-loadscope-reorder --durations=15 tests "$@"
        rc=$?
        set -e
        # pytest exits 5 when it collected no tests: only acceptable while tests/ is empty.
        if [ $rc -eq 5 ] && [ -z "$(ls tests/test_*.py 2>/dev/null)" ]; then rc=0; fi
        [ $rc -eq 0 ] && [ $lint -ne 0 ] && rc=1
        exit $rc ;;
    gpucheck)
        setup nss/requirements.txt prism/requirements.txt gamengen/requirements.txt
        mkdir -p runs
        "$PY" -c "import torch; n = torch.cuda.device_count(); print(f'[run.sh] torch {torch.__version__}, CUDA ' +
            (f'{torch.version.cuda}: {n} x {torch.cuda.get_device_name(0)}' if n else 'device: none (the suite skips)'))"
        # one test at a time (they share the GPU); -s prints the CUDA bench table into the log
        "$PY" -m pytest -v -s -rs --durations=0 tests/test_cuda.py "$@" 2>&1 | tee runs/gpucheck.log
        exit "${PIPESTATUS[0]}" ;;
    stress)
        setup nss/requirements.txt prism/requirements.txt gamengen/requirements.txt
        report=$(mktemp)
        start=$(date +%s)
        set +e
        NANONG_STRESS=1 NANONG_STRESS_REPORT=$report "$PY" -m pytest -q --durations=15 tests/test_reliability_resume.py tests/test_reliability_fuzz.py "$@"
        rc=$?
        # the tests marked stress (tests/conftest.py): the int8 exports of every use case and bench --quick
        NANONG_STRESS=1 "$PY" -m pytest -q --durations=15 -m stress tests "$@" || rc=1
        set -e
        echo "[run.sh] stress: $(( $(date +%s) - start ))s; kills survived and fuzz outcomes per reader:"
        cat "$report"; echo
        rm -f "$report"
        exit $rc ;;
    bench)
        which=${1:-all}; shift || true
        setup nss/requirements.txt prism/requirements.txt gamengen/requirements.txt
        case "$which" in
            nss|neuropbr|prism|gamengen) "$PY" "$which/bench.py" "$@" ;;
            all) start=$(date +%s)
                 for u in nss neuropbr prism gamengen; do "$PY" "$u/bench.py" "$@"; done
                 echo "[run.sh] bench all: $(( ($(date +%s) - start) / 60 )) min; results in bench/results.md" ;;
            *) echo "error: bench: unknown use case '$which' (have: nss, neuropbr, prism, gamengen, all)" >&2; exit 2 ;;
        esac ;;
    help|-h|--help) sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//' ;;
    *) echo "error: unknown command '$cmd' (setup | demo | play | smoke | gpucheck | stress | bench)" >&2; exit 2 ;;
esac
