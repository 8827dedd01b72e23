# Sourced by scripts/cluster-bench and scripts/chaos: release nodes of one cluster sharing
# the private NATS and PostgreSQL of scripts/with-nats and scripts/with-postgres.
# Needs BIN (release binaries), WORK (a scratch directory), ADMIN (an admin token), LEASE
# (lease seconds). Sets PIDS (node processes) and URLS (their base URLs, comma-separated).
PIDS=()
stop_nodes() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
}

# cluster_settled N: every node of URLS lists N members and has no unit left to move (and,
# with OWNED=1, the members own every region between them).
cluster_settled() {
  local u
  for u in ${URLS//,/ }; do
    curl -fs -m 5 -H "Authorization: Bearer $ADMIN" "$u/admin/v1/stats" | python3 -c "
import json,sys; d=json.load(sys.stdin); n=d['nodes']
ok = len(n)==$1 and all(x['units_moving']==0 for x in n)
ok = ok and (${OWNED:-0} == 0 or sum(x['regions_owned'] for x in n) == 33791)
sys.exit(0 if ok else 1)" || return 1
  done
}

# start_nodes N NAMESPACE: N nodes on fresh ports and a fresh database named NAMESPACE; waits
# until the cluster has settled. DB is the database's URL.
start_nodes() {
  local n=$1 ns=$2 i
  DB=$(python3 - "$HEYBLUE_TEST_POSTGRES_URL" "$ns" <<'PY'
import sys, subprocess
url, ns = sys.argv[1], sys.argv[2]
subprocess.run(["psql", url, "-qc", f"CREATE DATABASE {ns}"], check=True)
print(url.rsplit("/", 1)[0] + "/" + ns)
PY
)
  URLS=""
  for i in $(seq "$n"); do
    mkdir -p "$WORK/$ns-n$i"
    (cd "$WORK/$ns-n$i" && HEYBLUE__LIMITS__MESSAGES_PER_S=1000 HEYBLUE__LIMITS__MESSAGES_BURST=1000 \
      HEYBLUE__CLUSTER__NAMESPACE="$ns" HEYBLUE__CLUSTER__LEASE_TTL_S="$LEASE" \
      HEYBLUE__CLUSTER__MOVES_PER_ROUND=1000 RUST_LOG=warn \
      exec "$BIN/heyblue" serve --bind 127.0.0.1:0 --database-url "$DB" \
        --cluster-url "$HEYBLUE_TEST_NATS_URL" --node-id "n$i" --advertise-url http://127.0.0.1:0 \
        >"$WORK/$ns-n$i/out" 2>"$WORK/$ns-n$i/log") &
    PIDS+=($!)
    for _ in $(seq 100); do grep -q listening "$WORK/$ns-n$i/out" 2>/dev/null && break; sleep 0.1; done
    URLS+="${URLS:+,}$(sed -n 's/listening on //p' "$WORK/$ns-n$i/out")"
  done
  for _ in $(seq 300); do cluster_settled "$n" && return; sleep 0.2; done
  echo "the cluster did not settle" >&2; exit 1
}
