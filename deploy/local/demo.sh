#!/usr/bin/env bash
# Runs the whole system on this machine: server A and server B as separate processes (each with
# its own data dir, TLS certificate and signing key, pinned to each other), and two clients,
# alice and bob, who exchange contact codes and messages through both servers.
#
#   bash deploy/local/demo.sh            # build, run, print what was delivered, stop
#   KEEP=1 bash deploy/local/demo.sh     # leave servers and both clients' daemons running
#
# With KEEP=1, go on in another terminal, e.g.:
#   target/debug/client --home demo-data/alice send bob "still there?"
#   target/debug/client --home demo-data/bob inbox
# and stop everything with: kill $(cat demo-data/pids)
#
# Everything lives under ./demo-data (recreated on each run). Ports: A 7101-7103, B 7201-7203.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
DATA=$ROOT/demo-data
TIMEOUT=${TIMEOUT:-120}

echo "== building (first build takes a few minutes on 2 cores)"
cargo build --quiet --locked --bins
BIN=$ROOT/target/debug
server_a=$BIN/server-a server_b=$BIN/server-b client=$BIN/client

rm -rf "$DATA"
mkdir -p "$DATA"
pids=()
cleanup() {
  if [ -z "${KEEP:-}" ]; then
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
  fi
}
trap cleanup EXIT

val() { grep "^$2:" "$1" | cut -d' ' -f2; }

echo "== creating server A and server B"
T0=$(date +%s%3N)
$server_a init --data-dir "$DATA/a" --params-t0 "$T0" > "$DATA/a.out"
$server_b init --data-dir "$DATA/b" --params-t0 "$T0" > "$DATA/b.out"
$server_a set-peer --config "$DATA/a/config.toml" --peer-addr 127.0.0.1:7202 \
  --peer-pin "$(val "$DATA/b.out" cert_pin)" --peer-signing-key "$(val "$DATA/b.out" signing_key)"
$server_b set-peer --config "$DATA/b/config.toml" --peer-addr 127.0.0.1:7102 \
  --peer-pin "$(val "$DATA/a.out" cert_pin)" --peer-signing-key "$(val "$DATA/a.out" signing_key)"

echo "== starting both servers"
$server_a run --config "$DATA/a/config.toml" > "$DATA/a.log" 2>&1 &
pids+=($!)
$server_b run --config "$DATA/b/config.toml" > "$DATA/b.log" 2>&1 &
pids+=($!)
for port in 7103 7203; do
  for _ in $(seq 100); do
    if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then break; fi
    sleep 0.1
  done
done

echo "== creating clients alice and bob (each registers with both servers)"
for who in alice bob; do
  $client --home "$DATA/$who" init \
    --server-a 127.0.0.1:7101 --server-a-pin "$(val "$DATA/a.out" cert_pin)" \
    --server-a-key "$(val "$DATA/a.out" signing_key)" \
    --server-b 127.0.0.1:7201 --server-b-pin "$(val "$DATA/b.out" cert_pin)" \
    --server-b-key "$(val "$DATA/b.out" signing_key)" > "$DATA/$who.init"
done

echo "== exchanging contact codes"
alice_code=$($client --home "$DATA/alice" code | tail -n 1)
bob_code=$($client --home "$DATA/bob" code | tail -n 1)
$client --home "$DATA/alice" add bob $bob_code
$client --home "$DATA/bob" add alice $alice_code

echo "== sending"
$client --home "$DATA/alice" send bob "Hello Bob, nobody can tell we are talking."
$client --home "$DATA/alice" send bob "Second message from Alice."
$client --home "$DATA/bob" send alice "Hi Alice! Neither server knows whose mailbox this is."
long=$(for i in $(seq 1 12); do printf 'Part %02d of a long report that no single mailbox slot can hold, so it goes out over several rounds. ' "$i"; done)
$client --home "$DATA/bob" send alice "$long"
expected=4

echo "== both clients take part in every round (one write and k reads to each server)"
$client --home "$DATA/alice" run > "$DATA/alice.log" 2>&1 &
pids+=($!)
$client --home "$DATA/bob" run > "$DATA/bob.log" 2>&1 &
pids+=($!)

deadline=$((SECONDS + TIMEOUT))
got=0
while [ $SECONDS -lt $deadline ]; do
  sleep 2
  a=$($client --home "$DATA/alice" --json inbox | grep -o '"text"' | wc -l || true)
  b=$($client --home "$DATA/bob" --json inbox | grep -o '"text"' | wc -l || true)
  got=$((a + b))
  echo "   ... $got/$expected received"
  if [ "$got" -ge "$expected" ]; then break; fi
done

echo "== bob's inbox"
$client --home "$DATA/bob" inbox
echo "== alice's inbox"
$client --home "$DATA/alice" inbox
echo "== alice's status"
$client --home "$DATA/alice" status
metrics() {
  exec 3<>"/dev/tcp/127.0.0.1/$1"
  printf 'GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3
  grep -E '^mpm_(accounts|rounds_published_total|writes_accepted_total|commits_accepted_total|read_keys_answered_total|alarms_total)[{ ]' <&3 || true
  exec 3>&-
}
echo "== what server A saw (only DPF key shares, counts and public hashes; no slot, no sender, no text)"
metrics 7103 | sed 's/^/   /'
echo "== what server B saw"
metrics 7203 | sed 's/^/   /'
if [ -n "${KEEP:-}" ]; then
  printf '%s\n' "${pids[@]}" > "$DATA/pids"
  echo "servers and client daemons keep running; stop them with: kill \$(cat demo-data/pids)"
fi
echo "delivered $got/$expected messages"
[ "$got" -ge "$expected" ]
