# CI configuration of the keycloak stand-in (a live-warm app). Read with `ast`, never
# executed: top-level literal assignments only. Not a data-warm canonical: it is reconciled
# live by `warm_reconcile keycloak`, with a volume snapshot before each upgrade.
STATEFUL = True
HEALTH_PATH = "/health/ready"
HEALTH_OK = [200]
DEPLOY_TIMEOUT = 60
HTTP_TIMEOUT = 20
