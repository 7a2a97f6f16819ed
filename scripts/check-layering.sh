#!/usr/bin/env bash
# Holds the crate layering of DESIGN.md: the pure protocol crate and the domain crate must not
# (even transitively) depend on runtime / HTTP / storage crates. Uses normal dependencies only
# (`-e normal`): dev- and build-dependencies may use anything.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

status=0

# check CRATE LABEL REGEX: fail if `cargo tree` of CRATE lists a package matching REGEX.
check() {
    local crate=$1 label=$2 regex=$3 tree hits
    echo "layering: $crate must not depend on: $label"
    # A failing `cargo tree` (unknown package, broken manifest) must fail the check, not pass it.
    if ! tree=$(cargo tree -p "$crate" -e normal --prefix none); then
        echo "layering: FAIL: cargo tree -p $crate failed" >&2
        status=1
        return
    fi
    hits=$(grep -E "$regex" <<<"$tree" | sed 's/ (\*)$//' | sort -u || true)
    if [[ -n $hits ]]; then
        echo "layering: FAIL: $crate depends on forbidden crate(s):" >&2
        printf '    %s\n' "${hits//$'\n'/$'\n    '}" >&2
        # Show the path that brings each one in, so the fix is obvious.
        while read -r name ver _; do
            echo "  why $name:" >&2
            cargo tree -p "$crate" -e normal -i "$name@${ver#v}" 2>/dev/null | sed 's/^/    /' | head -n 15 >&2 || true
        done <<<"$hits"
        status=1
    else
        echo "layering: ok ($crate)"
    fi
}

check portcullis-core "tokio, hyper, axum, sqlx, redis, tracing" \
    '^(tokio|hyper|hyper-util|hyper-rustls|axum|sqlx|redis|tracing) v'
check portcullis-domain "hyper, axum, sqlx, redis" \
    '^(hyper|hyper-util|hyper-rustls|axum|sqlx|redis) v'

if [[ $status -ne 0 ]]; then
    echo "layering: FAILED (see DESIGN.md, 'Layers')" >&2
else
    echo "layering: all rules hold"
fi
exit "$status"
