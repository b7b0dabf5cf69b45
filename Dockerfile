# clinicbot: one image for the web app, the scheduler, the migration job and the rasa-sdk action server.
# Dependencies are pinned by requirements.lock (regenerate with `python -m tests.ops.lockfile`).

FROM python:3.11.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app
# Dependencies first, in their own layer: a code change does not reinstall them.
COPY requirements.lock ./
RUN pip install -r requirements.lock
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY actions ./actions
COPY scheduler ./scheduler
COPY dialogues ./dialogues
# Editable, so templates, static files and dialogues are read from /app as in development.
RUN pip install --no-deps -c requirements.lock -e .

FROM python:3.11.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/venv/bin:$PATH \
    CLINICBOT_DATA_DIR=/app/var CLINICBOT_DIALOGUES_DIR=/app/dialogues
RUN groupadd --system --gid 10001 clinicbot \
 && useradd --system --uid 10001 --gid clinicbot --home-dir /app --shell /usr/sbin/nologin clinicbot
COPY --from=build /opt/venv /opt/venv
COPY --from=build --chown=root:root /app /app
RUN mkdir -p /app/var && chown clinicbot:clinicbot /app/var
WORKDIR /app
USER clinicbot:clinicbot
# Train the classifier into the image: every replica starts with the same model, at once.
RUN clinicbot train
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
ENTRYPOINT ["clinicbot"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
