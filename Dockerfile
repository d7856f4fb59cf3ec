# syntax=docker/dockerfile:1
# One image for every OpenClaw process; the command picks which one runs:
#   python -m services.gateway | services.router | services.executor | services.simulator
# Used by deploy/compose/compose.yaml and deploy/k8s/.

# An exact Python and Debian release, so a rebuild gets the same base. Pin the digest too where the build can
# resolve it (docker buildx imagetools inspect python:3.11.13-slim-bookworm), e.g. via Renovate.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src

# Dependencies get their own layer, rebuilt only when pyproject.toml changes: install the project from an
# empty skeleton, then remove the project itself and keep what it pulled in.
COPY pyproject.toml README.md ./
RUN mkdir openclaw services \
    && touch openclaw/__init__.py services/__init__.py \
    && pip install . \
    && pip uninstall -y openclaw \
    && rm -rf openclaw services build ./*.egg-info

COPY . .
# The gRPC stubs are generated, never committed: compile them before installing so they ship in the package,
# then prove the installed package (not /src: -I keeps the working directory off sys.path) imports them.
RUN python -m grpc_tools.protoc -Iproto --python_out=. --grpc_python_out=. --pyi_out=. proto/openclaw/v1/*.proto \
    && pip install --no-deps . \
    && python -I -c "import openclaw.v1.router_pb2_grpc, openclaw.v1.tasks_pb2, services"


FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    OPENCLAW_STORAGE_ROOT=/var/lib/openclaw/storage
# A fixed uid/gid (10001) so Kubernetes' runAsUser/fsGroup and compose's `user:` agree with the image.
# The storage directory is created owned by that user so a fresh named volume inherits the ownership.
RUN groupadd --system --gid 10001 openclaw \
    && useradd --system --uid 10001 --gid openclaw --home-dir /home/openclaw --create-home \
       --shell /usr/sbin/nologin openclaw \
    && mkdir -p /var/lib/openclaw/storage /etc/openclaw \
    && chown -R 10001:10001 /var/lib/openclaw
COPY --from=build /opt/venv /opt/venv
# One health check for whichever service the container runs (deploy/docker/healthcheck.py). It reads
# OPENCLAW_TLS_* like the services, so with mutual TLS on it presents the service's certificate.
COPY --chmod=0755 deploy/docker/healthcheck.py /usr/local/bin/openclaw-healthcheck
WORKDIR /home/openclaw
USER 10001:10001
# gateway HTTP/gRPC, simulator, router gRPC/metrics, executor ops port
EXPOSE 8080 50052 8090 50051 9102 9103
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 CMD ["/usr/local/bin/openclaw-healthcheck"]
STOPSIGNAL SIGTERM
CMD ["python", "-m", "services.gateway"]
