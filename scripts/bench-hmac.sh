#!/usr/bin/env bash
# Signed routes under load, against the no-auth route, on one core as scripts/bench-load.sh
# measures the API-key route:
#
#   scripts/bench-hmac.sh [--duration 10s] [--runs 3] [--two-cores] [BINARY]
#   CASES="open hmac_get" scripts/bench-hmac.sh …   # only these cases
#   CONNS=128 scripts/bench-hmac.sh …                # wrk -c128 instead of -c32
#
# One nginx upstream (`bench/nginx-upstream.conf`) and Portcullis with `bench/hmac.toml`
# (`/open` public; `/hmac`, `/sigv4`, `/httpsig` signed, scope `bench`; audit on), both
# pinned to core 0; wrk -t1 -c32 on core 1 (--two-cores: both on both cores, wrk -t2).
# Cases, interleaved per run: `/open` GET and POST with a 1 KiB body; the native scheme GET and
# POST with a 1 KiB body; SigV4 GET; RFC 9421 (hmac-sha256) GET. Each signed case is set
# against the `/open` case with the same method and body. Signed requests are made before
# each run by `bench/sign_requests.py` (every one distinct: signed requests are single-use,
# and the gateway checks and spends each nonce or signature durably) and sent once each by
# `bench/signed.lua`. Medians of req/s, each signed case as a share of `/open`, and
# Portcullis's CPU time (user + system, all its threads, from /proc/<pid>/stat) per request.
# Needs wrk and nginx (scripts/bench-load.sh installs them) and a release build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD

duration=10s
runs=3
two_cores=0
bin=$root/target/release/portcullis
while [[ $# -gt 0 ]]; do
    case $1 in
        --duration) duration=${2:?}; shift 2 ;;
        --runs) runs=${2:?}; shift 2 ;;
        --two-cores) two_cores=1; shift ;;
        -h | --help) sed -n '2,19p' "$0"; exit 0 ;;
        *) bin=$1; shift ;;
    esac
done
die() { printf 'bench-hmac.sh: error: %s\n' "$*" >&2; exit 1; }
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
[[ -x $nginx_bin ]] || die "nginx not found (scripts/bench-load.sh installs nginx-light)"
command -v wrk >/dev/null || die "wrk not found (scripts/bench-load.sh installs it)"
[[ -x $bin ]] || die "$bin is not an executable (cargo build --release)"
[[ $(nproc --all) -ge 2 ]] || die "needs at least 2 cores (servers on core 0, wrk on core 1)"
[[ $duration =~ ^([0-9]+)s$ ]] || die "--duration takes seconds, e.g. 5s"
secs=${BASH_REMATCH[1]}

server_cores=0 wrk_cores=1 wrk_threads=1
if [[ $two_cores == 1 ]]; then server_cores=0,1 wrk_cores=0,1 wrk_threads=2; fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-hmac.XXXXXX")
chmod 755 "$tmp"
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
json() { python3 -c "import json, sys; print(json.load(sys.stdin)['$1'])"; }

up_port=$(free_port)
mkdir -p "$tmp/upstream/tmp" "$tmp/data"
sed -e "s|@PREFIX@|$tmp/upstream|g" -e "s|@PORT@|$up_port|g" bench/nginx-upstream.conf >"$tmp/upstream/nginx.conf"
taskset -c "$server_cores" "$nginx_bin" -p "$tmp/upstream" -c "$tmp/upstream/nginx.conf" -e "$tmp/upstream/error.log" &
pids+=($!)
for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$up_port/" && break; sleep 0.1; done

port=$(free_port)
host=127.0.0.1:$port
base=http://$host
sed -e "s|@UPSTREAM_PORT@|$up_port|g" bench/hmac.toml >"$tmp/portcullis.toml"
PORTCULLIS_LOG=warn taskset -c "$server_cores" "$bin" serve --config "$tmp/portcullis.toml" \
    --listen "$host" --data-dir "$tmp/data" >"$tmp/out" 2>"$tmp/err" &
pids+=($!)
server_pid=$!
for _ in $(seq 600); do
    grep -q 'portcullis listening on http://' "$tmp/out" 2>/dev/null && break
    sleep 0.1
