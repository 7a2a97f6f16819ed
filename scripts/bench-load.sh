#!/usr/bin/env bash
# Load benchmark: Portcullis vs nginx as a reverse proxy, on loopback.
#
#   scripts/bench-load.sh            # full: wrk -t1 -c32 -d10s, 3 runs per case, medians
#   scripts/bench-load.sh --quick    # the same with -d3s runs, for fast iteration
#   scripts/bench-load.sh --keep     # keep the temp dir (configs, logs, raw wrk output)
#   scripts/bench-load.sh --instructions
#                                    # Portcullis and the upstream under callgrind: user-space
#                                    # instructions per request for /open and /auth
#                                    # (deterministic, unlike req/s on a shared VM; needs
#                                    # valgrind, installed if missing)
#   scripts/bench-load.sh --cpu      # CPU time per request (user and system, from
#                                    # /proc/<pid>/stat) of each server process, per case
#   scripts/bench-load.sh --pairs 10 # the /auth : /open ratio inside one server: 10 pairs of
#                                    # 2 s runs, /open then /auth, one ratio per pair; mean
#                                    # and median (drift of the VM hits both halves of a pair)
#
# Cases, all proxying the same nginx upstream (`return 200 "ok\n"`):
#   nginx  nginx (1 worker) with keep-alive to the upstream
#   open   Portcullis, route /open, policy "public"
#   auth   Portcullis, route /auth, policy "api_key", rate limit on (never binding), audit on
# The servers (upstream, nginx proxy, Portcullis) are pinned to core 0, wrk to core 1.
# Runs are interleaved (nginx, open, auth, nginx, …) so drift hits every case alike. The report
# also gives each run's CPU time per request of the server under test and of the upstream.
# Any non-2xx response or socket error from wrk fails the benchmark.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD

duration=10s
keep=0
instructions=0
cpu=0
pairs=0
want_pairs=0
for arg in "$@"; do
    if [[ $want_pairs -eq 1 ]]; then
        [[ $arg =~ ^[1-9][0-9]*$ ]] || { echo "bench-load.sh: --pairs needs a count" >&2; exit 2; }
        pairs=$arg want_pairs=0
        continue
    fi
    case $arg in
        --pairs) want_pairs=1 ;;
        --quick) duration=3s ;;
        --keep) keep=1 ;;
        --instructions) instructions=1 ;;
        --cpu) cpu=1 ;;
        -h | --help) sed -n '2,25p' "$0"; exit 0 ;;
        *) echo "bench-load.sh: unknown argument: $arg" >&2; exit 2 ;;
    esac
done
runs=3
wrk_args=(-t1 -c32 "-d$duration")
server_cpu=0
client_cpu=1

say() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'bench-load.sh: error: %s\n' "$*" >&2; exit 1; }

