# Image for docker-compose.dev.yml: the workers, beat and Flower of ccci-tasks.
FROM python:3.11-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends docker.io git tar busybox-static file \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md beat_schedule.py ./
COPY ccci_tasks ./ccci_tasks
COPY workers ./workers
COPY examples ./examples
RUN pip install --no-cache-dir .
ENV CCCI_STATE_DIR=/var/lib/ci-warm \
    CCCI_RECIPES_DIR=/var/lib/ccci/recipes \
    CCCI_TESTS_DIR=/app/examples/tests-recipes
CMD ["python", "-m", "workers.runs"]
