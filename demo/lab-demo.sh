#!/usr/bin/env bash
# The README's main command: set up this machine, start a 3-node lab on the embedded SQLite
# store, make 2 pods per node through CNI and print the pod-to-pod matrix.
#
#   sudo bash demo/lab-demo.sh [RECIPE]        # RECIPE: a net-conf file (default recipes/vxlan.json)
#
# Environment: NAME (lab name, default demo), NODES (3), PODS (2), SKIP_INSTALL=1 (the
# machine is already set up), DOWN=1 (remove the lab at the end instead of keeping it).
# The lab watches a copy of the recipe: edit the copy and the nodes reload it live.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
    echo "lab-demo: network namespaces need root: sudo bash $0 $*" >&2
    exit 1
fi
[ -n "${SKIP_INSTALL:-}" ] || bash .ci/install

NAME=${NAME:-demo}
RECIPE=${1:-recipes/vxlan.json}
CONF=${TMPDIR:-/tmp}/flannel-ext-lab-$NAME.json
if command -v flannel-ext >/dev/null; then FE=(flannel-ext); else FE=(python3 -m flannel_ext); fi

"${FE[@]}" lab down --name "$NAME" >/dev/null   # idempotent: a clean slate, even after a crash
cp "$RECIPE" "$CONF"
echo "lab-demo: $RECIPE -> $CONF (edit it to hot-reload every node)"
status=0
"${FE[@]}" lab up --name "$NAME" --nodes "${NODES:-3}" --pods-per-node "${PODS:-2}" --net-conf "$CONF" || status=$?
"${FE[@]}" lab status --name "$NAME" || status=$?

if [ -n "${DOWN:-}" ]; then
    "${FE[@]}" lab down --name "$NAME"
else
    cat <<EOF

The lab keeps running. Next:
  flannel-ext lab check --name $NAME            # the matrix again (--json for machines)
  flannel-ext lab logs --name $NAME n1 --hooks  # node n1's hook trace
  cp recipes/host-gw.json $CONF                 # live switch of the dataplane, then: lab check --wait 10
  flannel-ext lab add-node --name $NAME         # or: lab rm-node --name $NAME n2
  flannel-ext lab down --name $NAME             # remove every namespace, process and file
EOF
fi
exit "$status"
