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

CMD ["starrynight", "--help"]
