#!/usr/bin/env bash
# Builds overlayd-cni as a static executable and prints its path. The plugin runs on the host
# with the host's libc, not the image's, so it must not depend on one: a glibc-2.34 binary
# fails on kind v0.20 nodes and on Ubuntu 20.04 / RHEL 8 hosts. Flannel's Go plugins are
# static for the same reason. glibc's crt-static is used (no musl toolchain needed); the
# --target flag keeps RUSTFLAGS off build scripts and proc macros, which must stay dynamic.
# deploy/Dockerfile and the tests (overlayd/tests/common cni_plugin, static_cni) both use it.
#
#   deploy/build-cni-static.sh [PROFILE]     PROFILE: release (default) or dev
set -euo pipefail
PROFILE=${1:-release}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=$(rustc -vV | sed -n 's/^host: //p')
case "$TARGET" in
  *-linux-gnu) ;;
  *) echo "build-cni-static: host $TARGET is not a linux-gnu target; build overlayd-cni for *-linux-musl instead" >&2; exit 1 ;;
esac
cd "$ROOT"
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
  cargo build --locked -q --profile "$PROFILE" -p cni-shim --bin overlayd-cni --target "$TARGET" >&2
dir=$PROFILE
[ "$PROFILE" = dev ] && dir=debug
echo "${CARGO_TARGET_DIR:-$ROOT/target}/$TARGET/$dir/overlayd-cni"
