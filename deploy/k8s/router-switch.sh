#!/usr/bin/env bash
# Point the router Service at one colour: deploy/k8s/router-switch.sh <blue|green> [namespace]
# Refuses unless every replica of the target colour is rolled out and ready; prints how to switch back.
# Procedure and checks around it: docs/runbook.md, "Blue-green router release".
set -euo pipefail

color=${1:-}
ns=${2:-openclaw}
case "$color" in
  blue | green) ;;
  *) echo "usage: $0 <blue|green> [namespace]" >&2; exit 2 ;;
esac

current=$(kubectl -n "$ns" get service router -o jsonpath='{.spec.selector.openclaw/color}')
if [[ "$current" == "$color" ]]; then
  echo "router already serves $color"
  exit 0
fi

kubectl -n "$ns" rollout status "deployment/router-$color" --timeout=120s
ready=$(kubectl -n "$ns" get "deployment/router-$color" -o jsonpath='{.status.readyReplicas}')
if [[ -z "$ready" || "$ready" -lt 1 ]]; then
  echo "router-$color has no ready replicas; not switching" >&2
  exit 1
fi

kubectl -n "$ns" patch service router --type merge -p "{\"spec\":{\"selector\":{\"openclaw/color\":\"$color\"}}}"
echo "router now serves $color ($ready ready replicas); was ${current:-unset}. Roll back: $0 ${current:-blue} $ns"
