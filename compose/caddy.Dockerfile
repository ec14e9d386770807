# Caddy from Debian's package: the only service with published ports. It listens on 8080/8443
# inside (no root, no capability needed); compose maps the host's 80/443 onto them.
ARG BASE=debian:trixie-slim
FROM ${BASE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends caddy ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && install -d -o caddy -g caddy -m 0700 /var/lib/caddy/data /var/lib/caddy/config
COPY Caddyfile /etc/caddy/Caddyfile
ENV XDG_DATA_HOME=/var/lib/caddy/data \
    XDG_CONFIG_HOME=/var/lib/caddy/config
USER caddy
EXPOSE 8080 8443
HEALTHCHECK --interval=10s --timeout=5s --retries=5 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080"]
CMD ["caddy", "run", "--config", "/etc/caddy/Caddyfile", "--adapter", "caddyfile"]
