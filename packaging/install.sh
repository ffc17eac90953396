#!/usr/bin/env bash
# Install circuit for the whole machine, or remove it:  packaging/install.sh install|uninstall [PREFIX]
#   PREFIX/lib/circuit                      a venv holding the workspace's wheels (uv build)
#   PREFIX/bin/circuit, circuit-net, ...    links into it
#   PREFIX/share/man/man1/*.1               man pages, from the tools' usage text
#   PREFIX/share/bash-completion/completions/circuit*, PREFIX/share/zsh/site-functions/_circuit
#   PREFIX/lib/systemd/system/circuit-{restore,cluster-agent,forkserver,dns,lb-agent}.service; where
#   systemd runs, circuit-forkserver.service is enabled and started (CIRCUIT_FORKSERVER_SERVICE=off:
#   not); the others are not enabled
# Nothing refers back to the clone: it may be deleted afterwards. CIRCUIT_PYTHON picks the
# interpreter (default /usr/bin/python3 when it is 3.11 or newer).
set -euo pipefail

action=${1:?usage: packaging/install.sh install|uninstall [PREFIX]}
prefix=$(realpath -m "${2:-/usr/local}")
lib=$prefix/lib/circuit
manifest=$lib/installed-files
made_dirs=$lib/installed-dirs   # the directories install made, deepest last
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tools=(circuit circuit-net circuit-qos circuit-lb circuit-hook circuit-cluster circuit-dns
       circuit-metrics)
units=(circuit-restore.service circuit-cluster-agent.service circuit-forkserver.service
       circuit-dns.service circuit-lb-agent.service)
served=circuit-forkserver.service

systemd_runs() {
    [ -d /run/systemd/system ]   # what sd_booted(3) checks
}

uninstall() {
    if [ ! -f "$manifest" ]; then
        echo "circuit: nothing installed under $prefix" >&2
        return 0
    fi
    if systemd_runs; then   # install enabled it: stop it before its files go
        systemctl disable --now --quiet "$served" 2>/dev/null || true
    fi
    while read -r path; do rm -f "$prefix/$path"; done < "$manifest"
    local dirs=()
    [ -f "$made_dirs" ] && mapfile -t dirs < "$made_dirs"
    rm -rf "$lib"
    for ((i = ${#dirs[@]} - 1; i >= 0; i--)); do   # only those install made, once empty
        rmdir "$prefix/${dirs[i]}" 2>/dev/null || true
    done
    if systemd_runs; then
        systemctl daemon-reload
    fi
    echo "circuit removed from $prefix"
}

python() {
    if [ -n "${CIRCUIT_PYTHON:-}" ]; then
        echo "$CIRCUIT_PYTHON"
    elif /usr/bin/python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        echo /usr/bin/python3
    else
        echo python3
    fi
}

new_dirs=()
# mkdir -p, remembering (relative to PREFIX) each directory that did not exist
ensure_dir() {
    local dir=$1 missing=()
    while [ ! -d "$dir" ] && [ "$dir" != "$prefix" ]; do
        missing=("$dir" "${missing[@]}")
        dir=$(dirname "$dir")
    done
    mkdir -p "$1"
    for dir in "${missing[@]}"; do new_dirs+=("${dir#"$prefix"/}"); done
}

install() {
    local files=()
    [ -f "$made_dirs" ] && mapfile -t new_dirs < "$made_dirs"   # an upgrade keeps the list
    ensure_dir "$(dirname "$lib")"   # the venv itself goes with rm -rf
    dist=$(mktemp -d)
    trap 'rm -rf "$dist"' EXIT
    # each package's wheel on its own; the third-party versions the lock file pins
    (cd "$repo" && uv build --quiet --all-packages --wheel -o "$dist" &&
        uv export --quiet --frozen --no-dev --no-emit-workspace --no-hashes -o "$dist/requirements.txt")
    ls "$dist"/*.whl >> "$dist/requirements.txt"
    [ -x "$lib/bin/python" ] || uv venv --quiet --python "$(python)" "$lib"
    # sync: an upgrade replaces every package and drops what the new version no longer needs
    uv pip sync --quiet --reinstall --compile-bytecode --python "$lib/bin/python" "$dist/requirements.txt"

    ensure_dir "$prefix/bin"
    for tool in "${tools[@]}"; do
        ln -sfn "$lib/bin/$tool" "$prefix/bin/$tool"
        files+=("bin/$tool")
    done
    local circuit=$lib/bin/circuit
    ensure_dir "$prefix/share/man/man1"
    for page in $("$circuit" manpages "$prefix/share/man/man1"); do
        files+=("${page#"$prefix"/}")
    done
    local bash_dir=$prefix/share/bash-completion/completions zsh_dir=$prefix/share/zsh/site-functions
    ensure_dir "$bash_dir"
    ensure_dir "$zsh_dir"
    "$circuit" completion bash > "$bash_dir/circuit"
    for tool in "${tools[@]:1}"; do   # bash-completion loads a command's file by its name
        ln -sfn circuit "$bash_dir/$tool"
    done
    "$circuit" completion zsh > "$zsh_dir/_circuit"
    files+=("${tools[@]/#/share/bash-completion/completions/}" share/zsh/site-functions/_circuit)
    local unit_dir=$prefix/lib/systemd/system
    ensure_dir "$unit_dir"
    for unit in "${units[@]}"; do
        sed "s|@BINDIR@|$prefix/bin|g" "$repo/packaging/$unit" > "$unit_dir/$unit"
        files+=("lib/systemd/system/$unit")
    done
    printf '%s\n' "${files[@]}" > "$manifest"
    printf '%s\n' "${new_dirs[@]}" | awk 'NF && !seen[$0]++' > "$made_dirs"
    # the fork server only speeds commands up, and steps aside for what it cannot run: enabled
    # (by path: linked in for any PREFIX); the other units are the admin's call
    if systemd_runs && [ "${CIRCUIT_FORKSERVER_SERVICE:-on}" != off ]; then
        systemctl daemon-reload
        systemctl enable --now --quiet "$unit_dir/$served"
    fi
    echo "circuit $("$circuit" version | head -n 1 | cut -d' ' -f2) installed in $prefix"
}

case $action in
    install) install ;;
    uninstall) uninstall ;;
    *) echo "circuit: unknown action '$action'; use install or uninstall" >&2; exit 2 ;;
esac