# --- tools: install wrk / nginx-light only when missing --------------------------------------
need_pkgs=()
command -v wrk >/dev/null 2>&1 || need_pkgs+=(wrk)
command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || need_pkgs+=(nginx-light)
command -v curl >/dev/null 2>&1 || need_pkgs+=(curl)
command -v python3 >/dev/null 2>&1 || need_pkgs+=(python3)
[[ $instructions -eq 0 ]] || command -v callgrind_control >/dev/null 2>&1 || need_pkgs+=(valgrind)
if [[ ${#need_pkgs[@]} -gt 0 ]]; then
    say "installing missing packages: ${need_pkgs[*]}"
    sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need_pkgs[@]}"
fi
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
command -v taskset >/dev/null 2>&1 || die "taskset not found (package util-linux)"
[[ $(nproc --all) -ge 2 ]] || die "needs at least 2 cores (servers on core 0, wrk on core 1)"

# --- build -----------------------------------------------------------------------------------
say "cargo build --release --bin portcullis (fat LTO: may take minutes)"
cargo build --release --bin portcullis
bin=$root/target/release/portcullis

# --- temp dir, process cleanup ---------------------------------------------------------------
tmp=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-bench.XXXXXX")
chmod 755 "$tmp" # nginx workers may run as another user when started as root
pids=()
cleanup() {
    local rc=$?
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [[ $rc -ne 0 ]]; then
        # show what the servers said before the evidence is deleted
        for log in "$tmp"/upstream/error.log "$tmp"/proxy/error.log "$tmp"/portcullis.out "$tmp"/portcullis.err; do
            [[ -s $log ]] && { echo "--- $log (tail)" >&2; tail -n 20 "$log" >&2; }
        done
    fi
    if [[ $keep -eq 1 || $rc -ne 0 ]]; then
        echo "bench-load.sh: temp dir kept: $tmp" >&2
    else
        rm -rf "$tmp"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Free loopback ports: bind all to port 0 at once (so they differ), then release them.
read -r up_port proxy_port gw_port < <(python3 - <<'EOF'
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
EOF
)

# Fill a template from bench/ (@PREFIX@, @PORT@, @UPSTREAM_PORT@) into $tmp.
render() { # template, output, prefix, port
    sed -e "s|@PREFIX@|$3|g" -e "s|@PORT@|$4|g" -e "s|@UPSTREAM_PORT@|$up_port|g" "$1" >"$2"
}

# Wait until URL answers (any HTTP status), or die after ~10 s.
wait_http() { # url, name, pid
    for _ in $(seq 100); do
        kill -0 "$3" 2>/dev/null || die "$2 exited during startup"
        curl -s -o /dev/null "$1" && return 0
        sleep 0.1
    done
    die "$2 did not answer on $1"
}

# Start an nginx instance with its own prefix and config, pinned to the server core; any
# arguments after the port go before nginx's own (a wrapper such as valgrind).
start_nginx() { # name, template, port, [wrapper …]
    local prefix=$tmp/$1 extra=()
    mkdir -p "$prefix/tmp"
    render "$root/bench/$2" "$prefix/nginx.conf" "$prefix" "$3"
    "$nginx_bin" -t -q -p "$prefix" -c "$prefix/nginx.conf" -e "$prefix/error.log" ||
        die "nginx config $2 is invalid"
    # Under a wrapper, one process serves (no master and worker) so that the wrapper sees it.
    [[ $# -gt 3 ]] && extra=(-g "master_process off;")
    taskset -c "$server_cpu" "${@:4}" "$nginx_bin" -p "$prefix" -c "$prefix/nginx.conf" -e "$prefix/error.log" \
        "${extra[@]}" &
    pids+=($!)
    wait_http "http://127.0.0.1:$3/" "nginx ($1)" "$!"
}

# --- servers ---------------------------------------------------------------------------------
say "starting upstream nginx on 127.0.0.1:$up_port"
up_under=()
if [[ $instructions -eq 1 ]]; then
    # The upstream is counted too: it reads the identity headers Portcullis adds on /auth.
    up_under=(valgrind --tool=callgrind --instr-atstart=no "--log-file=$tmp/upstream.valgrind.log"
        "--callgrind-out-file=$tmp/upstream.callgrind.out")
fi
start_nginx upstream nginx-upstream.conf "$up_port" "${up_under[@]}"
up_pid=${pids[0]}

say "starting nginx proxy on 127.0.0.1:$proxy_port"
start_nginx proxy nginx-proxy.conf "$proxy_port"

say "starting portcullis on 127.0.0.1:$gw_port"
render "$root/bench/portcullis.toml" "$tmp/portcullis.toml" "$tmp" "$gw_port"
mkdir -p "$tmp/data"
under=()
if [[ $instructions -eq 1 ]]; then
    # Instrumentation starts off: only the measured wrk runs are counted.
    under=(valgrind --tool=callgrind --instr-atstart=no "--callgrind-out-file=$tmp/callgrind.out")
fi
PORTCULLIS_LOG=warn taskset -c "$server_cpu" "${under[@]}" "$bin" serve --config "$tmp/portcullis.toml" \
    --listen "127.0.0.1:$gw_port" --data-dir "$tmp/data" >"$tmp/portcullis.out" 2>"$tmp/portcullis.err" &
gw_pid=$!
pids+=("$gw_pid")
for _ in $(seq 600); do
    grep -q 'portcullis listening on http://' "$tmp/portcullis.out" 2>/dev/null && break
    kill -0 "$gw_pid" 2>/dev/null || die "portcullis exited during startup"
    sleep 0.1
done
grep -q "portcullis listening on http://127.0.0.1:$gw_port" "$tmp/portcullis.out" ||
    die "portcullis did not report listening on 127.0.0.1:$gw_port"
gw=http://127.0.0.1:$gw_port

# One API key, through the CLI.
key=$("$bin" keys create --name bench --scopes bench --json --server "$gw" --data-dir "$tmp/data" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["key"])') || die "keys create failed"
[[ -n $key ]] || die "keys create printed no key"

# --- cases -----------------------------------------------------------------------------------
cases=(nginx open auth)
declare -A url=(
    [nginx]=http://127.0.0.1:$proxy_port/
    [open]=$gw/open
    [auth]=$gw/auth
)
declare -A hdr=([nginx]="" [open]="" [auth]="X-API-Key: $key")

# curl once per case: must be 200 with the upstream's body.
for c in "${cases[@]}"; do
    h=()
    [[ -n ${hdr[$c]} ]] && h=(-H "${hdr[$c]}")
    out=$(curl -sS -o "$tmp/check-$c.body" -w '%{http_code}' "${h[@]}" "${url[$c]}") ||
        die "curl $c (${url[$c]}) failed"
    [[ $out == 200 && $(cat "$tmp/check-$c.body") == ok ]] ||
        die "case $c: expected 200 \"ok\" from ${url[$c]}, got $out: $(head -c 300 "$tmp/check-$c.body")"
done
# and the API-key route must refuse a request without the key
out=$(curl -s -o /dev/null -w '%{http_code}' "${url[auth]}")
[[ $out == 401 ]] || die "case auth without a key: expected 401, got $out"

# One wrk run; prints req/s. Fails on non-2xx responses or socket errors.
run_wrk() { # case, duration, output file
    local c=$1 h=()
    [[ -n ${hdr[$c]} ]] && h=(-H "${hdr[$c]}")
    taskset -c "$client_cpu" wrk -t1 -c32 "-d$2" "${h[@]}" "${url[$c]}" >"$3" 2>&1 ||
        die "wrk failed for $c: $(cat "$3")"
    if grep -q 'Non-2xx or 3xx responses' "$3"; then
        die "case $c: wrk saw non-2xx responses:"$'\n'"$(cat "$3")"
    fi
    if grep -q 'Socket errors' "$3"; then
        die "case $c: wrk saw socket errors:"$'\n'"$(cat "$3")"
    fi
    awk '/^Requests\/sec:/ { print $2; found = 1 } END { exit !found }' "$3" ||
        die "case $c: no Requests/sec in wrk output:"$'\n'"$(cat "$3")"
}

if [[ $instructions -eq 1 ]]; then
    say "instructions: Portcullis under callgrind, wrk -t1 -c32 -d10s per case after a 2 s warm-up"
    echo
    echo "## User-space instructions per request (callgrind, wrk -t1 -c32 -d10s)"
    echo
    echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (dirty tree)')"
    echo "- valgrind $(valgrind --version | sed 's/valgrind-//'); SHA-256 runs its portable code under valgrind (no SHA-NI), so /auth counts more than on the CPU"
    echo "- the upstream nginx runs under callgrind too (one process, no master): on /auth it also reads the identity headers"
    echo
    echo "| case | requests | Portcullis instructions | per request | upstream nginx instructions | per request |"
    echo "|---|---:|---:|---:|---:|---:|"
    n=0
    for c in open auth; do
        run_wrk "$c" 2s "$tmp/wrk-$c-warmup.txt" >/dev/null
        for pid in "$gw_pid" "$up_pid"; do
            callgrind_control -z "$pid" >/dev/null 2>&1
            callgrind_control -i on "$pid" >/dev/null 2>&1
        done
        run_wrk "$c" 10s "$tmp/wrk-$c.txt" >/dev/null
        for pid in "$gw_pid" "$up_pid"; do
            callgrind_control -i off "$pid" >/dev/null 2>&1
            callgrind_control -d "$pid" >/dev/null 2>&1
        done
        n=$((n + 1))
        reqs=$(awk '/requests in/ { print $1 }' "$tmp/wrk-$c.txt")
        ir=$(awk '/^totals:/ { print $2 }' "$tmp/callgrind.out.$n")
        up_ir=$(awk '/^totals:/ { print $2 }' "$tmp/upstream.callgrind.out.$n")
        [[ -n $reqs && -n $ir && -n $up_ir ]] || die "no counts for $c"
        printf '| %s | %s | %s | **%s** | %s | **%s** |\n' "$c" "$reqs" "$ir" "$((ir / reqs))" "$up_ir" "$((up_ir / reqs))"
    done
    exit 0
fi

if [[ $pairs -gt 0 ]]; then
    say "pairs: $pairs x (/open 2 s, /auth 2 s) against one server, after a 2 s warm-up"
    run_wrk auth 2s "$tmp/wrk-pairs-warmup.txt" >/dev/null
    ratios=()
    for i in $(seq "$pairs"); do
        o=$(run_wrk open 2s "$tmp/wrk-pair-$i-open.txt")
        a=$(run_wrk auth 2s "$tmp/wrk-pair-$i-auth.txt")
        r=$(awk -v o="$o" -v a="$a" 'BEGIN { printf "%.3f", a / o }')
        printf '    pair %2d  /open %10s  /auth %10s  ratio %s\n' "$i" "$o" "$a" "$r" >&2
        ratios+=("$r")
    done
    echo
    echo "## /auth : /open inside one server, $pairs pairs of 2 s runs"
    echo
    echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (dirty tree)')"
    printf '%s\n' "${ratios[@]}" | sort -g | awk '{ v[NR] = $1; s += $1 } END {
        printf "- ratio: mean **%.3f**, median %.3f, min %.3f, max %.3f\n", s / NR, v[int((NR + 1) / 2)], v[1], v[NR]
    }'
    exit 0
fi

# The nginx workers are the children of the two masters started above.
up_worker=$(pgrep -P "${pids[0]}" | head -1)
proxy_worker=$(pgrep -P "${pids[1]}" | head -1)
[[ -n $up_worker && -n $proxy_worker ]] || die "cannot find the nginx worker processes"

if [[ $cpu -eq 1 ]]; then
    ticks() { awk '{ print $14, $15 }' "/proc/$1/stat"; } # utime stime, in clock ticks
    hz=$(getconf CLK_TCK)
    say "cpu: wrk -t1 -c32 -d5s per case after a 2 s warm-up; CPU per request from /proc/<pid>/stat"
    echo
    echo "## CPU per request (µs, user + system), wrk -t1 -c32 -d5s"
    echo
    echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (dirty tree)')"
    echo
    echo "| case | req/s | upstream nginx | nginx proxy | portcullis | all three |"
    echo "|---|---:|---:|---:|---:|---:|"
    for c in "${cases[@]}"; do
        run_wrk "$c" 2s "$tmp/wrk-$c-warmup.txt" >/dev/null
        read -r u1 s1 < <(ticks "$up_worker")
        read -r u2 s2 < <(ticks "$proxy_worker")
        read -r u3 s3 < <(ticks "$gw_pid")
        r=$(run_wrk "$c" 5s "$tmp/wrk-$c.txt")
        read -r v1 t1 < <(ticks "$up_worker")
        read -r v2 t2 < <(ticks "$proxy_worker")
        read -r v3 t3 < <(ticks "$gw_pid")
        n=$(awk '/requests in/ { print $1 }' "$tmp/wrk-$c.txt")
        awk -v c="$c" -v r="$r" -v n="$n" -v hz="$hz" \
            -v a="$((v1 - u1))" -v b="$((t1 - s1))" -v d="$((v2 - u2))" -v e="$((t2 - s2))" \
            -v f="$((v3 - u3))" -v g="$((t3 - s3))" 'BEGIN {
                k = 1e6 / hz / n
                printf "| %s | %.0f | %.2f + %.2f | %.2f + %.2f | %.2f + %.2f | %.2f |\n", c, r,
                    a * k, b * k, d * k, e * k, f * k, g * k, (a + b + d + e + f + g) * k
            }'
    done
    exit 0
fi

# CPU time (ns) a process has run, all its threads: the first field of each schedstat.
cpu_ns() {
    local t=0 run _ f
    for f in /proc/"$1"/task/*/schedstat; do
        read -r run _ <"$f" || continue
        t=$((t + run))
    done
    echo "$t"
}
declare -A server=([nginx]=$proxy_worker [open]=$gw_pid [auth]=$gw_pid)

say "load: wrk ${wrk_args[*]}, $runs runs per case, interleaved (2 s warm-up before each case run)"
declare -A rps reqs up_ns srv_ns # req/s; requests, upstream and server CPU (ns) per run
for r in $(seq "$runs"); do
    for c in "${cases[@]}"; do
        run_wrk "$c" 2s "$tmp/wrk-$c-warmup-$r.txt" >/dev/null
        u0=$(cpu_ns "$up_worker") s0=$(cpu_ns "${server[$c]}")
        rps[$c,$r]=$(run_wrk "$c" "$duration" "$tmp/wrk-$c-$r.txt")
        u1=$(cpu_ns "$up_worker") s1=$(cpu_ns "${server[$c]}")
        reqs[$c,$r]=$(awk '/requests in/ { print $1 }' "$tmp/wrk-$c-$r.txt")
        up_ns[$c,$r]=$((u1 - u0)) srv_ns[$c,$r]=$((s1 - s0))
        printf '    run %d %-5s %12s req/s\n' "$r" "$c" "${rps[$c,$r]}" >&2
    done
done

# Portcullis must not have logged anything at warn level or above during the run.
if [[ -s $tmp/portcullis.err ]]; then
    echo "bench-load.sh: warning: portcullis wrote to stderr:" >&2
    tail -n 20 "$tmp/portcullis.err" >&2
fi

# --- report ----------------------------------------------------------------------------------
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
declare -A med
for c in "${cases[@]}"; do
    vals=()
    for r in $(seq "$runs"); do vals+=("${rps[$c,$r]}"); done
    med[$c]=$(median "${vals[@]}")
done
pct() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", 100 * a / b }'; }
open_vs_nginx=$(pct "${med[open]}" "${med[nginx]}")
auth_vs_open=$(pct "${med[auth]}" "${med[open]}")

declare -A label=(
    [nginx]="nginx proxy (keep-alive upstream)"
    [open]="portcullis /open (public)"
    [auth]="portcullis /auth (api_key, rate limit, audit)"
)
echo
echo "## Load: wrk ${wrk_args[*]}, $runs runs, median req/s"
echo
echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (dirty tree)')"
echo "- nproc: $(nproc)"
echo "- CPU: $(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1)"
echo "- servers (upstream, nginx proxy, portcullis) on core $server_cpu, wrk on core $client_cpu; nginx $("$nginx_bin" -v 2>&1 | sed 's|.*nginx/||')"
echo
echo "| case | run 1 | run 2 | run 3 | median |"
echo "|---|---:|---:|---:|---:|"
for c in "${cases[@]}"; do
    printf '| %s | %s | %s | %s | **%s** |\n' "${label[$c]}" "${rps[$c,1]}" "${rps[$c,2]}" "${rps[$c,3]}" "${med[$c]}"
done
echo
verdict() { awk -v v="$1" -v t="$2" 'BEGIN { print (v >= t) ? "met" : "NOT met" }'; }
echo "- open / nginx: **$open_vs_nginx %** (target ≥ 100 %: $(verdict "$open_vs_nginx" 100))"
echo "- auth / open: **$auth_vs_open %** (target ≥ 95 %: $(verdict "$auth_vs_open" 95))"

# Where each case's time went: CPU time per request of the server under test and of the
# upstream, from the same runs. (Both drift with the VM's speed, like req/s; and the upstream
# does more in /auth than in /open, as it reads the identity headers Portcullis adds.)
echo
echo "### CPU per request in the same runs (µs, schedstat run time)"
echo
echo "Server: the nginx proxy worker, or Portcullis with all its threads."
echo
echo "| case | server, runs 1 / 2 / 3 | upstream, runs 1 / 2 / 3 | server, median | upstream, median |"
echo "|---|---:|---:|---:|---:|"
for c in "${cases[@]}"; do
    sus=() uus=()
    for r in $(seq "$runs"); do
        sus+=("$(awk -v s="${srv_ns[$c,$r]}" -v n="${reqs[$c,$r]}" 'BEGIN { printf "%.2f", s / n / 1000 }')")
        uus+=("$(awk -v s="${up_ns[$c,$r]}" -v n="${reqs[$c,$r]}" 'BEGIN { printf "%.2f", s / n / 1000 }')")
    done
    printf '| %s | %s / %s / %s | %s / %s / %s | **%s** | **%s** |\n' "${label[$c]}" "${sus[@]}" "${uus[@]}" \
        "$(median "${sus[@]}")" "$(median "${uus[@]}")"
done
echo
# What the audit trail stored for the /auth runs (blocks the writer has committed so far).
python3 - "$tmp/data/portcullis.db" <<'EOF2' || echo "- audit storage: could not be read"
import sqlite3, sys
db = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
n, size = db.execute("SELECT coalesce(sum(last_seq - first_seq + 1), 0), coalesce(sum(length(events)), 0) FROM audit_blocks").fetchone()
if n:
    print(f"- audit storage: {n:,} events in {size:,} bytes of blocks ({size / n:.0f} bytes per event)")
EOF2
