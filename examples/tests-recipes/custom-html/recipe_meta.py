# CI configuration of the custom-html example recipe. Read with `ast`, never executed:
# top-level literal assignments only.
WARM_CANONICAL = True
HEALTH_PATH = "/"
HEALTH_OK = [200]
DEPLOY_TIMEOUT = 120
HTTP_TIMEOUT = 60
DEPS: list[str] = []
