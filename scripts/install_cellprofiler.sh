#!/usr/bin/env bash
# Install CellProfiler 4.2.8 (headless) in its own virtual environment, for
# `starrynight cp run` and tests/starrynight/test_cp_cellprofiler.py.
#
# CellProfiler pins Python 3.9-era dependencies and needs Java (python-javabridge), so
# it never goes into the project's venv. Headless runs (`cellprofiler -c -r`) need
# neither wxPython (GUI) nor mysqlclient (ExportToDatabase/MySQL): both are left out.
#
# Usage: scripts/install_cellprofiler.sh [VENV_DIR]   (default /opt/cp-venv)
# Needs: a Python 3.9 interpreter (PYTHON39, default: pyenv's 3.9 or python3.9 on PATH),
#        a JDK (JAVA_HOME, default: the first /usr/lib/jvm/java-17-*), a C compiler.
set -euo pipefail

VENV="${1:-/opt/cp-venv}"
PY="${PYTHON39:-$(ls -d /root/.pyenv/versions/3.9.*/bin/python 2>/dev/null | tail -1 || true)}"
PY="${PY:-$(command -v python3.9 || true)}"
if [ -z "$PY" ]; then
    echo "error: no Python 3.9 interpreter found (set PYTHON39)" >&2
    exit 2
fi
export JAVA_HOME="${JAVA_HOME:-$(ls -d /usr/lib/jvm/java-17-* 2>/dev/null | head -1)}"
if [ -z "$JAVA_HOME" ]; then
    echo "error: no JDK found (set JAVA_HOME; apt-get install openjdk-17-jdk-headless)" >&2
    exit 2
fi

if [ -x "$VENV/bin/cellprofiler" ] && "$VENV/bin/cellprofiler" --version >/dev/null 2>&1; then
    echo "CellProfiler already installed: $VENV/bin/cellprofiler"
    exit 0
fi

"$PY" -m venv "$VENV"
PIP="$VENV/bin/pip"
"$PIP" install --upgrade pip wheel "setuptools<70"   # CellProfiler imports pkg_resources
"$PIP" install "numpy==1.23.5" "cython<3"
# javabridge compiles against numpy and the JDK: build it against the pinned numpy.
"$PIP" install --no-build-isolation "python-javabridge>=4.0.3,<5"
# CellProfiler 4.2.8's requirements minus wxPython and mysqlclient.
"$PIP" install \
    "boto3>=1.12.28" "cellprofiler-core==4.2.8" "centrosome>=1.2.3,<1.3" "docutils==0.15.2" \
    "h5py~=3.6.0" "imageio>=2.5" "inflect>=2.1,<7" "Jinja2>=2.11.2" "joblib>=0.13" \
    "mahotas>=1.4" "matplotlib>=3.1.3,<4" "numpy==1.23.5" "Pillow>=7.1.0" \
    "prokaryote==2.4.4" "python-bioformats>=4.0.7,<5" "pyzmq~=22.3" "sentry-sdk==0.18.0" \
    "requests>=2.22" "scipy==1.9.0" "scikit-image==0.18.3" "scikit-learn>=0.20,<1" six \
    "tifffile<2022.4.22"
"$PIP" install --no-deps "cellprofiler==4.2.8"
"$VENV/bin/cellprofiler" --version
echo "installed: $VENV/bin/cellprofiler"
