#!/usr/bin/env bash
# A/B load comparison of Portcullis builds (or configs), interleaved on one upstream.
#
#   scripts/bench-ab.sh [--rounds N] [--duration D] NAME=BINARY[,CONFIG] NAME=BINARY[,CONFIG] ...
#
#   e.g.  cp target/release/portcullis /tmp/before   # build, copy, change, build again
#         scripts/bench-ab.sh before=/tmp/before after=target/release/portcullis
#
# One nginx upstream (`bench/nginx-upstream.conf`) and one Portcullis server per NAME, each
# with its own data dir and `CONFIG` (default `bench/portcullis.toml`: /open public, /auth
# API key + rate limit + audit), all pinned to core 0; wrk (-t1 -c32) on core 1. After a
# warm-up, N rounds (default 10) of: for each server, /open for D (default 3s), then /auth.
# Per run: req/s, the server's CPU time per request (schedstat, all threads), the upstream's,
# and the server's SQLite threads'. Per server: medians over the rounds of /auth : /open
# (req/s) and of /auth − /open (µs of server CPU per request), the measure of what
# authentication and the audit trail cost. Interleaving puts every server through the same
# drift of a shared VM; a difference counts only if it holds with the servers listed in the
# other order too. Needs wrk and nginx (scripts/bench-load.sh installs them).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD

rounds=10
duration=3s
specs=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --rounds) rounds=${2:?--rounds needs a count}; shift 2 ;;
        --duration) duration=${2:?--duration needs a value such as 3s}; shift 2 ;;
        -h | --help) sed -n '2,20p' "$0"; exit 0 ;;
        *=*) specs+=("$1"); shift ;;
        *) echo "bench-ab.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
