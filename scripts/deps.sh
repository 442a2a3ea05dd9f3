# Sourced by the other scripts: installs what building and testing need on a fresh Debian or
# Ubuntu machine with the Rust toolchain, and sets the shared cargo target directory.

_kurral_sudo() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root (or sudo) to install: $*" >&2; return 1; fi
}

kurral_deps() {
  local missing=()
  # librocksdb-sys generates its bindings with bindgen, which loads libclang (libclang.so or
  # libclang-N.so; libclang-cpp.so, which other packages bring, is not it).
  compgen -G '/usr/lib/llvm-*/lib/libclang.so*' >/dev/null || compgen -G '/usr/lib/llvm-*/lib/libclang-[0-9]*.so*' >/dev/null \
    || compgen -G '/usr/lib/*/libclang.so*' >/dev/null || compgen -G '/usr/lib/*/libclang-[0-9]*.so*' >/dev/null \
    || missing+=(libclang-dev)
  command -v c++ >/dev/null || missing+=(g++)
  command -v make >/dev/null || missing+=(make)
  command -v python3 >/dev/null || missing+=(python3)
  if [ "${1:-}" = test ] && command -v python3 >/dev/null && ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    missing+=(python3-venv)
  fi
  if ((${#missing[@]})); then
    echo "installing: ${missing[*]}" >&2
    _kurral_sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive _kurral_sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# One target directory outside the clone, shared by every checkout on this machine, so that
# RocksDB's C++ build (about 17 minutes on 2 cores) happens once. Override with CARGO_TARGET_DIR.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kurral-proxy/target}"
mkdir -p "$CARGO_TARGET_DIR"
