# Versions of the Docker configs: bump one whenever its file changes (configs are immutable).
export APP_PY_VERSION=v1
export DB_ENTRYPOINT_VERSION=v1
export MIGRATIONS_VERSION=v2