done
[[ ${#specs[@]} -ge 1 ]] || { echo "bench-ab.sh: name at least one NAME=BINARY" >&2; exit 2; }
[[ $rounds =~ ^[1-9][0-9]*$ ]] || { echo "bench-ab.sh: --rounds needs a count" >&2; exit 2; }

die() { printf 'bench-ab.sh: error: %s\n' "$*" >&2; exit 1; }
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
[[ -x $nginx_bin ]] || die "nginx not found (scripts/bench-load.sh installs nginx-light)"
command -v wrk >/dev/null || die "wrk not found (scripts/bench-load.sh installs it)"
[[ $(nproc --all) -ge 2 ]] || die "needs at least 2 cores (servers on core 0, wrk on core 1)"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-ab.XXXXXX")
chmod 755 "$tmp" # nginx workers may run as another user when started as root
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

up_port=$(free_port)
mkdir -p "$tmp/upstream/tmp"
sed -e "s|@PREFIX@|$tmp/upstream|g" -e "s|@PORT@|$up_port|g" bench/nginx-upstream.conf >"$tmp/upstream/nginx.conf"
taskset -c 0 "$nginx_bin" -p "$tmp/upstream" -c "$tmp/upstream/nginx.conf" -e "$tmp/upstream/error.log" &
pids+=($!)
up_worker=
for _ in $(seq 50); do
    up_worker=$(pgrep -P "${pids[0]}" | head -n1 || true)
    [[ -n $up_worker ]] && curl -s -o /dev/null "http://127.0.0.1:$up_port/" && break
    sleep 0.1
done
[[ -n $up_worker ]] || die "the upstream nginx did not start"

names=()
declare -A url pid key
for spec in "${specs[@]}"; do
    name=${spec%%=*}
    IFS=, read -r bin config <<<"${spec#*=}"
    config=${config:-$root/bench/portcullis.toml}
    [[ $name =~ ^[A-Za-z0-9_-]+$ ]] || die "name '$name': letters, digits, - and _ only"
    [[ -z ${pid[$name]:-} ]] || die "name '$name' given twice"
    [[ -x $bin ]] || die "$name: $bin is not an executable"
    port=$(free_port)
    mkdir -p "$tmp/$name/data"
    sed -e "s|@UPSTREAM_PORT@|$up_port|g" "$config" >"$tmp/$name/portcullis.toml"
    PORTCULLIS_LOG=warn taskset -c 0 "$bin" serve --config "$tmp/$name/portcullis.toml" \
        --listen "127.0.0.1:$port" --data-dir "$tmp/$name/data" >"$tmp/$name/out" 2>"$tmp/$name/err" &
    pids+=($!)
    pid[$name]=$!
    for _ in $(seq 600); do
        grep -q 'portcullis listening on http://' "$tmp/$name/out" 2>/dev/null && break
        kill -0 "${pid[$name]}" 2>/dev/null || die "$name exited during startup: $(tail -n5 "$tmp/$name/err")"
        sleep 0.1
    done
    url[$name]=http://127.0.0.1:$port
    key[$name]=$("$bin" keys create --name bench --scopes bench --json --server "${url[$name]}" \
        --data-dir "$tmp/$name/data" | python3 -c 'import json, sys; print(json.load(sys.stdin)["key"])') ||
        die "$name: keys create failed"
    names+=("$name")
done

# CPU time (ns) of a process's threads, all or those named like SQLite's workers.
cpu_ns() { # pid, [thread name]
    local total=0 t
    for t in /proc/"$1"/task/*; do
        [[ -z ${2:-} || $(cat "$t/comm") == "$2" ]] || continue
        total=$((total + $(cut -d' ' -f1 "$t/schedstat")))
    done
    echo "$total"
}

# One wrk run: prints "name case req/s server-µs/req upstream-µs/req sqlite-µs/req".
run() { # name, case
    local n=$1 c=$2 h=() out
    [[ $c == auth ]] && h=(-H "X-API-Key: ${key[$n]}")
    local s0 u0 q0 s1 u1 q1
    s0=$(cpu_ns "${pid[$n]}") u0=$(cpu_ns "$up_worker") q0=$(cpu_ns "${pid[$n]}" sqlx-sqlite-wor)
    out=$(taskset -c 1 wrk -t1 -c32 "-d$duration" "${h[@]}" "${url[$n]}/$c") || die "wrk failed: $out"
    s1=$(cpu_ns "${pid[$n]}") u1=$(cpu_ns "$up_worker") q1=$(cpu_ns "${pid[$n]}" sqlx-sqlite-wor)
    if grep -q 'Non-2xx or 3xx responses\|Socket errors' <<<"$out"; then
        die "$n $c: wrk saw errors:"$'\n'"$out"
    fi
    python3 - "$n" "$c" "$out" "$s0" "$s1" "$u0" "$u1" "$q0" "$q1" <<'EOF'
import re, sys
n, c, out, *ns = sys.argv[1:]
s0, s1, u0, u1, q0, q1 = map(int, ns)
reqs = int(re.search(r"^\s*(\d+) requests in", out, re.M).group(1))
rps = float(re.search(r"^Requests/sec:\s*([\d.]+)", out, re.M).group(1))
print(f"{n} {c} {rps:.0f} {(s1 - s0) / 1e3 / reqs:.2f} {(u1 - u0) / 1e3 / reqs:.2f} {(q1 - q0) / 1e3 / reqs:.3f}")
EOF
}

echo "## A/B: ${names[*]} — $rounds rounds of /open and /auth, wrk -t1 -c32 -d$duration each"
echo
for n in "${names[@]}"; do run "$n" open >/dev/null; run "$n" auth >/dev/null; done # warm-up
echo '```'
echo "name case req/s server-µs/req upstream-µs/req sqlite-µs/req"
for _ in $(seq "$rounds"); do
    for n in "${names[@]}"; do run "$n" open; run "$n" auth; done
done | tee "$tmp/runs"
echo '```'
echo
python3 - "$tmp/runs" <<'EOF'
import collections, statistics as st, sys
runs = collections.defaultdict(list)
order = []
for line in open(sys.argv[1]):
    n, c, *v = line.split()
    runs[n, c].append(list(map(float, v)))
    if n not in order:
        order.append(n)
print("| name | /open req/s | /auth req/s | /auth : /open | server µs/req /open | /auth | /auth − /open | upstream /auth − /open | SQLite threads µs/req (/auth) |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
med = st.median
for n in order:
    o, a = runs[n, "open"], runs[n, "auth"]
    print(f"| {n} | {med(x[0] for x in o):.0f} | {med(x[0] for x in a):.0f} "
          f"| {med(y[0] / x[0] for x, y in zip(o, a)):.3f} "
          f"| {med(x[1] for x in o):.2f} | {med(x[1] for x in a):.2f} "
          f"| **{med(y[1] - x[1] for x, y in zip(o, a)):.2f}** "
          f"| {med(y[2] - x[2] for x, y in zip(o, a)):+.2f} | {med(x[3] for x in a):.3f} |")
EOF
