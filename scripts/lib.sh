# Shared helpers for scripts/run, scripts/test and scripts/bench. Source it; don't run it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="$HOME/.cargo/bin:/usr/local/bin:$PATH"

step() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

need_root() {
  [ "$(id -u)" = 0 ] || die "run as root: sandboxes need namespaces, cgroups and mounts (try: sudo $0)"
}

apt_updated=
apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  step "apt-get install ${missing[*]}"
  if [ -z "$apt_updated" ]; then DEBIAN_FRONTEND=noninteractive apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Rust toolchain: use the one present, else install rustup's stable toolchain.
ensure_rust() {
  if ! command -v cargo >/dev/null; then
    apt_install curl ca-certificates build-essential
    step "installing Rust (rustup, stable)"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
  command -v cc >/dev/null || apt_install build-essential
}

# What run-ts / run-js / run-python need when no guest image is configured: the sandbox runtime
# runs them from the host's root filesystem (read-only).
# schemathesis (API fuzzing, crates/rds-cli/tests/api_fuzz.rs) from PyPI, pinned by its
# requirements file, in its own venv over Debian's python3; reinstalled when the pins change.
SCHEMATHESIS_VENV=/var/cache/rds-schemathesis
ensure_schemathesis() {
  local pins="$ROOT/crates/rds-cli/tests/api_fuzz/requirements.txt" stamp="$SCHEMATHESIS_VENV/pins.sha256"
  local want; want="$(sha256sum < "$pins")"
  [ -x "$SCHEMATHESIS_VENV/bin/schemathesis" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && return 0
  apt_install python3-venv
  step "installing schemathesis into $SCHEMATHESIS_VENV"
  rm -rf "$SCHEMATHESIS_VENV"
  /usr/bin/python3 -m venv "$SCHEMATHESIS_VENV"
  "$SCHEMATHESIS_VENV/bin/pip" install -q --disable-pip-version-check -r "$pins"
  echo "$want" > "$stamp"
}

ensure_interpreters() {
  # By command, not by package: a host may already have them from elsewhere (NodeSource's
  # nodejs bundles npm, and Debian's npm package then conflicts with it).
  command -v python3 >/dev/null || apt_install python3
  command -v node >/dev/null || apt_install nodejs
  command -v npm >/dev/null || apt_install npm
  apt_install ca-certificates
  if ! command -v deno >/dev/null || ! deno --version >/dev/null 2>&1; then
    step "installing Deno from its npm package"
    npm install -g --no-fund --no-audit --allow-scripts=deno deno@2 >/dev/null 2>&1 \
      || npm install -g --no-fund --no-audit deno@2 >/dev/null
    local bin
    bin="$(npm root -g)/deno/deno"
    [ -x "$bin" ] && ln -sf "$bin" /usr/local/bin/deno
    deno --version >/dev/null || die "deno did not install"
  fi
}

# The unused-dependency check of scripts/lint (crates.io).
ensure_cargo_machete() {
  command -v cargo-machete >/dev/null && return 0
  step "installing cargo-machete"
  cargo install --locked --version 0.9.2 cargo-machete
}

# The firecracker runtime's binaries: Firecracker's official static release (with its seccomp
# filters), installed to /usr/local/bin on hosts whose KVM boots ordinary guests. The archive is
# checked against the SHA-256 published beside it in the release. Elsewhere (no such KVM) nothing
# is installed: the runtime cannot run VMs there, and its tests use FIRECRACKER_BIN/JAILER_BIN.
FIRECRACKER_VERSION=v1.16.1
ensure_firecracker() {
  command -v firecracker >/dev/null && command -v jailer >/dev/null && return 0
  [ -e /dev/kvm ] && { [ -d /sys/module/kvm_intel ] || [ -d /sys/module/kvm_amd ]; } || return 0
  [ "$(uname -m)" = x86_64 ] || { step "no Firecracker release for $(uname -m) installed"; return 0; }
  apt_install curl ca-certificates
  step "installing Firecracker $FIRECRACKER_VERSION (official release)"
  local base="https://github.com/firecracker-microvm/firecracker/releases/download/$FIRECRACKER_VERSION"
  local name="firecracker-$FIRECRACKER_VERSION-x86_64.tgz" dir
  dir="$(mktemp -d)"
  curl -fsSL --retry 3 -o "$dir/$name" "$base/$name"
  curl -fsSL --retry 3 -o "$dir/$name.sha256.txt" "$base/$name.sha256.txt"
  (cd "$dir" && sha256sum -c "$name.sha256.txt" >/dev/null) || die "$name does not match its published SHA-256"
  tar -xzf "$dir/$name" -C "$dir"
  install -m 0755 "$dir/release-$FIRECRACKER_VERSION-x86_64/firecracker-$FIRECRACKER_VERSION-x86_64" /usr/local/bin/firecracker
  install -m 0755 "$dir/release-$FIRECRACKER_VERSION-x86_64/jailer-$FIRECRACKER_VERSION-x86_64" /usr/local/bin/jailer
  rm -rf "$dir"
}
