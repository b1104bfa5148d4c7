export APP_PY_VERSION=v1
export PG_ENTRYPOINT_VERSION=v1
export SCHEMA_VERSION=v2

# abra app cmd <domain> app count_cards
count_cards() {
  python3 -c 'print("see GET /")'
}
