# modelgate image, FROM scratch: a static binary, the TLS roots, a non-root
# user, /data for the cache. Build it from a binary compiled on the host:
#
#   deploy/docker/build.sh docker        (or: deploy/docker/build.sh buildah)
#
# which fills dist/ (the only part of the context this file uses) and runs
# `docker build .`. Dockerfile.multistage compiles inside a golang image
# instead, for hosts that can pull one.
#
# Configuration: mount a file at /etc/modelgate/config.yaml (the working
# directory, so the default -config finds it), or set MODELGATE_* variables
# (they win over the file); without either the built-in defaults apply.
# Secrets: MODELGATE_HUGGINGFACE_TOKEN_FILE=/run/secrets/hf_token with a
# mounted secret keeps the token out of `docker inspect`.
FROM scratch

COPY dist/rootfs/ /
# /data itself must belong to the user: COPY chowns what it copies, and
# copying dist/owned/ copies the data directory as an entry.
COPY --chown=65532:65532 dist/owned/ /
COPY dist/modelgate /usr/local/bin/modelgate

USER 65532:65532
WORKDIR /etc/modelgate
ENV MODELGATE_LISTEN=:8080 \
    MODELGATE_DATA_DIR=/data
VOLUME ["/data"]
EXPOSE 8080

# `modelgate healthcheck` asks /readyz on the configured listen address
# (there is no curl in the image): unhealthy while draining or down.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/usr/local/bin/modelgate", "healthcheck"]
# SIGTERM drains: new connections are refused, downloads in flight get
# shutdown_timeout (30s) to finish. Give `docker stop -t` a bit more.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/modelgate"]
