# flannel-ext node image: the daemon, the shipped recipes and the CNI plugin that the
# DaemonSet's init container copies to the node (see `flannel-ext manifest`).
#   docker build -t flannel-ext:dev .
FROM python:3.11-slim

# iproute2 for shell recipes (`ip route …`), nftables for --ip-masq and --policy, kmod for
# the br_netfilter module that `manifest --policy` loads.
RUN apt-get update \
    && apt-get install -y --no-install-recommends iproute2 nftables kmod \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
# Dependencies first, so that code edits do not re-download them.
# (README.m[d]: the glob lets the build work before a README exists.)
COPY pyproject.toml README.m[d] ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml','rb'))['project']['dependencies']))" \
       > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt

COPY flannel_ext ./flannel_ext
COPY recipes ./recipes
COPY hooks ./hooks
# The node has no Python with flannel_ext, so the CNI plugin it runs is the POSIX sh port
# that `flannel-ext manifest --cni-plugin` prints; `sh -n` fails the build on a bad script.
RUN pip install --no-cache-dir --no-deps . \
    && mkdir -p /opt/bin /opt/flannel-ext \
    && cp -r recipes hooks /opt/flannel-ext/ \
    && flannel-ext manifest --cni-plugin > /opt/bin/flannel-ext-cni \
    && chmod 0755 /opt/bin/flannel-ext-cni \
    && sh -n /opt/bin/flannel-ext-cni

WORKDIR /
CMD ["flannel-ext", "--help"]
