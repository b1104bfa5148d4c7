# CI configuration of the traefik stand-in (a live-warm app). Read with `ast`, never
# executed: top-level literal assignments only. Stateless: a failed upgrade rolls back the
# version only.
STATEFUL = False
HEALTH_PATH = "/ping"
HEALTH_OK = [200]
DEPLOY_TIMEOUT = 60
HTTP_TIMEOUT = 20
