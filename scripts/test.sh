#!/usr/bin/env bash
# The whole test suite: Rust unit/integration tests, then the interop suite (tests/interop/)
# that drives the binary (built with the `ci` profile: release optimisations, no fat LTO) with real clients (Python requests, curl).
#
# Works on a fresh Debian machine: installs what is missing (curl, Python venv support), keeps
# a Python venv in target/interop-venv (rebuilt only when tests/interop/requirements.txt
# changes). PostgreSQL / Redis backend tests run only when PORTCULLIS_TEST_POSTGRES /
# PORTCULLIS_TEST_REDIS are set.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD

say() { printf '\n==> %s\n' "$*"; }
die() { printf 'test.sh: error: %s\n' "$*" >&2; exit 2; }

# --- system tools: install only what is missing (one apt-get update at most) ----------------
need_pkgs=()
command -v curl >/dev/null 2>&1 || need_pkgs+=(curl ca-certificates)
if ! command -v python3 >/dev/null 2>&1; then
    need_pkgs+=(python3 python3-venv)
elif ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    need_pkgs+=(python3-venv)   # Debian splits venv/ensurepip out of python3
fi
if [[ ${#need_pkgs[@]} -gt 0 ]]; then
    say "installing missing system packages: ${need_pkgs[*]}"
    command -v apt-get >/dev/null 2>&1 || die "missing ${need_pkgs[*]} and no apt-get to install them"
    sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 || die "missing ${need_pkgs[*]}: run as root or install sudo"
        sudo=(sudo)
    fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need_pkgs[@]}"
fi
command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust (https://rustup.rs), rust-version 1.87 or newer"

# --- Python venv for the interop suite (reused while requirements.txt is unchanged) ---------
venv=$root/target/interop-venv
req=$root/tests/interop/requirements.txt
stamp=$venv/.requirements.sha256
want=$(sha256sum "$req" | cut -d' ' -f1)
if [[ -f $stamp && $(cat "$stamp") == "$want" ]] && "$venv/bin/python" -c 'import pytest, requests' >/dev/null 2>&1; then
    echo "interop venv: up to date ($venv)"
else
    say "creating interop venv in $venv"
    rm -rf "$venv"
    mkdir -p "$root/target"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req"
    echo "$want" >"$stamp"   # written last: an interrupted install is redone next time
fi

# --- backend tests: loud when skipped --------------------------------------------------------
skipped=()
for var in PORTCULLIS_TEST_POSTGRES PORTCULLIS_TEST_REDIS; do
    if [[ -n ${!var:-} ]]; then
        export "${var?}"
        echo "backend tests enabled: $var is set"
    else
        unset "$var"   # set-but-empty counts as unset, for the Rust tests too
        skipped+=("$var")
    fi
done
skip_banner() {
    local var
    for var in "${skipped[@]}"; do
        echo "!!! SKIPPED: $var is unset: the ${var#PORTCULLIS_TEST_} backend tests are NOT run" \
             "(set it, e.g. as .ci/run does, to run them) !!!"
    done
}
skip_banner

# --- Rust: build the binary, then every workspace test ---------------------------------------
say "cargo build --profile ci --bin portcullis"
cargo build --profile ci --bin portcullis   # no binary, nothing else to test: stop here on failure

rust=ok
if cargo nextest --version >/dev/null 2>&1; then
    runner="cargo nextest run --workspace --cargo-profile ci --no-fail-fast"
else
    runner="cargo test --workspace --profile ci --no-fail-fast"
fi
say "$runner"
$runner || rust=FAILED
# The client crate's reqwest helper is behind a feature the workspace run does not enable.
say "${runner/--workspace/-p portcullis-client --features reqwest}"
${runner/--workspace/-p portcullis-client --features reqwest} || rust=FAILED

# --- interop suite against the release binary ------------------------------------------------
interop=ok
say "pytest -q tests/interop"
PORTCULLIS_BIN=$root/target/ci/portcullis "$venv/bin/python" -m pytest -q tests/interop || interop=FAILED

# --- summary ---------------------------------------------------------------------------------
echo
skip_banner
result=PASS
[[ $rust == ok && $interop == ok ]] || result=FAIL
backends="backend env set: PORTCULLIS_TEST_POSTGRES PORTCULLIS_TEST_REDIS"
[[ ${#skipped[@]} -eq 0 ]] || backends="SKIPPED: ${skipped[*]}"
echo "test.sh: $result: rust tests $rust (${runner%% --*}), interop $interop, $backends"
[[ $result == PASS ]]
