#!/bin/sh
# Creates tenant "demo" and writes a token for it to /tokens/demo.token.
set -eu
until [ -s /promgate/promgate-admin.token ]; do sleep 1; done
ADMIN=$(cat /promgate/promgate-admin.token)
until curl -sf http://promgate:9202/-/ready >/dev/null; do sleep 1; done
curl -s -H "Authorization: Bearer $ADMIN" -X POST http://promgate:9202/admin/v1/tenants -d '{"id": "demo"}' >/dev/null
curl -sf -H "Authorization: Bearer $ADMIN" -X POST http://promgate:9202/admin/v1/tenants/demo/tokens \
  -d '{"description": "compose demo sender"}' | sed -e 's/.*"token":"\([^"]*\)".*/\1/' > /tokens/demo.token
test -s /tokens/demo.token
