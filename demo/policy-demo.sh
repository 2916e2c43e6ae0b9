#!/usr/bin/env bash
# The talk's policy demo (slides 13-14) on a 3-node lab: three frontends, a client and
# Redis in namespace `demo`; a NetworkPolicy lets only the frontends reach Redis on 6379.
#
#   sudo bash demo/policy-demo.sh [RECIPE]     # RECIPE: a net-conf file (default recipes/vxlan.json)
#
# It prints the 6379 table three times: before (all allowed), with
# demo/policy/redis-allow-frontend.yaml applied (frontends -> redis allowed, client ->
# redis blocked, every other pair unchanged), and after deleting it (access restored).
# Each table is checked against the expected one, so the script fails if the dataplane
# does not do what the slide says. Environment: NAME (lab name, default policydemo),
# SKIP_INSTALL=1 (the machine is already set up), KEEP=1 (leave the lab running).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
    echo "policy-demo: network namespaces need root: sudo bash $0 $*" >&2
    exit 1
fi
[ -n "${SKIP_INSTALL:-}" ] || bash .ci/install

NAME=${NAME:-policydemo}
RECIPE=${1:-recipes/vxlan.json}
if command -v flannel-ext >/dev/null; then FE=(flannel-ext); else FE=(python3 -m flannel_ext); fi
WORK=$(mktemp -d)
cleanup() {
    [ -n "${KEEP:-}" ] || "${FE[@]}" lab down --name "$NAME" >/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

# The expected tables, as `lab check` prints them (. allowed, X blocked, - self).
PODS="demo/client demo/frontend-1 demo/frontend-2 demo/frontend-3 demo/redis"
table() {  # table REDIS_FROM_CLIENT: every pod reaches redis; the client only if $1 is "."
    echo "- $PODS"
    echo "demo/client     -  X  X  X  $1"
    for f in 1 2 3; do
        row=""; for g in 1 2 3; do if [ "$f" = "$g" ]; then row="$row -"; else row="$row X"; fi; done
        echo "demo/frontend-$f X $row ."
    done
    echo "demo/redis      X  X  X  X  -"
}
table . > "$WORK/open.txt"
table X > "$WORK/policy.txt"
check() {  # check TITLE EXPECTED
    echo; echo "== $1"
    "${FE[@]}" lab check --name "$NAME" --port 6379 --protocol TCP --expect "$2" --wait 10
}

"${FE[@]}" lab down --name "$NAME" >/dev/null   # idempotent: a clean slate, even after a crash
echo "policy-demo: 3 nodes on $RECIPE, pods from demo/policy/pods.yaml"
"${FE[@]}" lab up --name "$NAME" --nodes 3 --net-conf "$RECIPE" --pods demo/policy/pods.yaml --policy nftables
"${FE[@]}" lab status --name "$NAME" | sed -n '/^policy:/,$p'

check "before the policy: every pod reaches redis:6379 (only redis serves 6379)" "$WORK/open.txt"
echo; echo "== kubectl apply -f demo/policy/redis-allow-frontend.yaml (here: lab apply)"
"${FE[@]}" lab apply --name "$NAME" -f demo/policy/redis-allow-frontend.yaml
check "with the policy: frontends -> redis allowed, client -> redis blocked" "$WORK/policy.txt"
echo; echo "== lab delete -f demo/policy/redis-allow-frontend.yaml"
"${FE[@]}" lab delete --name "$NAME" -f demo/policy/redis-allow-frontend.yaml
check "policy removed: access restored" "$WORK/open.txt"
echo; echo "policy-demo: all three tables as expected"
