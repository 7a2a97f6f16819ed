#!/usr/bin/env bash
# The authorization server and the JWT route under load, on one core as scripts/bench-load.sh
# measures the API-key route:
#
#   scripts/bench-oauth.sh [--duration 10s] [--runs 3] [--two-cores] [BINARY]
#
# One nginx upstream (`bench/nginx-upstream.conf`) and Portcullis with `bench/oauth.toml`
# (`/open` public, `/jwt` policy jwt, audit on), both pinned to core 0; wrk -t1 -c32 on core 1.
# With --two-cores the servers may use cores 0 and 1 and wrk -t2 runs on both too (the
# machine has two: the figure includes wrk's own share).
# Cases, interleaved per run: `/open`; `/jwt` with one repeated token (the verified-token
# cache); `POST /oauth2/token` (client_credentials, client_secret_basic) signing with ES256
# (the tokens it issues are kept), then `/jwt` with each of those tokens once (every
# verification a cache miss), then the token endpoint with EdDSA and RS256 (a rotation with
# no lead time before each); `POST /oauth2/introspect` of one token. Medians of req/s.
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
        -h | --help) sed -n '2,17p' "$0"; exit 0 ;;
        *) bin=$1; shift ;;
    esac
done
die() { printf 'bench-oauth.sh: error: %s\n' "$*" >&2; exit 1; }
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
[[ -x $nginx_bin ]] || die "nginx not found (scripts/bench-load.sh installs nginx-light)"
command -v wrk >/dev/null || die "wrk not found (scripts/bench-load.sh installs it)"
[[ -x $bin ]] || die "$bin is not an executable (cargo build --release)"
[[ $(nproc --all) -ge 2 ]] || die "needs at least 2 cores (servers on core 0, wrk on core 1)"

server_cores=0 wrk_cores=1 wrk_threads=1
if [[ $two_cores == 1 ]]; then server_cores=0,1 wrk_cores=0,1 wrk_threads=2; fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-oauth.XXXXXX")
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
base=http://127.0.0.1:$port
sed -e "s|@UPSTREAM_PORT@|$up_port|g" bench/oauth.toml >"$tmp/portcullis.toml"
PORTCULLIS_LOG=warn taskset -c "$server_cores" "$bin" serve --config "$tmp/portcullis.toml" \
    --listen "127.0.0.1:$port" --data-dir "$tmp/data" >"$tmp/out" 2>"$tmp/err" &
pids+=($!)
for _ in $(seq 600); do
    grep -q 'portcullis listening on http://' "$tmp/out" 2>/dev/null && break
    sleep 0.1
done
cli() { "$bin" "$@" --server "$base" --data-dir "$tmp/data" --json; }
client=$(cli clients create --name bench --scopes bench)
id=$(echo "$client" | json client_id)
secret=$(echo "$client" | json client_secret)
export BASIC=$(printf '%s:%s' "$id" "$secret" | base64 -w0)
token=$(curl -s -u "$id:$secret" -d grant_type=client_credentials "$base/oauth2/token" | json access_token)
[[ $(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" "$base/jwt/") == 200 ]] ||
    die "the token does not open /jwt"

rate() { awk '/Requests\/sec/ {print $2}'; }
run() { # NAME, wrk args...
    local name=$1 out
    shift
    out=$(taskset -c "$wrk_cores" wrk "-t$wrk_threads" -c32 "-d$duration" "$@") || die "wrk failed for $name: $out"
    if grep -q 'Non-2xx' <<<"$out"; then die "$name: non-2xx answers: $out"; fi
    echo "$out" | rate
}
declare -A results
cases=(open jwt token_ES256 jwt_uncached token_EdDSA token_RS256 introspect)
export TOKEN=$token
for r in $(seq "$runs"); do
    for c in "${cases[@]}"; do
        case $c in
            open) v=$(run open "$base/open/") ;;
            jwt) v=$(run jwt -H "Authorization: Bearer $token" "$base/jwt/") ;;
            jwt_uncached) v=$(TOKENS=$tmp/tokens run "$c" -s bench/tokens.lua "$base/jwt/") ;;
            introspect) v=$(run "$c" -s bench/introspect.lua "$base/oauth2/introspect") ;;
            token_*)
                alg=${c#token_}
                cli signing-keys rotate --algorithm "$alg" --lead-time 0s >/dev/null
                out_file=
                if [[ $alg == ES256 ]]; then out_file=$tmp/tokens; : >"$out_file"; fi
                v=$(TOKENS_OUT=$out_file run "$c" -s bench/token.lua "$base/oauth2/token") ;;
        esac
        results[$c]+="$v "
        printf '  run %d %-12s %10s req/s\n' "$r" "$c" "$v"
    done
done
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo
echo "## OAuth and JWT: wrk -t$wrk_threads -c32 -d$duration, servers on cores $server_cores, $runs interleaved runs, median req/s"
echo
echo "| case | req/s |"
echo "|---|---:|"
for c in "${cases[@]}"; do
    printf '| %s | %s |\n' "$c" "$(median <<<"${results[$c]}")"
done
o=$(median <<<"${results[open]}")
j=$(median <<<"${results[jwt]}")
echo
u=$(median <<<"${results[jwt_uncached]}")
python3 -c "print(f'- jwt / open: {100 * $j / $o:.1f} % (target >= 80 %); uncached jwt / open: {100 * $u / $o:.1f} %')"
