# circuit: container network management for runc. `just --list` shows the recipes.

set shell := ["bash", "-euo", "pipefail", "-c"]
export UV_PYTHON_DOWNLOADS := "never"

debs := "containernetworking-plugins iptables nftables runc busybox-static iperf3 iproute2 util-linux procps qemu-system-x86 linux-image-amd64 ipvsadm podman man-db etcd-server etcd-client zsh dnsmasq-base dnsperf tmux keepalived"

default:
    @just --list

# Install Debian packages (apt-get) and the Python workspace (uv) into .venv
setup:
    #!/usr/bin/env bash
    set -euo pipefail
    missing=$(for p in {{debs}}; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || echo "$p"; done)
    if [ -n "$missing" ]; then
        echo "installing: $missing"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
    fi
    # every workspace package reinstalled: an editable install's entry points (extensions,
    # state backends, doctor checks) are written at install time, so a venv made before a
    # package declared one would not see it
    members=$(sed -n 's/^name = "\(.*\)"/\1/p' packages/*/pyproject.toml)
    uv sync --quiet --compile-bytecode --reinstall-package circuit \
        $(printf -- '--reinstall-package %s ' $members)
    # the workspace is installed editable: compile its own modules too, for environments
    # that set PYTHONDONTWRITEBYTECODE (every start would compile them again)
    .venv/bin/python -m compileall -q packages/*/src

# Install circuit for the whole machine (wheels in a venv under PREFIX/lib/circuit, tools in PREFIX/bin, man pages, completions, systemd units; where systemd runs the fork server's is enabled: CIRCUIT_FORKSERVER_SERVICE=off to keep it off)
install PREFIX="/usr/local":
    packaging/install.sh install "{{PREFIX}}"

# Remove what `just install PREFIX` installed
uninstall PREFIX="/usr/local":
    packaging/install.sh uninstall "{{PREFIX}}"

# Show the main job: a bridge network, two containers, connect, ping, list
demo: setup
    scripts/demo.sh

# All tiers: unit, integration, kernel
test: setup
    just test-unit
    just test-integration
    just test-integration-served
    just test-kernel

# Unit tests: no root, no kernel objects
test-unit:
    uv run --no-sync pytest -m unit tests/unit

# Integration tests: root, Debian's CNI plugins and runc, in throwaway network namespaces
test-integration:
    uv run --no-sync pytest -m integration tests/integration

# The integration tests again, every circuit command handed to one fork server
test-integration-served:
    CIRCUIT_TEST_FORKSERVER=1 uv run --no-sync pytest -m integration tests/integration

# Kernel tests: IPVS, netem, ipvlan (Debian's stock kernel in a VM where the host lacks them)
test-kernel *ARGS:
    scripts/kernel-vm python -m pytest -m kernel tests/kernel -p no:cacheprovider {{ARGS}}

# A shell in the kernel tier's VM, for debugging (type `exit` to leave)
vm-shell:
    PATH="$PWD/.venv/bin:$PATH" vng --run "$(ls -v /boot/vmlinuz-* | tail -n 1)" --disable-kvm --cpus 2 --memory 4G

# ruff over the whole workspace
lint:
    uv run --no-sync ruff check .

# Benchmarks against the raw anchors, ratios in one run (see bench/README.md)
bench: setup
    -.venv/bin/python bench/hook.py
    -.venv/bin/python bench/parallel.py
    -.venv/bin/python bench/connect.py
    -.venv/bin/python bench/list.py
    -.venv/bin/python bench/qos.py
    -scripts/kernel-vm python bench/lb.py
    -scripts/kernel-vm python bench/health_ipvs.py
    -.venv/bin/python bench/lb_nft.py
    -.venv/bin/python bench/cluster.py
    -.venv/bin/python bench/dns.py
    -.venv/bin/python bench/metrics.py