done
cli() { "$bin" "$@" --server "$base" --data-dir "$tmp/data" --json; }
cred=$(cli hmac create --name bench --scopes bench)
key_id=$(echo "$cred" | json key_id)
secret=$(echo "$cred" | json secret)
head -c 1024 /dev/zero | tr '\0' 'x' >"$tmp/body1k"
cat >"$tmp/post.lua" <<'LUA'
local f = assert(io.open(os.getenv("BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
LUA

# Enough distinct signed requests for one run of one case (60k/s is above any rate seen here).
count=$((secs * 60000))
sign() { # SCHEME [BODY_FILE]
    python3 bench/sign_requests.py "$1" "$count" "$host" "$key_id" "$secret" "${2:-}" >"$tmp/signed"
}
sign hmac
first=$(head -1 "$tmp/signed")
IFS=$'\t' read -r -a f <<<"$first"
[[ $(curl -s -o /dev/null -w '%{http_code}' -H "${f[2]}: ${f[3]}" -H "${f[4]}: ${f[5]}" \
    -H "${f[6]}: ${f[7]}" -H "${f[8]}: ${f[9]}" "$base${f[1]}") == 200 ]] ||
    die "a signed request does not open /hmac"

rate() { awk '/Requests\/sec/ {print $2}'; }
# Portcullis's CPU time so far (user + system, all its threads), in clock ticks.
ticks() { awk '{print $14 + $15}' "/proc/$server_pid/stat"; }
hz=$(getconf CLK_TCK)
run() { # NAME, wrk args... → "REQ/S CPU_US_PER_REQUEST"
    local name=$1 out t0 t1 n
    shift
    t0=$(ticks)
    out=$(taskset -c "$wrk_cores" wrk "-t$wrk_threads" "-c${CONNS:-32}" "-d$duration" "$@" 2>&1) || die "wrk failed for $name: $out"
    t1=$(ticks)
    if grep -q 'Non-2xx\|ran out' <<<"$out"; then die "$name: refused or repeated requests: $out"; fi
    n=$(awk '/requests in/ {print $1}' <<<"$out")
    echo "$(echo "$out" | rate) $(python3 -c "print(f'{($t1 - $t0) * 1e6 / $hz / $n:.1f}')")"
}
declare -A results cpu
# CASES="open hmac_get" runs only those (e.g. to profile one case).
read -r -a cases <<<"${CASES:-open open_post_1k hmac_get hmac_post_1k sigv4_get httpsig_get}"
for i in $(seq "$runs"); do
    for c in "${cases[@]}"; do
        case $c in
            open) r=$(run open "$base/open/") ;;
            open_post_1k) r=$(BODY_FILE=$tmp/body1k run "$c" -s "$tmp/post.lua" "$base/open/") ;;
            hmac_get) sign hmac; r=$(SIGNED=$tmp/signed run "$c" -s bench/signed.lua "$base/") ;;
            hmac_post_1k)
                sign hmac "$tmp/body1k"
                r=$(SIGNED=$tmp/signed BODY_FILE=$tmp/body1k run "$c" -s bench/signed.lua "$base/") ;;
            sigv4_get) sign sigv4; r=$(SIGNED=$tmp/signed run "$c" -s bench/signed.lua "$base/") ;;
            httpsig_get) sign httpsig; r=$(SIGNED=$tmp/signed run "$c" -s bench/signed.lua "$base/") ;;
        esac
        read -r v u <<<"$r"
        results[$c]+="$v "
        cpu[$c]+="$u "
        printf '  run %d %-13s %10s req/s %8s µs CPU/request\n' "$i" "$c" "$v" "$u"
    done
done
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
o=$(median <<<"${results[open]:-0}")
op=$(median <<<"${results[open_post_1k]:-0}")
echo
echo "## Signed routes: wrk -t$wrk_threads -c${CONNS:-32} -d$duration, servers on cores $server_cores, $runs interleaved runs, median req/s"
echo
echo "| case | req/s | share of /open alike | Portcullis CPU µs/request |"
echo "|---|---:|---:|---:|"
for c in "${cases[@]}"; do
    m=$(median <<<"${results[$c]}")
    # A POST is set against the unsigned POST of the same body, the rest against the GET.
    base_rate=$o
    [[ $c == *post* ]] && base_rate=$op
    printf '| %s | %s | %s | %s |\n' "$c" "$m" "$(python3 -c "print(f'{100 * $m / $base_rate:.1f} %' if $base_rate else '-')")" \
        "$(median <<<"${cpu[$c]}")"
done
