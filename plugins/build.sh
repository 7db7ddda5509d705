#!/usr/bin/env bash
# Builds every plugin in this workspace as a WebAssembly component
# (wasm32-wasip2, release profile) and checks each artifact:
#   - it is a component, not a core module (header layer bytes 01 00);
#   - with wasm-tools on PATH: it exports `init` plus its world's function,
#     and imports no WASI filesystem or sockets, which the broker never
#     grants.
# Artifacts: plugins/target/wasm32-wasip2/release/<crate_name>.wasm
#
# With --bundle it then copies the bundled plugins into bus/server/bundled/,
# which the broker embeds; commit them. The broker's test
# `bundled_plugins_match_their_sources` fails while they are stale.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
target=wasm32-wasip2

bundle=false
case "${1:-}" in
    --bundle) bundle=true ;;
    "") ;;
    *)
        echo "usage: plugins/build.sh [--bundle]" >&2
        exit 2
        ;;
esac

fail() {
    echo "build.sh: $*" >&2
    exit 1
}

# From the checkout, so rustup picks the toolchain rust-toolchain.toml pins.
cd "$repo"

# Checked in the sysroot rather than with rustup, which CI may not have.
if [[ ! -d "$(rustc --print sysroot)/lib/rustlib/$target" ]]; then
    fail "the Rust target $target is not installed; run: rustup target add $target"
fi

# The world each artifact must export, by crate name.
declare -A worlds=(
    [json_filter]=filter
    [redact]=transform
    [downsample]=filter
    [dedupe]=filter
    [csv_to_json]=transform
    [spin]=filter
    [memory_hog]=filter
    [trap_on]=filter
    [tag_version]=transform
    [tag_version_two]=transform
    [reject_on]=filter
    [init_fails]=filter
    [state_hog]=filter
    [amplify]=transform
    [fat_output]=transform
    [log_flood]=filter
    [state_probe]=transform
)

# An explicit target dir, so a CARGO_TARGET_DIR in the caller's environment
# cannot move the artifacts away from where the broker looks for them.
#
# The same sources must give the same bytes on every machine, so the
# embedded copies can be checked against them. Two things would tie the
# bytes to this checkout's path: panic locations name source files, and
# cargo hashes a path dependency outside the workspace (sdk/plugin) by its
# absolute path into the crate's metadata, which changes the generated
# code. So cargo sees the checkout through a fixed path, a symlink held
# under a lock while it builds (checkouts on one machine take turns), and
# source paths are remapped (std's already are, to /rustc/<commit>; the
# cargo home's to /cargo). Flags of the caller's would change the bytes
# too, and so would a workspace wrapper (CI's test builds run clippy-driver
# as one, which compiles without MIR optimisations).
command -v flock >/dev/null 2>&1 || fail "flock (util-linux) is needed"
fixed=/tmp/edgebus-plugins-build
mkdir -p "$fixed" 2>/dev/null || fail "cannot create $fixed"
exec 9>"$fixed/lock" || fail "cannot open $fixed/lock (another user's?)"
flock 9
ln -sfn "$repo" "$fixed/src" || fail "cannot point $fixed/src at $repo"
cd "$fixed/src"
unset RUSTFLAGS CARGO_ENCODED_RUSTFLAGS CARGO_BUILD_RUSTFLAGS RUSTC_WORKSPACE_WRAPPER
export CARGO_TARGET_WASM32_WASIP2_RUSTFLAGS="--remap-path-prefix=$fixed/src=/edgebus --remap-path-prefix=${CARGO_HOME:-$HOME/.cargo}=/cargo"
start_s=$(date +%s)
cargo build --manifest-path "$fixed/src/plugins/Cargo.toml" --target-dir "$here/target" \
    --release --target "$target" --workspace
build_s=$(($(date +%s) - start_s))

out="$here/target/$target/release"
component_header=0061736d0d000100
have_wasm_tools=false
if command -v wasm-tools >/dev/null 2>&1; then
    have_wasm_tools=true
fi

for name in $(printf '%s\n' "${!worlds[@]}" | sort); do
    wasm="$out/$name.wasm"
    world="${worlds[$name]}"
    [[ -f "$wasm" ]] || fail "missing artifact $wasm"
    header="$(head -c 8 "$wasm" | od -An -tx1 | tr -d ' \n')"
    [[ "$header" == "$component_header" ]] || fail "$wasm is not a component (header $header)"
    if $have_wasm_tools; then
        wit="$(wasm-tools component wit "$wasm")"
        grep -q "export init: func" <<<"$wit" || fail "$wasm does not export init"
        grep -q "export $world: func" <<<"$wit" || fail "$wasm does not export $world"
        if grep -Eq "import wasi:(filesystem|sockets)/" <<<"$wit"; then
            fail "$wasm imports WASI filesystem or sockets, which the broker does not grant"
        fi
    fi
    printf '%-16s %-9s %8d bytes\n' "$name.wasm" "$world" "$(stat -c %s "$wasm")"
done

if ! $have_wasm_tools; then
    echo "wasm-tools not on PATH: checked component headers only, not exports and imports"
fi
echo "built ${#worlds[@]} components in ${build_s}s into $out"

# The plugins the broker embeds (bus/server/src/bundled.rs names the same).
if $bundle; then
    dest="$repo/bus/server/bundled"
    mkdir -p "$dest"
    for name in csv_to_json dedupe downsample json_filter redact; do
        cp "$out/$name.wasm" "$dest/$name.wasm"
    done
    echo "copied the bundled plugins into $dest; commit them"
fi
