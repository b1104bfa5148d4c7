# CI configuration of the stubborn-html example recipe. Read with `ast`, never executed:
# top-level literal assignments only.
WARM_CANONICAL = True
HEALTH_PATH = "/"
HEALTH_OK = [200]
DEPLOY_TIMEOUT = 180
HTTP_TIMEOUT = 90
DEPS: list[str] = []
