#!/usr/bin/env bash
# The device check, run as one short script on a lent GPU machine (the workplace's `device` tool):
# the CUDA tests, then the real tutorial job on the GPU and on all the machine's CPU cores, in the
# same run so that the speed ratio holds on that machine; the demo and a two-class job on all the
# real particles (39 % junk) on the GPU. About 4 minutes of device time. Prepared here, where pip works:
#   echo /.whl/ >> .git/info/exclude; echo /.devdata/ >> .git/info/exclude
#   pip download --no-deps ... -d .whl starfile mrcfile gemmi    (Python 3.12 wheels; see the tool's README)
#   mkdir .devdata; cp -r ../shared/data/betagal_relion5_tutorial_particles ../shared/data/betagal_relion_tutorial_map .devdata/
# and called with carry [".whl", ".devdata"]:  bash benchmarks/gpu_check.sh [SEED]
set -uo pipefail
seed=${1:-1}
out=${OUT:-/tmp/gpu_check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD/src
else
    export PYTHONPATH=$PWD/src
fi
if [ -d .devdata ] && [ ! -e ../shared/data ]; then
    mkdir -p ../shared && ln -s "$PWD/.devdata" ../shared/data
fi
nvidia-smi -L
python3 -c "import torch, numba; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'numba', numba.__version__)"
cores=$(nproc)

if [ -z "${SKIP_TESTS:-}" ]; then
    echo "== CUDA tests"
    timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_device_paths.py tests/test_estep.py tests/test_projection.py 2>&1 | tee "$out/tests.log"
fi

echo "== real job, GPU 0"
timeout 100 python3 benchmarks/bench_real_betagal.py --seed "$seed" --j "$cores" --gpu 0 --out /tmp/gpu_job 2>&1 | tee "$out/gpu_job.json"
python3 benchmarks/phase_times.py /tmp/gpu_job/seed"$seed" 2>&1 | tee "$out/gpu_phases.txt"

echo "== real job again on GPU 0, phase by phase (numba's CPU kernels now compiled and cached)"
timeout 100 python3 benchmarks/bench_fixed_cost.py --star ../shared/data/betagal_relion5_tutorial_particles/particles_ctf_from_relion31_tutorial_goodclasses.star \
    --iter 100 --j "$cores" --out /tmp/gpu_fixed -- --preread --gpu 0 2>&1 | tee "$out/gpu_fixed.md"

echo "== real job, $cores CPU cores"
timeout 150 python3 benchmarks/bench_real_betagal.py --seed "$seed" --j "$cores" --out /tmp/cpu_job 2>&1 | tee "$out/cpu_job.json"
python3 benchmarks/phase_times.py /tmp/cpu_job/seed"$seed" 2>&1 | tee "$out/cpu_phases.txt"

echo "== novomap demo on GPU 0 (the README's first command)"
timeout 70 python3 -m novomap demo --o /tmp/demo --gpu 0 --j "$cores" 2>&1 | tail -8 | tee "$out/demo.log"

echo "== all 2,374 real particles (39 % junk), two classes, GPU 0"
(cd ../shared/data/betagal_relion5_tutorial_particles && timeout 80 python3 -m novomap initial-model \
    --i particles_ctf_from_relion31_tutorial.star --o /tmp/all_k2 --iter 100 --K 2 --particle-diameter 200 --sym D2 \
    --sampling 15 --offset-range 6 --offset-step 2 --preread --j "$cores" --seed "$seed" --quiet --no-report --gpu 0) 2>&1 | tee "$out/all_k2.log"
[ -f /tmp/all_k2/initial_model.mrc ] && python3 -m novomap compare ../shared/data/betagal_relion_tutorial_map/betaGal.mrc /tmp/all_k2/initial_model.mrc --align --json 2>&1 | tail -3 | tee -a "$out/all_k2.log"
