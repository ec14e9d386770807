# The appliance: api (`raiox serve`), sync worker and nightly backup share this image.
# Build context: a release directory made by compose/wheelhouse.sh (deps/ and app/ wheels for
# CPython 3.13), this file and probe.py. Runtime dependencies only: no torch, no compiler, and
# pip never reaches a network (--no-index).
ARG BASE=debian:trixie-slim

FROM ${BASE} AS runtime
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv postgresql-client-17 ca-certificates \
 && rm -rf /var/lib/apt/lists/*

FROM runtime AS deps
# The dependencies' stage is the build cache of every new version (its wheels change only with
# the requirements). No tag points at it: the label lets an image clean-up keep it
# (`docker image prune --filter label!=raiox.build-cache=deps`, as the deploy test does).
LABEL raiox.build-cache=deps
COPY deps/ /wheels/
RUN python3 -m venv /opt/raiox \
 && /opt/raiox/bin/pip install --no-index --no-cache-dir --disable-pip-version-check \
      --find-links /wheels -r /wheels/requirements.txt

FROM runtime
RUN groupadd --system --gid 10001 raiox \
 && useradd --system --uid 10001 --gid raiox --home-dir /var/lib/raiox --shell /usr/sbin/nologin raiox \
 && install -d -o raiox -g raiox -m 0700 /var/lib/raiox /var/lib/raiox/backups \
 && install -d -o raiox -g raiox -m 0700 /run/raiox-metrics
COPY --from=deps /opt/raiox /opt/raiox
COPY app/ /tmp/app/
RUN /opt/raiox/bin/pip install --no-index --no-deps --no-cache-dir --disable-pip-version-check /tmp/app/*.whl \
 && rm -rf /tmp/app
COPY probe.py /usr/local/bin/raiox-probe
RUN sed -i '1i #!/opt/raiox/bin/python3' /usr/local/bin/raiox-probe && chmod 0755 /usr/local/bin/raiox-probe

ENV PATH=/opt/raiox/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    RAIOX_DATA_DIR=/var/lib/raiox \
    RAIOX_BACKUP_DIR=/var/lib/raiox/backups \
    RAIOX_MODEL_DIR=/models/current \
    RAIOX_HOST=0.0.0.0 \
    RAIOX_PORT=8000 \
    RAIOX_WORKERS=2 \
    PROMETHEUS_MULTIPROC_DIR=/run/raiox-metrics
USER raiox
WORKDIR /var/lib/raiox
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=6s --start-period=60s --retries=3 CMD ["raiox-probe"]
# A shell reads the worker count from the environment, then exec: uvicorn becomes PID 1's child
# of `init`, and signals reach it.
CMD ["sh", "-c", "exec raiox serve --workers \"${RAIOX_WORKERS}\""]
