# One image that runs every `starrynight` CLI step; this is what AWS Batch runs.
# The install steps are the Makefile's: a pip install of this project.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /opt/starrynight

COPY pyproject.toml README.md ./
COPY pipecraft ./pipecraft
COPY starrynight ./starrynight
COPY dagster_defs ./dagster_defs
COPY conductor ./conductor

RUN python -m pip install --upgrade pip && python -m pip install .

# The geometry step's compiled kernels, built into the image: each Batch container then
# loads them (about a second) instead of compiling them (about 20 s). numba keys its
# cache by CPU model, so a host of another kind compiles once more, into its own copy.
ENV NUMBA_CACHE_DIR=/opt/starrynight/numba-cache
RUN python -c "from starrynight.algorithms import ncc; ncc.load()" \
    && chmod -R a+rwX /opt/starrynight/numba-cache

CMD ["starrynight", "--help"]
