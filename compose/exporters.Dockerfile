# The three Prometheus exporters from Debian's packages, one image: compose runs each binary as
# its own service (postgres-exporter, redis-exporter, node-exporter) with its own healthcheck.
ARG BASE=debian:trixie-slim
FROM ${BASE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      prometheus-postgres-exporter prometheus-redis-exporter prometheus-node-exporter \
 && rm -rf /var/lib/apt/lists/*
USER prometheus
HEALTHCHECK --interval=15s --timeout=5s --retries=5 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9100"]
CMD ["prometheus-node-exporter"]
